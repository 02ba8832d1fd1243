"""The stages' batches of items: processing requests' items in request-priority order, locked as read."""

from django.db import connection
from django.db.models import QuerySet

from ..db.locking import skip_locked
from ..models import AccountCreationRequest, AccountCreationRequestItem

CREATE = AccountCreationRequest.RequestType.CREATE


def items_by_request_priority(status: str, request_type: str = CREATE) -> QuerySet:
    """Items with `status` of processing requests, highest-priority request first (the portable form).

    On PostgreSQL the stages lock their batches with `lock_items_by_request_priority` instead, which walks
    the requests one index probe at a time rather than joining and sorting every matching item.
    """
    return AccountCreationRequestItem.objects.filter(
        status=status, request__status=AccountCreationRequest.Status.PROCESSING, request__request_type=request_type,
    ).order_by("-request__priority", "request__created_at", "request_id", "id")


def lock_items_by_request_priority(status: str, limit: int, *, fields=("id",), request_type: str = CREATE) -> list:
    """Lock up to `limit` items with `status` of processing requests of `request_type` (a creation, or a
    deactivation), skipping items another copy holds;
    highest-priority request first, then created_at, request id, item id. One statement on PostgreSQL.

    The processing requests are walked in priority order (the `request_claim` index) and each one's items
    are taken in id order from `request_item_stage` (status, request, id), locked as they are read: the
    scan stops once `limit` rows came back, so a batch costs the same whatever the backlog. A request's
    probe is an index lookup that cannot turn into a scan of other requests' items, whatever the
    statistics say about the (always stale) item statuses. `fields` are loaded; the others are deferred.
    """
    if connection.vendor != "postgresql":
        return list(skip_locked(items_by_request_priority(status, request_type).only(*fields))[:limit])
    Request, Item = AccountCreationRequest, AccountCreationRequestItem
    columns = ", ".join(f'"{Item._meta.get_field(name).column}"' for name in dict.fromkeys(("id", *fields)))
    # The ordered subquery is not flattened (it has an ORDER BY) and the LATERAL side depends on it, so the
    # join is a nested loop that keeps the requests' order; the outer LIMIT stops pulling (and locking)
    # items as soon as the batch is full.
    sql = (
        f"SELECT i.* FROM (SELECT id FROM {Request._meta.db_table} WHERE status = %s AND request_type = %s "
        f"ORDER BY priority DESC, created_at, id) r "
        f"CROSS JOIN LATERAL (SELECT {columns} FROM {Item._meta.db_table} "
        f"WHERE request_id = r.id AND status = %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) i LIMIT %s"
    )
    return list(Item.objects.raw(sql, [Request.Status.PROCESSING, request_type, status, limit, limit]))
