"""Row claims and advisory locks that degrade gracefully on SQLite (one worker at a time there)."""

import contextlib
import logging
import time
import zlib

from django.db import OperationalError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.db.models import QuerySet

from ..models import AccountCreationRequest, AccountCreationRequestItem

logger = logging.getLogger(__name__)


def skip_locked(queryset: QuerySet) -> QuerySet:
    """Lock the selected rows of this model, skipping rows another worker holds (PostgreSQL)."""
    if connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True, of=("self",))
    return queryset


def require_transaction(what: str) -> None:
    """For code that locks rows in raw SQL, the check Django's select_for_update makes: on a database with
    row locks, refuse to run in autocommit, where the locks would be released at once and the caller's
    reads and writes would not be protected."""
    if connection.features.has_select_for_update and connection.get_autocommit():
        raise TransactionManagementError(f"{what} locks rows and must run inside a transaction")


def wait_locked(queryset: QuerySet) -> QuerySet:
    """Lock the selected rows of this model, waiting for other holders (PostgreSQL)."""
    if connection.features.has_select_for_update:
        return queryset.select_for_update(of=("self",))
    return queryset


@contextlib.contextmanager
def advisory_lock(name: str):
    """Yield True if this process holds the named lock (PostgreSQL session advisory lock), else False."""
    if connection.vendor != "postgresql":
        yield True
        return
    key = zlib.crc32(name.encode("utf-8"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def atomic_with_retry(func, *, attempts: int = 5, retry_on=(OperationalError,)):
    """Run func() in a transaction, retrying on deadlocks, serialization failures and lost races."""
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic():
                return func()
        except retry_on as exc:
            if attempt == attempts or not _retryable(exc):
                raise
            logger.info("retrying a transaction after %s (attempt %d)", type(exc).__name__, attempt)
            time.sleep(0.01 * attempt)


def _retryable(exc: Exception) -> bool:
    cause = getattr(exc, "__cause__", None)
    pgcode = getattr(cause, "pgcode", None)
    if pgcode is not None:
        # 40P01 deadlock_detected, 40001 serialization_failure, 23505 unique_violation (a lost race).
        return pgcode in {"40P01", "40001", "23505"}
    return "locked" in str(exc) or "UNIQUE" in str(exc)


def current_lease_tokens(model, ids, *, status: str) -> dict:
    """Lock the claimed rows still in `status` and return their lease tokens by id: a result is written only
    when its claim's token is still the row's (a worker whose lease expired cannot overwrite a newer claim)."""
    return dict(model.objects.select_for_update().filter(id__in=ids, status=status).order_by("id")
                .values_list("id", "lease_token"))


def items_by_request_priority(status: str) -> QuerySet:
    """Items with `status` of processing requests, highest-priority request first (the portable form).

    On PostgreSQL the stages lock their batches with `lock_items_by_request_priority` instead, which walks
    the requests one index probe at a time rather than joining and sorting every matching item.
    """
    return AccountCreationRequestItem.objects.filter(
        status=status, request__status=AccountCreationRequest.Status.PROCESSING,
    ).order_by("-request__priority", "request__created_at", "request_id", "id")


def lock_items_by_request_priority(status: str, limit: int, *, fields=("id",)) -> list:
    """Lock up to `limit` items with `status` of processing requests, skipping items another copy holds;
    highest-priority request first, then created_at, request id, item id. One statement on PostgreSQL.

    The processing requests are walked in priority order (the `request_claim` index) and each one's items
    are taken in id order from `request_item_stage` (status, request, id), locked as they are read: the
    scan stops once `limit` rows came back, so a batch costs the same whatever the backlog. A request's
    probe is an index lookup that cannot turn into a scan of other requests' items, whatever the
    statistics say about the (always stale) item statuses. `fields` are loaded; the others are deferred.
    """
    if connection.vendor != "postgresql":
        return list(skip_locked(items_by_request_priority(status).only(*fields))[:limit])
    Request, Item = AccountCreationRequest, AccountCreationRequestItem
    columns = ", ".join(f'"{Item._meta.get_field(name).column}"' for name in dict.fromkeys(("id", *fields)))
    # The ordered subquery is not flattened (it has an ORDER BY) and the LATERAL side depends on it, so the
    # join is a nested loop that keeps the requests' order; the outer LIMIT stops pulling (and locking)
    # items as soon as the batch is full.
    sql = (
        f"SELECT i.* FROM (SELECT id FROM {Request._meta.db_table} WHERE status = %s "
        f"ORDER BY priority DESC, created_at, id) r "
        f"CROSS JOIN LATERAL (SELECT {columns} FROM {Item._meta.db_table} "
        f"WHERE request_id = r.id AND status = %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) i LIMIT %s"
    )
    return list(Item.objects.raw(sql, [Request.Status.PROCESSING, status, limit, limit]))
