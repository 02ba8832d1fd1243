"""Retention: finished requests and their items are deleted after REQUEST_RETENTION_DAYS."""

import datetime as dt
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from ..models import AccountCreationRequest, AccountCreationTask

Request = AccountCreationRequest


@dataclass
class PurgeResult:
    requests: int = 0
    items: int = 0

    def as_counts(self) -> dict:
        return dict(self.__dict__)


def purgeable_requests(*, older_than_days: int):
    cutoff = timezone.now() - dt.timedelta(days=older_than_days)
    return Request.objects.filter(status__in=Request.FINAL_STATUSES, completed_at__lt=cutoff)


def purge_finished_requests(*, older_than_days: int, batch_size: int = 20, dry_run: bool = False) -> PurgeResult:
    """Delete finished requests older than the cutoff, a few at a time; never an unfinished one.

    Persons, accounts and tasks stay: they describe accounts that exist. Tasks only lose their link to the
    deleted item. Batches are small because every request brings up to MAX_USERS_PER_REQUEST items.
    """
    if older_than_days < 0:
        raise ValueError("older_than_days must not be negative")
    result = PurgeResult()
    queryset = purgeable_requests(older_than_days=older_than_days)
    if dry_run:
        result.requests = queryset.count()
        result.items = sum(queryset.values_list("total_users", flat=True))
        return result
    while True:
        with transaction.atomic():
            batch = list(queryset.order_by("id").values_list("id", "total_users")[:batch_size])
            if not batch:
                return result
            ids = [request_id for request_id, _ in batch]
            AccountCreationTask.objects.filter(request_item__request_id__in=ids).update(request_item=None)
            _, deleted = Request.objects.filter(id__in=ids, status__in=Request.FINAL_STATUSES).delete()
        result.requests += deleted.get(Request._meta.label, 0)
        result.items += deleted.get("syncservice.AccountCreationRequestItem", 0)
