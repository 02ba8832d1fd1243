"""Status roll-up: accounts decide items, items decide requests.

An item is final once every account its request asked for is final: `completed` when all were created,
`failed` when any failed. A request is final once every item is: `completed`, `failed` or `partial_failed`.
Rows are locked before they are read (items, then requests, each in id order), so two workers finishing
the same person's tasks at once cannot both miss the other's result.
"""

from collections import defaultdict

from django.db.models import Count, Q
from django.utils import timezone

from ..models import Account, AccountCreationRequest, AccountCreationRequestItem
from .bulk import bulk_update_rows
from .locking import wait_locked
from .notifications import notifications_enqueue

Item = AccountCreationRequestItem
Request = AccountCreationRequest
SYSTEM_LABELS = {"idaas": "IDaaS", "welink": "WeLink", "email": "Email"}


def rollup_items_for_persons(person_ids) -> int:
    """Finalize task_created items of these persons whose accounts are all final; return how many."""
    person_ids = set(person_ids)
    if not person_ids:
        return 0
    items = list(wait_locked(
        Item.objects.filter(hr_person_id__in=person_ids, status=Item.Status.TASK_CREATED)
        .select_related("request").order_by("id")
    ))
    if not items:
        return 0
    accounts = {
        (a.person_id, a.system): a
        for a in Account.objects.filter(person_id__in={i.hr_person_id for i in items})
    }
    now = timezone.now()
    finished = []
    for item in items:
        wanted = [accounts.get((item.hr_person_id, system)) for system in item.request.system_list]
        statuses = [a.status if a else Account.Status.NOT_CREATED for a in wanted]
        if item.request.cancel_requested_at is not None:
            # Cancelling: the item ends once nothing of it is in flight; what was not created is cancelled.
            if Account.Status.CREATING in statuses:
                continue
            unfinished = Account.Status.NOT_CREATED in statuses
        elif any(status not in (Account.Status.CREATED, Account.Status.FAILED) for status in statuses):
            continue
        else:
            unfinished = False
        failures = [a for a in wanted if a and a.status == Account.Status.FAILED]
        if unfinished:
            item.status = Item.Status.CANCELLED
        else:
            item.status = Item.Status.FAILED if failures else Item.Status.COMPLETED
        item.error_message = "; ".join(f"{SYSTEM_LABELS.get(a.system, a.system)}: {a.error_message}"
                                       for a in failures)
        if unfinished:
            note = "cancelled before every account was created"
            item.error_message = f"{item.error_message}; {note}" if item.error_message else note
        item.updated_at = now
        finished.append(item)
    if finished:
        bulk_update_rows(finished, ["status", "error_message", "updated_at"])
        rollup_requests({item.request_id for item in finished})
    return len(finished)


def rollup_requests(request_ids) -> int:
    """Recount items of these requests; finalize those whose items are all final. Return how many ended."""
    request_ids = sorted(set(request_ids))
    if not request_ids:
        return 0
    requests = list(wait_locked(Request.objects.filter(id__in=request_ids).order_by("id")))
    counts = {
        row["request_id"]: row
        for row in Item.objects.filter(request_id__in=request_ids).values("request_id").annotate(
            completed=Count("id", filter=Q(status=Item.Status.COMPLETED)),
            failed=Count("id", filter=Q(status=Item.Status.FAILED)),
            cancelled=Count("id", filter=Q(status=Item.Status.CANCELLED)),
        )
    }
    now = timezone.now()
    changed, ended = [], []
    for request in requests:
        row = counts.get(request.id, {"completed": 0, "failed": 0, "cancelled": 0})
        processed = row["completed"] + row["failed"] + row["cancelled"]
        if request.is_final:
            continue
        request.processed_users = processed
        request.updated_at = now
        if processed == request.total_users and request.status == Request.Status.PROCESSING:
            if row["cancelled"] or request.cancel_requested_at is not None:
                request.status = Request.Status.CANCELLED
            elif row["failed"] == 0:
                request.status = Request.Status.COMPLETED
            elif row["completed"] == 0:
                request.status = Request.Status.FAILED
            else:
                request.status = Request.Status.PARTIAL_FAILED
            request.completed_at = now
            ended.append(request)
        changed.append(request)
    summaries = error_summaries([r.id for r in ended])
    for request in ended:
        request.error_summary = summaries.get(request.id)
    if changed:
        bulk_update_rows(changed, ["processed_users", "status", "completed_at", "error_summary",
                                              "updated_at"])
    if ended:
        notifications_enqueue(requests=ended)
    return len(ended)


def error_summaries(request_ids: list[int]) -> dict[int, dict]:
    """Failures grouped by system and reason, with the employee numbers affected, per request."""
    if not request_ids:
        return {}
    failed_items = list(
        Item.objects.filter(request_id__in=request_ids, status=Item.Status.FAILED)
        .values_list("request_id", "employee_number", "hr_person_id")
    )
    if not failed_items:
        return {}
    systems = dict(Request.objects.filter(id__in=request_ids).values_list("id", "system_list"))
    accounts = defaultdict(list)
    for account in Account.objects.filter(person_id__in={p for _, _, p in failed_items if p},
                                          status=Account.Status.FAILED):
        accounts[account.person_id].append(account)
    grouped: dict[int, dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for request_id, number, person_id in failed_items:
        reasons = [(a.system, a.error_message) for a in accounts.get(person_id, [])
                   if a.system in systems[request_id]]
        for reason in reasons or [("", "failed")]:
            grouped[request_id][reason].append(number)
    return {
        request_id: {
            "failedUsers": len({n for numbers in reasons.values() for n in numbers}),
            "reasons": [
                {"system": system, "reason": reason, "count": len(numbers), "employeeNumbers": sorted(numbers)}
                for (system, reason), numbers in sorted(reasons.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            ],
        }
        for request_id, reasons in grouped.items()
    }


def reconcile_processing_requests() -> int:
    """Finalize processing requests whose items are all final (a safety net after cancels and crashes)."""
    open_items = Item.objects.filter(request_id__in=Request.objects.filter(status=Request.Status.PROCESSING)
                                     .values("id")).exclude(status__in=Item.FINAL_STATUSES)
    ready = Request.objects.filter(status=Request.Status.PROCESSING).exclude(
        id__in=open_items.values("request_id"))
    return rollup_requests(list(ready.values_list("id", flat=True)[:1000]))
