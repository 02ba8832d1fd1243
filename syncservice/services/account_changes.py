"""Keeping accounts true: what a person's accounts should hold, and the change tasks that bring them there.

An account that exists (`created`) remembers what its target was last given (`applied`: the values and
the active state) and whether the person should have it active (`enabled`). Whenever a person's values or
an account's `enabled` may have moved (an HR page, an API submission, a deactivation, a task's result),
`open_changes` compares the two and opens one task per account that differs: `update`, `disable` or
`enable`, carrying every value wanted now. Nothing differs, nothing opens: a sync that changes nothing
makes no call.

At most one task is open per (person, system), of any operation. A change still pending takes the newest
values; one already running finishes with the values it was claimed with, and its result runs
`open_changes` again (the account row is locked first on both sides, so a change committed while the task
ran is seen by one or the other, never by neither).
"""

import datetime as dt
import json

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from ..backends.base import CHANGE_FIELDS, Operation
from ..db.bulk import bulk_insert_rows, id_array, update_from_arrays
from ..db.locking import require_transaction, wait_locked
from ..models import Account, AccountCreationTask, AccountEvent, HrPerson, System
from ..queue.outcomes import Settled, Verdict

Task = AccountCreationTask

# A mailbox's address is its id at the mail system: the one value a mailbox is never changed in.
FIELDS_BY_SYSTEM = {System.EMAIL: tuple(f for f in CHANGE_FIELDS if f != "email")}


def person_values(person: HrPerson) -> dict:
    """The values a person's accounts should hold (PersonSnapshot's names)."""
    department = (person.person_dept[0] if person.person_dept else {}) or {}
    return {
        "full_name": person.full_name,
        "phone_number": person.telephone_number1,
        "department_code": department.get("department_code", "") if isinstance(department, dict) else "",
        "email": person.email or "",
    }


def is_leaver(employee_status: str) -> bool:
    return employee_status in settings.HR_LEAVER_STATUSES


def changed_fields(system: str, wanted: dict, applied: dict) -> list[str]:
    return [f for f in FIELDS_BY_SYSTEM.get(system, CHANGE_FIELDS) if wanted.get(f, "") != applied.get(f, "")]


def operation_for(*, active: bool, was_active: bool) -> str:
    if active != was_active:
        return Operation.ENABLE if active else Operation.DISABLE
    return Operation.UPDATE


def open_changes(person_ids, *, items: dict[int, int] | None = None, priority: int = 0,
                 now: dt.datetime | None = None) -> int:
    """Open (or refresh) the change tasks these persons' existing accounts need; return how many opened.

    `items` maps a person to the request item the change is for (a deactivation, a resubmission), kept on
    the task so that the item's log shows its calls. Runs in the caller's transaction.
    """
    person_ids = set(person_ids)
    if not person_ids:
        return 0
    require_transaction("open_changes")
    now = now or timezone.now()
    items = items or {}
    accounts = list(wait_locked(Account.objects.filter(person_id__in=person_ids, status=Account.Status.CREATED)
                                .select_related("person").order_by("id")))
    if not accounts:
        return 0
    open_tasks = {(t.person_id, t.system): t for t in Task.objects.filter(
        person_id__in={a.person_id for a in accounts}, status__in=Task.OPEN_STATUSES)
        .only("id", "person_id", "system", "status", "operation")}
    new_tasks, refreshed, marked, settled, adopted = [], [], [], [], []
    for account in accounts:
        wanted = person_values(account.person)
        applied = account.applied
        if not applied:
            # Written outside the service's own results (by hand, by an import): what the target holds is
            # not known, so it is taken to be the person's values; reconciliation compares it with the target.
            account.applied = {**wanted, "active": True}
            adopted.append(account)
            applied = account.applied
        was_active = applied.get("active", True)
        fields = changed_fields(account.system, wanted, applied)
        current = open_tasks.get((account.person_id, account.system))
        if not fields and account.enabled == was_active:
            if current is None and account.change_status == Account.ChangeStatus.UPDATING:
                settled.append(account.pk)  # a change made moot (the values went back): nothing to do
            continue
        change = {"values": wanted, "fields": fields, "active": account.enabled, "external_id": account.external_id}
        operation = operation_for(active=account.enabled, was_active=was_active)
        if current is not None:
            # A creation's or a running change's result looks again; a pending change takes the newest values.
            if current.operation != Task.Operation.CREATE and current.status == Task.Status.PENDING:
                refreshed.append((current.pk, operation, change))
            continue
        new_tasks.append(Task(
            person_id=account.person_id, system=account.system, operation=operation, change=change,
            status=Task.Status.PENDING, request_item_id=items.get(account.person_id), priority=priority,
            max_attempts=settings.TASK_MAX_ATTEMPTS, next_attempt_at=now, created_at=now, updated_at=now))
        marked.append(account.pk)
    if refreshed:
        ids, operations, changes = map(list, zip(*refreshed))
        update_from_arrays(Task, match={"id": ids}, values={"operation": operations, "change": changes},
                           constants={"updated_at": now}, where={"status": Task.Status.PENDING})
    # A concurrent copy cannot open the same key: it waits for the account rows locked above.
    bulk_insert_rows(new_tasks, ignore_conflicts=True)
    if marked:
        Account.objects.filter(pk__in=marked).update(change_status=Account.ChangeStatus.UPDATING, updated_at=now)
    if settled:
        Account.objects.filter(pk__in=settled).update(change_status=Account.ChangeStatus.NONE, updated_at=now)
    if adopted:
        update_from_arrays(Account, match={"id": [a.pk for a in adopted]},
                           values={"applied": [a.applied for a in adopted]})
    return len(new_tasks)


def set_enabled(keys_filter: Q, enabled: bool, now: dt.datetime) -> int:
    """Say whether these accounts should be active (a leaver's are not); open_changes does the rest."""
    return Account.objects.filter(keys_filter).exclude(enabled=enabled).update(enabled=enabled, updated_at=now)


def record_change_results(settled: list[Settled], now: dt.datetime) -> set[int]:
    """The accounts of change tasks that ended take their result; return the persons to look at again.

    Succeeded: the target now holds the task's values and active state. Failed: the account says which
    operation failed and why (its `status` stays `created`: the account exists).
    """
    done = {"person": [], "system": [], "applied": [], "last_change": [], "external_id": []}
    failed = {"person": [], "system": [], "last_change": [], "error_message": []}
    for s in settled:
        task = s.result.job
        if task.operation == Task.Operation.CREATE or s.verdict not in (Verdict.SUCCEEDED, Verdict.FAILED):
            continue
        change = task.change or {}
        last = {"operation": task.operation, "fields": change.get("fields", []), "at": now.isoformat(),
                "code": s.result.outcome.code or task.last_error_code}
        if s.verdict == Verdict.SUCCEEDED:
            done["person"].append(task.person_id)
            done["system"].append(task.system)
            done["applied"].append({**change.get("values", {}), "active": bool(change.get("active", True))})
            done["last_change"].append({**last, "result": AccountEvent.Result.SUCCEEDED})
            done["external_id"].append((s.result.outcome.external_id or change.get("external_id", ""))[:255])
        else:
            label = Task.Operation(task.operation).label
            reason = f"[{task.last_error_code}] {task.last_error}" if task.last_error_code else task.last_error
            failed["person"].append(task.person_id)
            failed["system"].append(task.system)
            failed["last_change"].append({**last, "result": AccountEvent.Result.FAILED})
            failed["error_message"].append(f"{label}失败：{reason}")
    if done["person"]:
        update_from_arrays(Account, match={"person": done["person"], "system": done["system"]},
                           values={k: done[k] for k in ("applied", "last_change", "external_id")},
                           constants={"change_status": Account.ChangeStatus.NONE, "error_message": "",
                                      "updated_at": now})
    if failed["person"]:
        update_from_arrays(Account, match={"person": failed["person"], "system": failed["system"]},
                           values={k: failed[k] for k in ("last_change", "error_message")},
                           constants={"change_status": Account.ChangeStatus.FAILED, "updated_at": now})
    return set(done["person"]) | set(failed["person"])


def record_events(settled: list[Settled], now: dt.datetime) -> None:
    """An AccountEvent per change (update, disable, enable) that ended: the account's history after its
    creation, with the target's code. (The creation itself is the create task's attempt log, already
    written for every batch: the history shows it from there.) On PostgreSQL one INSERT … SELECT that finds
    each account by its (person, system) itself."""
    ended = [s for s in settled if s.verdict in (Verdict.SUCCEEDED, Verdict.FAILED)
             and s.result.job.operation != Task.Operation.CREATE]
    if not ended:
        return
    rows = []
    for s in ended:
        task, succeeded = s.result.job, s.verdict == Verdict.SUCCEEDED
        rows.append((task.person_id, task.system, task.pk, task.operation, (task.change or {}).get("fields", []),
                     AccountEvent.Result.SUCCEEDED if succeeded else AccountEvent.Result.FAILED,
                     (s.result.outcome.code or ("" if succeeded else task.last_error_code))[:64],
                     s.result.outcome.message if succeeded else task.last_error))
    if connection.vendor != "postgresql":
        accounts = {(person, system): pk for pk, person, system in Account.objects.filter(
            person_id__in={row[0] for row in rows}).values_list("id", "person_id", "system")}
        AccountEvent.objects.bulk_create([
            AccountEvent(account_id=accounts[(person, system)], task_id=task, operation=operation, fields=fields,
                         result=result, code=code, message=message, created_at=now)
            for person, system, task, operation, fields, result, code, message in rows
            if (person, system) in accounts])
        return
    person, system, task, operation, fields, result, code, message = map(list, zip(*rows))
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{AccountEvent._meta.db_table}" (account_id, task_id, operation, fields, result, code,'
            f" message, created_at) SELECT a.id, v.task, v.operation, v.fields::jsonb, v.result, v.code, v.message, %s"
            f" FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],"
            f" %s::text[]) AS v(person, system, task, operation, fields, result, code, message)"
            f' JOIN "{Account._meta.db_table}" a ON a.person_id = v.person AND a.system = v.system',
            [now, person, system, task, operation, [json.dumps(f) for f in fields], result, code, message])


def persons_out_of_line(person_ids) -> set[int]:
    """Of these persons, those with an existing account that open_changes would act on: not enabled as it
    is active, not holding the person's values, or never written by the service. Called after every batch of
    results (once the accounts are locked), so on PostgreSQL it is one statement that usually finds none."""
    person_ids = set(person_ids)
    if not person_ids or connection.vendor != "postgresql":
        return person_ids
    with connection.cursor() as cursor:
        cursor.execute(
            f'SELECT DISTINCT a.person_id FROM "{Account._meta.db_table}" a'
            f' JOIN "{HrPerson._meta.db_table}" p ON p.id = a.person_id'
            f" WHERE a.person_id = ANY(%s::bigint[]) AND a.status = %s AND (a.applied = '{{}}'::jsonb"
            f" OR a.enabled IS DISTINCT FROM COALESCE((a.applied->>'active')::boolean, TRUE)"
            f" OR a.applied->>'full_name' IS DISTINCT FROM p.full_name"
            f" OR a.applied->>'phone_number' IS DISTINCT FROM p.telephone_number1"
            f" OR COALESCE(a.applied->>'department_code', '') IS DISTINCT FROM"
            f" COALESCE(p.person_dept->0->>'department_code', '')"
            f" OR (a.system <> %s AND COALESCE(a.applied->>'email', '') IS DISTINCT FROM COALESCE(p.email, '')))",
            [id_array(person_ids), Account.Status.CREATED, System.EMAIL])
        return {row[0] for row in cursor.fetchall()}
