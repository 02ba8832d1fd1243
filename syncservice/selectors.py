"""Read side: the documents the API returns for requests and their items, and counts over them."""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, F, FilteredRelation, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from config.logging import mask_phones

from .errors import RequestNotFound
from .models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    ApiClient,
    TaskAttempt,
)


def iso_utc(value: dt.datetime | None) -> str | None:
    """Timestamps as the note shows them: UTC, second precision, 'Z' suffix."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def requests_visible_to(client) -> QuerySet[AccountCreationRequest]:
    """Operators and staff see every request; an origin client sees only its own origin's."""
    queryset = AccountCreationRequest.objects.all()
    if isinstance(client, ApiClient) and not client.is_operator:
        queryset = queryset.filter(origin_system=client.origin_system)
    return queryset


def request_get(*, client, request_id: str) -> AccountCreationRequest:
    try:
        return requests_visible_to(client).get(request_id=request_id)
    except AccountCreationRequest.DoesNotExist:
        # Another origin's request answers exactly like one that does not exist.
        raise RequestNotFound(f"请求 {request_id!r} 不存在。") from None


ACCOUNT_STATES = [
    ("not_created", "未创建"), ("creating", "创建中"), ("created", "已创建"), ("linked", "已关联"),
    ("updating", "变更中"), ("disabled", "已停用"), ("failed", "失败"),
]
ACCOUNT_STATE_LABELS = dict(ACCOUNT_STATES)


def account_state(status: str, change_status: str, active: bool, enabled: bool = True) -> str:
    """What an account is, in one word: its creation's status until it exists, then `updating` while a
    change is on its way, `failed` when the last one failed, `disabled` or `created`. An account never
    created for a person who left is `disabled` too: it will not be created."""
    if status == Account.Status.NOT_CREATED and not enabled:
        return "disabled"
    if status != Account.Status.CREATED:
        return status
    if change_status:
        return change_status
    return "created" if active else "disabled"


def account_document_state(account: Account | None) -> str:
    """account_state for the status document, telling a linked account from one the service created."""
    if account is None:
        return Account.Status.NOT_CREATED
    state = account_state(account.status, account.change_status, (account.applied or {}).get("active", True),
                          account.enabled)
    if state == "created" and (account.applied or {}).get("linked"):
        return "linked"
    return state


def last_change_document(account: Account | None) -> dict | None:
    change = (account.last_change or {}) if account else {}
    if not change.get("operation"):
        return None
    return {"operation": change["operation"], "fields": change.get("fields", []), "result": change.get("result"),
            "code": change.get("code") or None, "at": change.get("at")}


def request_summary(request: AccountCreationRequest) -> dict:
    return {
        "requestId": request.request_id,
        "requestType": request.request_type,
        "originSystem": request.origin_system,
        "businessKey": request.business_key,
        "accountType": request.account_type,
        "employeeType": request.employee_type,
        "systemList": request.system_list,
        "status": request.status,
        "status_display": request.get_status_display(),
        "totalUsers": request.total_users,
        "processedUsers": request.processed_users,
        "progress": request.progress,
        "errorSummary": request.error_summary or None,
        "errorHistory": request.error_history or [],
        "createdAt": iso_utc(request.created_at),
        "updatedAt": iso_utc(request.updated_at),
        "completedAt": iso_utc(request.completed_at),
    }


@dataclass(frozen=True)
class TaskProgress:
    """Where the work on one (person, system) stands: its open task, or else its latest one."""

    attempts: int
    last_error_code: str
    last_error: str
    last_attempt_at: dt.datetime | None
    next_attempt_at: dt.datetime | None  # only while the task is open and not waiting for the mailbox

    def as_document(self) -> dict:
        has_error = bool(self.last_error or self.last_error_code)
        return {
            "attempts": self.attempts,
            # A target's message may quote the person's phone number back.
            "lastError": {"code": self.last_error_code or None, "message": mask_phones(self.last_error)}
            if has_error else None,
            "lastAttemptAt": iso_utc(self.last_attempt_at),
            "nextAttemptAt": iso_utc(self.next_attempt_at),
        }


NO_TASK_YET = TaskProgress(attempts=0, last_error_code="", last_error="", last_attempt_at=None,
                           next_attempt_at=None)


def accounts_with_progress(*, person_ids, systems: Iterable[str]) -> tuple[
        dict[tuple[int, str], Account], dict[tuple[int, str], TaskProgress]]:
    """The accounts of these persons in these systems, and where the work on each stands, in one query.

    `person_ids` may be a subquery. Each account comes with every task of its (person, system) (a few: a
    retry keeps the old ones) and the start of each task's latest logged call; its open task, or else its
    latest one, is its TaskProgress. (Every task has its account: the task stage creates missing ones.)
    """
    Task = AccountCreationTask
    last_call = TaskAttempt.objects.filter(task=OuterRef("task__id")).order_by("-started_at").values("started_at")[:1]
    rows = (Account.objects.filter(person_id__in=person_ids, system__in=list(systems))
            .annotate(task=FilteredRelation("person__tasks", condition=Q(person__tasks__system=F("system"))))
            .annotate(task_pk=F("task__id"), task_status=F("task__status"), task_attempts=F("task__attempts"),
                      task_error_code=F("task__last_error_code"), task_error=F("task__last_error"),
                      task_next_at=F("task__next_attempt_at"), task_last_at=Subquery(last_call))
            .order_by("person_id", "system", "task__id"))
    accounts: dict[tuple[int, str], Account] = {}
    latest: dict[tuple[int, str], Account] = {}
    for row in rows:
        key = (row.person_id, row.system)
        accounts.setdefault(key, row)
        current = latest.get(key)
        # Tasks come oldest first: a later task replaces an earlier one unless the earlier one is open.
        if row.task_pk is not None and (current is None or current.task_status not in Task.OPEN_STATUSES):
            latest[key] = row
    # A blocked task has no due time of its own: it is released when the person's mailbox is created.
    scheduled = set(Task.OPEN_STATUSES) - {Task.Status.BLOCKED}
    progress = {
        key: TaskProgress(attempts=row.task_attempts, last_error_code=row.task_error_code,
                          last_error=row.task_error, last_attempt_at=row.task_last_at,
                          next_attempt_at=row.task_next_at if row.task_status in scheduled else None)
        for key, row in latest.items()
    }
    return accounts, progress


def item_document(item: AccountCreationRequestItem, system_list: list[str],
                  accounts: dict[tuple[int, str], Account],
                  tasks: dict[tuple[int, str], TaskProgress] | None = None) -> dict:
    person = item.hr_person
    tasks = tasks or {}
    account_documents = []
    for system in system_list:
        account = accounts.get((person.pk, system)) if person else None
        status = account.status if account else Account.Status.NOT_CREATED
        progress = tasks.get((person.pk, system), NO_TASK_YET) if person else NO_TASK_YET
        state = account_document_state(account)
        account_documents.append({
            "system": system,
            "status": status,
            "status_display": Account.Status(status).label,
            "state": state,
            "state_display": ACCOUNT_STATE_LABELS[state],
            "enabled": account.enabled if account else True,
            "lastChange": last_change_document(account),
            "externalId": (account.external_id or None) if account else None,
            "error": (account.error_message or None) if account else None,
            **progress.as_document(),
        })
    return {
        "id": item.pk,
        "employeeNumber": item.employee_number,
        "employeeName": item.employee_name,
        "departmentCode": item.department_code,
        "phoneNumber": item.phone_number,
        "partnerCompany": item.partner_company,
        "country": item.country,
        "status": item.status,
        "status_display": item.get_status_display(),
        "hrPersonInfo": {
            "employeeNumber": person.employee_number,
            "fullName": person.full_name,
            "email": person.email,
        } if person else None,
        "accounts": account_documents,
        "errorMessage": item.error_message or None,
        "createdAt": iso_utc(item.created_at),
        "updatedAt": iso_utc(item.updated_at),
    }


def request_document(request: AccountCreationRequest) -> dict:
    """The full status document of GET /account-creation/requests/{id}/, in three queries."""
    items = list(request.items.select_related("hr_person").order_by("id"))
    accounts, tasks = {}, {}
    if any(item.hr_person_id for item in items):
        accounts, tasks = accounts_with_progress(person_ids=request.items.values("hr_person_id"),
                                                 systems=request.system_list)
    document = request_summary(request)
    document["items"] = [item_document(item, request.system_list, accounts, tasks) for item in items]
    return document


def request_item_get(*, request: AccountCreationRequest, item_id: int) -> AccountCreationRequestItem:
    try:
        return request.items.get(pk=item_id)
    except AccountCreationRequestItem.DoesNotExist:
        # Another request's item answers like one that does not exist.
        raise RequestNotFound(f"请求 {request.request_id} 中没有请求项 {item_id}。") from None


def item_attempts(*, item: AccountCreationRequestItem, systems: Iterable[str]) -> QuerySet[TaskAttempt]:
    """Every call made for the item's person to these systems, newest first, with the task's system."""
    if item.hr_person_id is None:
        return TaskAttempt.objects.none()
    return (TaskAttempt.objects.filter(task__person_id=item.hr_person_id, task__system__in=list(systems))
            .annotate(system=F("task__system"), operation=F("task__operation")).order_by("-started_at", "-id"))


def attempt_document(attempt: TaskAttempt) -> dict:
    """One entry of an item's provisioning log; `attempt` comes from item_attempts."""
    return {
        "startedAt": iso_utc(attempt.started_at),
        "system": attempt.system,
        "operation": attempt.operation,
        "outcome": attempt.outcome,
        "outcome_display": attempt.get_outcome_display(),
        "attemptNumber": attempt.attempt_number,
        "code": attempt.code or None,
        "message": mask_phones(attempt.message) or None,
        "durationMs": attempt.duration_ms,
        "worker": attempt.worker or None,
    }


def item_counts_by_request(*, request_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Ended items per request, in one query: {request pk: {"completed": n, "failed": n, "cancelled": n}}.

    Every request asked about has an entry, with zeros while none of its items has ended.
    """
    Status = AccountCreationRequestItem.Status
    counts = {pk: {"completed": 0, "failed": 0, "cancelled": 0} for pk in request_ids}
    if not counts:
        return counts
    rows = (
        AccountCreationRequestItem.objects
        .filter(request_id__in=list(counts), status__in=AccountCreationRequestItem.FINAL_STATUSES)
        .values("request_id")
        .annotate(completed=Count("id", filter=Q(status=Status.COMPLETED)),
                  failed=Count("id", filter=Q(status=Status.FAILED)),
                  cancelled=Count("id", filter=Q(status=Status.CANCELLED)))
        .values_list("request_id", "completed", "failed", "cancelled")
    )
    for request_id, completed, failed, cancelled in rows:
        counts[request_id] = {"completed": completed, "failed": failed, "cancelled": cancelled}
    return counts


def account_history(account: Account) -> list[dict]:
    """What happened to an account at its target, oldest first: its creation (the create tasks' final calls,
    from the attempt log) and every change after it (AccountEvent), each with the target's code."""
    Task = AccountCreationTask
    final = [TaskAttempt.Outcome.CREATED, TaskAttempt.Outcome.LINKED, TaskAttempt.Outcome.PERMANENT]
    creations = TaskAttempt.objects.filter(
        task__person_id=account.person_id, task__system=account.system, task__operation=Task.Operation.CREATE,
        outcome__in=final).order_by("started_at", "id")
    entries = [{"at": a.started_at, "operation": Task.Operation.CREATE, "fields": [],
                "result": "failed" if a.outcome == TaskAttempt.Outcome.PERMANENT else "succeeded",
                "code": a.code, "message": a.message, "outcome": a.outcome} for a in creations]
    entries += [{"at": e.created_at, "operation": e.operation, "fields": e.fields, "result": e.result,
                 "code": e.code, "message": e.message, "outcome": ""}
                for e in account.events.order_by("created_at", "id")]
    return sorted(entries, key=lambda entry: entry["at"])


def requests_with_item_counts(queryset: QuerySet[AccountCreationRequest]) -> QuerySet[AccountCreationRequest]:
    """Requests with their completed, failed and cancelled items counted (`completed_items`, …), in the same
    query: subqueries, so that a join the caller adds (a search by employee number) cannot inflate them."""
    Status = AccountCreationRequestItem.Status

    def ended(status: str):
        return Subquery(AccountCreationRequestItem.objects.filter(request_id=OuterRef("pk"), status=status)
                        .order_by().values("request_id").annotate(n=Count("id")).values("n")[:1])

    return queryset.annotate(
        completed_items=Coalesce(ended(Status.COMPLETED), 0), failed_items=Coalesce(ended(Status.FAILED), 0),
        cancelled_items=Coalesce(ended(Status.CANCELLED), 0))
