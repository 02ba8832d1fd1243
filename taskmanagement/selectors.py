"""Read side for operators: pipeline totals, the oldest waiting work and the last run of each stage."""

import datetime as dt

from django.conf import settings
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    Notification,
    TargetThrottle,
)

from .models import TaskRun

PIPELINE_STAGES = [TaskRun.Stage.SYNC_HR_PERSONS, TaskRun.Stage.CREATE_ACCOUNT_TASKS,
                   TaskRun.Stage.PROCESS_ACCOUNT_TASKS]


def _counts(model, field: str, labels: dict) -> list[dict]:
    rows = model.objects.values(field).annotate(n=Count("id")).order_by(field)
    return [{"key": row[field], "label": labels.get(row[field], row[field]), "count": row["n"]} for row in rows]


def last_runs() -> dict[str, dict]:
    """Per stage: its last run and its last successful run."""
    result = {}
    for stage in TaskRun.Stage:
        runs = TaskRun.objects.filter(stage=stage, dry_run=False).order_by("-started_at")
        result[stage.value] = {
            "label": stage.label,
            "last": runs.first(),
            "last_success": runs.filter(outcome=TaskRun.Outcome.SUCCEEDED).first(),
        }
    return result


def overdue_stages(now=None) -> list[str]:
    """Pipeline stages whose last success is older than READYZ_STAGE_OVERDUE_SECONDS (never-run ones are not)."""
    now = now or timezone.now()
    limit = dt.timedelta(seconds=settings.READYZ_STAGE_OVERDUE_SECONDS)
    overdue = []
    for stage in PIPELINE_STAGES:
        runs = TaskRun.objects.filter(stage=stage, dry_run=False)
        if not runs.exists():
            continue
        last_success = runs.filter(outcome=TaskRun.Outcome.SUCCEEDED).aggregate(at=Max("finished_at"))["at"]
        if last_success is None or now - last_success > limit:
            overdue.append(stage.value)
    return overdue


def dashboard() -> dict:
    now = timezone.now()
    Task = AccountCreationTask
    tasks_by_system = []
    rows = Task.objects.values("system", "status").annotate(n=Count("id"))
    table: dict[str, dict[str, int]] = {}
    for row in rows:
        table.setdefault(row["system"], {})[row["status"]] = row["n"]
    for system, label in Task._meta.get_field("system").choices:
        counts = table.get(system, {})
        tasks_by_system.append({"system": label, "counts": [counts.get(s, 0) for s in Task.Status.values],
                                "total": sum(counts.values())})
    accounts_by_system = []
    account_rows = Account.objects.values("system", "status").annotate(n=Count("id"))
    account_table: dict[str, dict[str, int]] = {}
    for row in account_rows:
        account_table.setdefault(row["system"], {})[row["status"]] = row["n"]
    for system, label in Account._meta.get_field("system").choices:
        counts = account_table.get(system, {})
        accounts_by_system.append({"system": label, "counts": [counts.get(s, 0) for s in Account.Status.values]})
    oldest_pending = (AccountCreationRequest.objects.filter(status=AccountCreationRequest.Status.PENDING)
                      .order_by("created_at").first())
    oldest_processing = (AccountCreationRequest.objects.filter(status=AccountCreationRequest.Status.PROCESSING)
                         .order_by("created_at").first())
    due = Task.objects.filter(status__in=[Task.Status.PENDING, Task.Status.WAITING], next_attempt_at__lte=now)
    oldest_due = due.aggregate(at=Min("next_attempt_at"))["at"]
    return {
        "now": now,
        "requests": _counts(AccountCreationRequest, "status", dict(AccountCreationRequest.Status.choices)),
        "items": _counts(AccountCreationRequestItem, "status", dict(AccountCreationRequestItem.Status.choices)),
        "task_statuses": [label for _, label in Task.Status.choices],
        "tasks_by_system": tasks_by_system,
        "account_statuses": [label for _, label in Account.Status.choices],
        "accounts_by_system": accounts_by_system,
        "oldest_pending": oldest_pending,
        "oldest_processing": oldest_processing,
        "due_tasks": due.count(),
        "oldest_due": oldest_due,
        "running_tasks": Task.objects.filter(status=Task.Status.RUNNING).count(),
        "expired_leases": Task.objects.filter(status=Task.Status.RUNNING, lease_expires_at__lt=now).count(),
        "notifications": _counts(Notification, "status", dict(Notification.Status.choices)),
        "throttles": list(TargetThrottle.objects.filter(Q(paused_until__gt=now)).order_by("system")),
        "runs": last_runs(),
        "overdue": overdue_stages(now),
    }
