"""Status roll-up: accounts decide items, items decide requests.

An item is final once every account its request asked for is final: `completed` when all were created,
`failed` when any failed. A request is final once every item is: `completed`, `failed` or `partial_failed`.
Rows are locked before they are read (items, then requests, each in id order), so two workers finishing
the same person's tasks at once cannot both miss the other's result.
"""

import json
from collections import defaultdict

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from ..db.bulk import bulk_update_rows, id_array, update_from_arrays
from ..db.locking import require_transaction, wait_locked
from ..models import Account, AccountCreationRequest, AccountCreationRequestItem
from ..selectors import account_state, item_counts_by_request
from .notifications import notifications_enqueue

Item = AccountCreationRequestItem
Request = AccountCreationRequest
SYSTEM_LABELS = {"idaas": "IDaaS", "welink": "WeLink", "email": "Email"}


DISABLED_MESSAGE = "账号已停用（人员已离职）"
STILL_ACTIVE_MESSAGE = "账号已重新启用，未停用"


def _create_item_end(wanted: list[tuple], cancelling: bool) -> tuple[str, str] | None:
    """(status, error message) of a creation's item once its accounts are final, else None."""
    states = [(system, account_state(status, change, active, enabled), message)
              for system, status, message, change, active, enabled in wanted]
    in_flight = (Account.Status.CREATING, "updating")
    if cancelling:
        # Cancelling: the item ends once nothing of it is in flight; what was not created is cancelled.
        if any(state in in_flight for _, state, _ in states):
            return None
        unfinished = any(state == Account.Status.NOT_CREATED for _, state, _ in states)
    elif any(state not in (Account.Status.CREATED, Account.Status.FAILED, "disabled") for _, state, _ in states):
        return None
    else:
        unfinished = False
    failures = [(system, DISABLED_MESSAGE if state == "disabled" else message) for system, state, message in states
                if state in (Account.Status.FAILED, "disabled")]
    message = "; ".join(f"{SYSTEM_LABELS.get(system, system)}: {text}" for system, text in failures)
    if unfinished:
        note = "cancelled before every account was created"
        return Item.Status.CANCELLED, f"{message}; {note}" if message else note
    return (Item.Status.FAILED if failures else Item.Status.COMPLETED), message


def _deactivate_item_end(wanted: list[tuple]) -> tuple[str, str] | None:
    """(status, error message) of a deactivation's item once nothing of it is in flight, else None.

    Done for an account that is disabled, or that does not exist (never created, its creation cancelled
    or failed): nothing of the person stays active there."""
    failures = []
    for system, status, message, change, active, _ in wanted:
        if status == Account.Status.CREATING or change == Account.ChangeStatus.UPDATING:
            return None
        if status != Account.Status.CREATED:
            continue
        if change == Account.ChangeStatus.FAILED:
            failures.append((system, message))
        elif active:
            failures.append((system, STILL_ACTIVE_MESSAGE))
    message = "; ".join(f"{SYSTEM_LABELS.get(system, system)}: {text}" for system, text in failures)
    return (Item.Status.FAILED if failures else Item.Status.COMPLETED), message


def rollup_items_for_persons(person_ids) -> int:
    """Finalize task_created items of these persons whose accounts are all final; return how many.

    Called for every batch of results, so it reads plain rows, not model instances.
    """
    person_ids = set(person_ids)
    if not person_ids:
        return 0
    items = _lock_open_items(person_ids)
    if not items:
        return 0
    # Read after the items are locked: a worker finishing another account of the same person has committed.
    accounts = _account_states({item[1] for item in items})
    missing = (Account.Status.NOT_CREATED, "", "", True, True)
    finished: dict[str, list] = {"id": [], "status": [], "error_message": []}
    request_ids = set()
    for item_id, person_id, request_id, system_list, cancelling, request_type in items:
        wanted = [(system, *accounts.get((person_id, system), missing)) for system in system_list]
        if request_type == Request.RequestType.DEACTIVATE:
            end = _deactivate_item_end(wanted)
        else:
            end = _create_item_end(wanted, cancelling)
        if end is None:
            continue
        finished["id"].append(item_id)
        finished["status"].append(end[0])
        finished["error_message"].append(end[1])
        request_ids.add(request_id)
    if request_ids:
        update_from_arrays(Item, match={"id": finished["id"]},
                           values={"status": finished["status"], "error_message": finished["error_message"]},
                           constants={"updated_at": timezone.now()})
        rollup_requests(request_ids)
    return len(finished["id"])


def _lock_open_items(person_ids: set[int]) -> list[tuple]:
    """Lock the task_created items of these persons in id order;
    (id, person, request, systems, cancelling, request type).

    Called for every batch of results: on PostgreSQL the ids go as one array and rows come back as tuples
    (the ORM would prepare every id of the IN list and convert every value, several ms per batch)."""
    if connection.vendor != "postgresql":
        return [(i, p, r, systems, cancelled is not None, kind) for i, p, r, systems, cancelled, kind in wait_locked(
            Item.objects.filter(hr_person_id__in=person_ids, status=Item.Status.TASK_CREATED).order_by("id")
        ).values_list("id", "hr_person_id", "request_id", "request__system_list", "request__cancel_requested_at",
                      "request__request_type")]
    require_transaction("rollup_items_for_persons")  # the check select_for_update makes, for the raw lock
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT i.id, i.hr_person_id, i.request_id, r.system_list::text, r.cancel_requested_at IS NOT NULL, "
            f'r.request_type FROM "{Item._meta.db_table}" i JOIN "{Request._meta.db_table}" r ON r.id = i.request_id '
            f"WHERE i.hr_person_id = ANY(%s::bigint[]) AND i.status = %s ORDER BY i.id FOR UPDATE OF i",
            [id_array(person_ids), Item.Status.TASK_CREATED.value])
        rows = cursor.fetchall()
    systems = {text: json.loads(text) for text in {row[3] for row in rows}}  # decoded once per request
    return [(i, p, r, systems[text], cancelling, kind) for i, p, r, text, cancelling, kind in rows]


def _account_states(person_ids: set[int]) -> dict[tuple[int, str], tuple[str, str, str, bool, bool]]:
    """(person, system) → (status, error message, change status, active at the target, enabled) of these
    persons' accounts."""
    if connection.vendor != "postgresql":
        rows = [(p, s, status, message, change, (applied or {}).get("active", True), enabled)
                for p, s, status, message, change, applied, enabled in Account.objects.filter(
                    person_id__in=person_ids).values_list(
                    "person_id", "system", "status", "error_message", "change_status", "applied", "enabled")]
    else:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT person_id, system, status, error_message, change_status, "
                           f"COALESCE((applied->>'active')::boolean, TRUE), enabled FROM \"{Account._meta.db_table}\" "
                           f"WHERE person_id = ANY(%s::bigint[])", [id_array(person_ids)])
            rows = cursor.fetchall()
    return {(person_id, system): (status, message, change, active, enabled)
            for person_id, system, status, message, change, active, enabled in rows}


def rollup_requests(request_ids) -> int:
    """Recount items of these requests; finalize those whose items are all final. Return how many ended.

    Called for every batch of results, so it reads plain rows and writes only the requests whose count
    moved; only the requests that end are loaded as models, for their error summary and notifications.
    """
    request_ids = sorted(set(request_ids))
    if not request_ids:
        return 0
    requests = _lock_requests(request_ids)
    counts = item_counts_by_request(request_ids=request_ids)
    now = timezone.now()
    moved: dict[str, list] = {"id": [], "processed_users": []}
    ended: dict[int, tuple[str, int]] = {}
    for request_id, status, total, processed_before, cancelling in requests:
        if status in Request.FINAL_STATUSES:
            continue
        completed, failed, cancelled = (counts[request_id][key] for key in ("completed", "failed", "cancelled"))
        processed = completed + failed + cancelled
        if processed == total and status == Request.Status.PROCESSING:
            if cancelled or cancelling:
                status = Request.Status.CANCELLED
            elif failed == 0:
                status = Request.Status.COMPLETED
            elif completed == 0:
                status = Request.Status.FAILED
            else:
                status = Request.Status.PARTIAL_FAILED
            ended[request_id] = (status, processed)
        elif processed != processed_before:
            moved["id"].append(request_id)
            moved["processed_users"].append(processed)
    update_from_arrays(Request, match={"id": moved["id"]}, values={"processed_users": moved["processed_users"]},
                       constants={"updated_at": now})
    if not ended:
        return 0
    summaries = error_summaries(list(ended))
    finished = list(Request.objects.filter(id__in=ended).order_by("id"))  # locked above
    for request in finished:
        request.status, request.processed_users = ended[request.id]
        request.completed_at = request.updated_at = now
        request.error_summary = summaries.get(request.id)
    bulk_update_rows(finished, ["processed_users", "status", "completed_at", "error_summary", "updated_at"])
    notifications_enqueue(requests=finished)
    return len(finished)


def _lock_requests(request_ids: list[int]) -> list[tuple]:
    """Lock these requests in id order; (id, status, total users, processed users, cancel requested)."""
    return [(i, status, total, processed, cancelled is not None) for i, status, total, processed, cancelled
            in wait_locked(Request.objects.filter(id__in=request_ids).order_by("id")).values_list(
                "id", "status", "total_users", "processed_users", "cancel_requested_at")]


def error_summaries(request_ids: list[int]) -> dict[int, dict]:
    """Failures grouped by system and reason, with the employee numbers affected, per request."""
    if not request_ids:
        return {}
    failed_items = list(
        Item.objects.filter(request_id__in=request_ids, status=Item.Status.FAILED)
        .values_list("request_id", "employee_number", "hr_person_id", "error_message")
    )
    if not failed_items:
        return {}
    systems = dict(Request.objects.filter(id__in=request_ids).values_list("id", "system_list"))
    accounts = defaultdict(list)
    failed = Q(status=Account.Status.FAILED) | Q(change_status=Account.ChangeStatus.FAILED)
    for account in Account.objects.filter(failed, person_id__in={p for _, _, p, _ in failed_items if p}):
        accounts[account.person_id].append(account)
    grouped: dict[int, dict[tuple[str, str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for request_id, number, person_id, item_message in failed_items:
        reasons = [(a.system, failed_operation(a), a.error_message) for a in accounts.get(person_id, [])
                   if a.system in systems[request_id]]
        # No account failed: the item says why (its accounts are disabled: the person left).
        for reason in reasons or [("", "", item_message or "failed")]:
            grouped[request_id][reason].append(number)
    return {
        request_id: {
            "failedUsers": len({n for numbers in reasons.values() for n in numbers}),
            "reasons": [
                {"system": system, "operation": operation or None, "reason": reason, "count": len(numbers),
                 "employeeNumbers": sorted(numbers)}
                for (system, operation, reason), numbers in sorted(reasons.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            ],
        }
        for request_id, reasons in grouped.items()
    }


def failed_operation(account: Account) -> str:
    """The operation whose failure an account shows: its creation, or its last change."""
    if account.status == Account.Status.FAILED:
        return "create"
    return (account.last_change or {}).get("operation", "update")


def reconcile_processing_requests() -> int:
    """Finalize processing requests whose items are all final (a safety net after cancels and crashes)."""
    open_items = Item.objects.filter(request_id__in=Request.objects.filter(status=Request.Status.PROCESSING)
                                     .values("id")).exclude(status__in=Item.FINAL_STATUSES)
    ready = Request.objects.filter(status=Request.Status.PROCESSING).exclude(
        id__in=open_items.values("request_id"))
    return rollup_requests(list(ready.values_list("id", flat=True)[:1000]))
