"""Operator actions on requests: cancel and retry."""

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..db.locking import wait_locked
from ..errors import InvalidTransition
from ..models import Account, AccountCreationRequest, AccountCreationRequestItem, AccountCreationTask
from ..selectors import iso_utc
from .account_changes import open_changes
from .mailbox_first import MAILBOX, MAILBOX_FAILED, opened_status, persons_with_mailbox_coming
from .rollup import error_summaries, rollup_items_for_persons, rollup_requests
from .wakeup import notify_work

Request = AccountCreationRequest
Item = AccountCreationRequestItem
Task = AccountCreationTask


def _lock_request(request: Request) -> Request:
    return wait_locked(Request.objects.filter(pk=request.pk)).get()


@transaction.atomic
def request_cancel(*, request: Request) -> Request:
    """Cancel a request. Pending: at once. Processing: every task not yet started is cancelled and the
    request ends `cancelled` when the calls in flight have finished. Accounts already created stay."""
    request = _lock_request(request)
    if request.is_final:
        raise InvalidTransition(f"请求 {request.request_id} 的状态为{request.get_status_display()}，不能取消。")
    if request.cancel_requested_at is not None:
        return request
    now = timezone.now()
    request.cancel_requested_at = now
    request.save(update_fields=["cancel_requested_at", "updated_at"])
    items = wait_locked(Item.objects.filter(request=request).order_by("id"))
    items.filter(status__in=[Item.Status.PENDING, Item.Status.SYNCED]).update(
        status=Item.Status.CANCELLED, error_message="cancelled", updated_at=now)
    if request.status == Request.Status.PENDING:
        # Nothing was claimed yet: the request ends here. It passes through processing so that the roll-up
        # finalizes it like any other.
        Request.objects.filter(pk=request.pk).update(status=Request.Status.PROCESSING)
    else:
        _cancel_unstarted_tasks(request, now)
    rollup_items_for_persons(set(request.items.exclude(hr_person=None).values_list("hr_person_id", flat=True)))
    rollup_requests([request.pk])
    return Request.objects.get(pk=request.pk)


def person_system_q(keys) -> Q:
    """A filter matching rows of any of these (person, system) pairs."""
    condition = Q(pk__in=[])
    for person_id, system in keys:
        condition |= Q(person_id=person_id, system=system)
    return condition


def _cancel_tasks(tasks: list[Task], now, note: str) -> set[tuple[int, str]]:
    """Cancel these unstarted tasks and put their accounts back to not_created (a creation) or as they
    were (a change: a disable not applied leaves the account enabled); return their keys."""
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(
        status=Task.Status.CANCELLED, finished_at=now, updated_at=now, last_error=note)
    keys = {(t.person_id, t.system) for t in tasks}
    Account.objects.filter(person_system_q(keys), status=Account.Status.CREATING).update(
        status=Account.Status.NOT_CREATED, updated_at=now)
    changes = {(t.person_id, t.system) for t in tasks if t.operation != Task.Operation.CREATE}
    if changes:
        Account.objects.filter(person_system_q(changes)).update(change_status=Account.ChangeStatus.NONE,
                                                                updated_at=now)
        disables = {(t.person_id, t.system) for t in tasks if t.operation == Task.Operation.DISABLE}
        if disables:
            Account.objects.filter(person_system_q(disables)).update(enabled=True)
    return keys


def cancel_unstarted_creations(keys_filter: Q, now, note: str) -> set[int]:
    """Cancel the creations not yet started of these (person, system) rows (a leaver's); return the persons."""
    tasks = list(wait_locked(Task.objects.filter(
        keys_filter, operation=Task.Operation.CREATE, status__in=[Task.Status.PENDING, Task.Status.BLOCKED])
        .order_by("id")))
    if not tasks:
        return set()
    return {person for person, _ in _cancel_tasks(tasks, now, note)}


def _cancel_unstarted_tasks(request: Request, now) -> None:
    tasks = list(wait_locked(Task.objects.filter(
        request_item__request=request, status__in=[Task.Status.PENDING, Task.Status.BLOCKED]).order_by("id")))
    if not tasks:
        return
    keys = _cancel_tasks(tasks, now, "cancelled with the request")
    # Other requests waiting on one of these tasks get their own task from the next create_account_tasks run.
    others = Item.objects.filter(
        hr_person_id__in={p for p, _ in keys}, status=Item.Status.TASK_CREATED,
        request__status=Request.Status.PROCESSING, request__cancel_requested_at__isnull=True,
    ).exclude(request=request).select_related("request")
    reopened = [item.pk for item in others
                if any((item.hr_person_id, s) in keys for s in item.request.system_list)]
    Item.objects.filter(pk__in=reopened).update(status=Item.Status.SYNCED, updated_at=now)


def stop_retries_of_cancelled_requests(task_ids) -> set[int]:
    """Tasks about to be retried whose request is being cancelled are cancelled instead; return their
    persons (for the roll-up)."""
    if not task_ids:
        return set()  # the common case (no retries in the batch): no query to build
    tasks = list(Task.objects.filter(pk__in=task_ids, status=Task.Status.PENDING,
                                     request_item__request__cancel_requested_at__isnull=False))
    if not tasks:
        return set()
    _cancel_tasks(tasks, timezone.now(), "cancelled with the request before its retry")
    return {task.person_id for task in tasks}


def _history_after_retry(request: Request, now, *, summary: dict | None = None) -> list:
    """The request's error history with the failures a retry is about to clear appended.

    `request` is locked and fresh. Its errorSummary is what it ended with; a request retried while still
    processing has none, so `summary` (read before the retry changed anything) stands in for it.
    """
    summary = request.error_summary or summary
    history = list(request.error_history or [])
    if summary:
        history.append({**summary, "status": request.status, "completedAt": iso_utc(request.completed_at),
                        "retriedAt": iso_utc(now), "retried": True})
    return history


def _supersede_failed_tasks(keys_filter: Q, now) -> None:
    """Failed tasks a retry replaces read `retried`: their failure is no longer their account's."""
    Task.objects.filter(keys_filter, status=Task.Status.FAILED).update(
        status=Task.Status.RETRIED, updated_at=now)


def _reopen_items(request: Request, items: list[Item], now) -> None:
    fallback = None if request.error_summary else error_summaries([request.pk]).get(request.pk)
    history = _history_after_retry(request, now, summary=fallback)
    deactivation = request.request_type == Request.RequestType.DEACTIVATE
    # A deactivation's items go back to the sync stage, which opens their disable tasks again.
    Item.objects.filter(pk__in=[i.pk for i in items]).update(
        status=Item.Status.PENDING if deactivation else Item.Status.SYNCED, error_message="", updated_at=now)
    persons = [i.hr_person_id for i in items]
    # A change that failed is tried again: the accounts it left `failed` are looked at afresh.
    Account.objects.filter(person_id__in=persons, system__in=request.system_list,
                           change_status=Account.ChangeStatus.FAILED).update(
        change_status=Account.ChangeStatus.NONE, updated_at=now)
    open_changes(persons, items={i.hr_person_id: i.pk for i in items}, priority=request.priority, now=now)
    # Failed accounts must be attempted again: the task stage skips only accounts already created.
    Account.objects.filter(person_id__in=persons, system__in=request.system_list,
                           status=Account.Status.FAILED).update(
        status=Account.Status.NOT_CREATED, error_message="", updated_at=now)
    # The task stage opens their successors.
    _supersede_failed_tasks(Q(person_id__in=persons, system__in=request.system_list), now)
    Request.objects.filter(pk=request.pk).update(
        status=Request.Status.PROCESSING, completed_at=None, error_summary=None, error_history=history,
        cancel_requested_at=None, updated_at=now)
    rollup_requests([request.pk])
    notify_work("retry")  # the reopened work starts at once in worker mode, on commit


@transaction.atomic
def request_retry(*, request: Request) -> Request:
    """Give the failed items of a request fresh tasks (new task rows, attempts from zero, the old tasks and
    their attempts kept as history); the request goes back to processing."""
    request = _lock_request(request)
    if request.status not in (Request.Status.PARTIAL_FAILED, Request.Status.FAILED, Request.Status.PROCESSING):
        raise InvalidTransition(
            f"请求 {request.request_id} 的状态为{request.get_status_display()}；只有失败的用户可以重试。")
    items = list(wait_locked(Item.objects.filter(request=request, status=Item.Status.FAILED,
                                                 hr_person__isnull=False).order_by("id")))
    if not items:
        raise InvalidTransition(f"请求 {request.request_id} 没有可重试的失败用户。")
    _reopen_items(request, items, timezone.now())
    return Request.objects.get(pk=request.pk)


@transaction.atomic
def items_retry(*, items) -> int:
    """Retry failed items (the admin action); returns how many were reopened."""
    items = list(wait_locked(Item.objects.filter(pk__in=[i.pk for i in items], status=Item.Status.FAILED,
                                                 hr_person__isnull=False).order_by("id")))
    now = timezone.now()
    by_request: dict[int, list[Item]] = {}
    for item in items:
        by_request.setdefault(item.request_id, []).append(item)
    for request in wait_locked(Request.objects.filter(pk__in=by_request).order_by("id")):
        _reopen_items(request, by_request[request.pk], now)
    return len(items)


def _reopen_items_of(tasks: list[Task], now) -> None:
    """Failed items of these tasks wait again (task_created), their requests back to processing."""
    items = Item.objects.filter(pk__in={t.request_item_id for t in tasks if t.request_item_id},
                                status=Item.Status.FAILED)
    request_ids = set(items.values_list("request_id", flat=True))
    summaries = error_summaries(sorted(request_ids))
    items.update(status=Item.Status.TASK_CREATED, error_message="", updated_at=now)
    for request in wait_locked(Request.objects.filter(pk__in=request_ids).order_by("id")):
        request.error_history = _history_after_retry(request, now, summary=summaries.get(request.pk))
        request.status, request.completed_at, request.error_summary = Request.Status.PROCESSING, None, None
        request.save(update_fields=["status", "completed_at", "error_summary", "error_history", "updated_at"])
    rollup_requests(request_ids)


@transaction.atomic
def tasks_retry(*, tasks) -> int:
    """Retry failed tasks (the admin action): a fresh task per failed one, history kept."""
    chosen = Task.objects.filter(pk__in=[t.pk for t in tasks], status=Task.Status.FAILED)
    # A mailbox tried again brings back the tasks that failed because it had failed.
    dependents = Task.objects.filter(status=Task.Status.FAILED, last_error_code=MAILBOX_FAILED,
                                     person_id__in=chosen.filter(system=MAILBOX).values("person_id"))
    failed = list(wait_locked(Task.objects.filter(Q(pk__in=chosen.values("pk")) | Q(pk__in=dependents.values("pk")))
                              .order_by("id")))
    now = timezone.now()
    reopened = 0
    changes = [t for t in failed if t.operation != Task.Operation.CREATE]
    if changes:
        # A failed change is tried again with what the account should hold now, not with its old values.
        keys = person_system_q({(t.person_id, t.system) for t in changes})
        _supersede_failed_tasks(keys, now)
        Account.objects.filter(keys, change_status=Account.ChangeStatus.FAILED).update(
            change_status=Account.ChangeStatus.NONE, updated_at=now)
        reopened = open_changes({t.person_id for t in changes},
                                items={t.person_id: t.request_item_id for t in changes}, now=now)
        _reopen_items_of(changes, now)
        failed = [t for t in failed if t.operation == Task.Operation.CREATE]
    # One query for every open task of these persons; a key gets one fresh task however often it is selected.
    taken = set(Task.objects.filter(person_system_q({(t.person_id, t.system) for t in failed}),
                                    status__in=Task.OPEN_STATUSES).values_list("person_id", "system"))
    fresh = []
    for task in failed:
        key = (task.person_id, task.system)
        if key in taken:
            continue
        taken.add(key)
        fresh.append(Task(person_id=task.person_id, system=task.system, request_item_id=task.request_item_id,
                          priority=task.priority, max_attempts=task.max_attempts, next_attempt_at=now))
    coming = persons_with_mailbox_coming({(t.person_id, t.system) for t in fresh})
    for task in fresh:
        task.status = opened_status(person_id=task.person_id, system=task.system, mailbox_coming=coming)
    Task.objects.bulk_create(fresh)
    # Every key chosen now has an open task (a fresh one, or one opened before): its failed ones are replaced.
    _supersede_failed_tasks(person_system_q({(t.person_id, t.system) for t in failed}), now)
    if fresh:
        # Items and requests first: their error summaries are read while the accounts still read failed.
        _reopen_items_of(fresh, now)
        Account.objects.filter(person_system_q({(t.person_id, t.system) for t in fresh})).exclude(
            status=Account.Status.CREATED).update(
            status=Account.Status.CREATING, error_message="", updated_at=now)
    if fresh or reopened:
        notify_work("retry")
    return len(fresh) + reopened
