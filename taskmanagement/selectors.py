"""Read side for operators: pipeline totals, the oldest waiting work, the last run of each stage, metrics."""

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Max, Min, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    Notification,
    System,
    TargetThrottle,
    TaskAttempt,
)

from .models import StageHeartbeat, TaskRun

PIPELINE_STAGES = [TaskRun.Stage.SYNC_HR_PERSONS, TaskRun.Stage.CREATE_ACCOUNT_TASKS,
                   TaskRun.Stage.PROCESS_ACCOUNT_TASKS]


def due_tasks(now) -> Q:
    """Tasks waiting for a worker: pending or waiting on the target, and due."""
    return Q(status__in=[AccountCreationTask.Status.PENDING, AccountCreationTask.Status.WAITING],
             next_attempt_at__lte=now)


def _counts(model, field: str, labels: dict) -> list[dict]:
    rows = model.objects.values(field).annotate(n=Count("id")).order_by(field)
    return [{"key": row[field], "label": labels.get(row[field], row[field]), "count": row["n"]} for row in rows]


def stage_heartbeats() -> dict[str, StageHeartbeat]:
    """Per stage that has ever run (dry runs aside), its heartbeat: the last check, idle runs included."""
    return {beat.stage: beat for beat in StageHeartbeat.objects.all()}


def last_runs() -> dict[str, dict]:
    """Per stage: its last recorded run, its last successful one and its heartbeat (the last check)."""
    beats = stage_heartbeats()
    result = {}
    for stage in TaskRun.Stage:
        runs = TaskRun.objects.filter(stage=stage, dry_run=False).order_by("-started_at")
        result[stage.value] = {
            "label": stage.label,
            "last": runs.first(),
            "last_success": runs.filter(outcome=TaskRun.Outcome.SUCCEEDED).first(),
            "heartbeat": beats.get(stage.value),
        }
    return result


def overdue_stages(now=None) -> list[str]:
    """Pipeline stages whose last success is older than READYZ_STAGE_OVERDUE_SECONDS (never-run ones are not).

    Read from the heartbeats, which idle runs move too: they keep no TaskRun.
    """
    now = now or timezone.now()
    limit = dt.timedelta(seconds=settings.READYZ_STAGE_OVERDUE_SECONDS)
    beats = stage_heartbeats()
    overdue = []
    for stage in PIPELINE_STAGES:
        beat = beats.get(stage.value)
        if beat is None:
            continue
        if beat.last_succeeded_at is None or now - beat.last_succeeded_at > limit:
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
        tasks_by_system.append({"system": label, "key": system,
                                "counts": [counts.get(s, 0) for s in Task.Status.values],
                                "cells": [(s, counts.get(s, 0)) for s in Task.Status.values],
                                "total": sum(counts.values())})
    accounts_by_system = []
    account_rows = Account.objects.values("system", "status").annotate(n=Count("id"))
    account_table: dict[str, dict[str, int]] = {}
    for row in account_rows:
        account_table.setdefault(row["system"], {})[row["status"]] = row["n"]
    for system, label in Account._meta.get_field("system").choices:
        counts = account_table.get(system, {})
        accounts_by_system.append({"system": label, "key": system,
                                   "counts": [counts.get(s, 0) for s in Account.Status.values],
                                   "cells": [(s, counts.get(s, 0)) for s in Account.Status.values]})
    oldest_pending = (AccountCreationRequest.objects.filter(status=AccountCreationRequest.Status.PENDING)
                      .order_by("created_at").first())
    oldest_processing = (AccountCreationRequest.objects.filter(status=AccountCreationRequest.Status.PROCESSING)
                         .order_by("created_at").first())
    due = Task.objects.filter(due_tasks(now))
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
        "throttles": list(TargetThrottle.objects.filter(Q(paused_until__gt=now)).order_by("system", "endpoint")),
        "runs": last_runs(),
        "overdue": overdue_stages(now),
    }


# --- Metrics: every number read from the database when Prometheus scrapes (docs/metrics.md) ---------------

# Upper bounds, in milliseconds, of the buckets of the target-call duration histogram.
CALL_DURATION_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


def row_counts(model, *fields: str) -> dict[tuple[str, ...], int]:
    """Rows of `model` per combination of `fields` (status, or system and status), in one grouped query."""
    rows = model.objects.values(*fields).annotate(n=Count("id")).order_by().values_list(*fields, "n")
    return {tuple(row[:-1]): row[-1] for row in rows}


@dataclass(frozen=True)
class CallTotals:
    """Logged calls of one (system, outcome, code): how many, how long in all, how many within each bound."""

    count: int
    duration_ms: int
    within_ms: tuple[int, ...]  # calls that took at most CALL_DURATION_BUCKETS_MS[i], cumulative


def target_call_totals() -> dict[tuple[str, str, str], CallTotals]:
    """Every call ever logged (TaskAttempt), per (system, outcome, code), with its duration buckets.

    One grouped query over the whole attempt log, which only grows: retention deletes requests and items,
    never tasks or their attempts.
    """
    within = {f"le_{ms}": Count("id", filter=Q(duration_ms__lte=ms)) for ms in CALL_DURATION_BUCKETS_MS}
    rows = (TaskAttempt.objects.values("task__system", "outcome", "code")
            .annotate(n=Count("id"), total_ms=Sum("duration_ms"), **within).order_by())
    return {
        (row["task__system"], row["outcome"], row["code"]):
            CallTotals(row["n"], row["total_ms"] or 0, tuple(row[key] for key in within))
        for row in rows
    }


@dataclass(frozen=True)
class QueueDepth:
    due: int = 0
    oldest_due_at: dt.datetime | None = None
    expired_leases: int = 0  # running tasks whose worker's lease has run out: claimed again soon


def queue_depth(now) -> dict[str, QueueDepth]:
    """Per target system, in one grouped query: the due tasks, when the oldest fell due, the expired leases."""
    Task = AccountCreationTask
    due = due_tasks(now)
    expired = Q(status=Task.Status.RUNNING, lease_expires_at__lt=now)
    rows = (Task.objects.filter(due | expired).values("system")
            .annotate(due=Count("id", filter=due), oldest=Min("next_attempt_at", filter=due),
                      expired=Count("id", filter=expired))
            .order_by())
    depth = {system: QueueDepth() for system in System.values}
    depth.update({row["system"]: QueueDepth(row["due"], row["oldest"], row["expired"]) for row in rows})
    return depth


def target_pauses(now) -> dict[str, dt.datetime]:
    """Target systems paused by a rate-limit answer, for every worker, and until when: a system is paused
    while any of its endpoints is (a pause holds one endpoint, or the whole system), until the last ends."""
    return dict(TargetThrottle.objects.filter(paused_until__gt=now).values("system")
                .annotate(until=Max("paused_until")).values_list("system", "until").order_by())


# --- Dashboard charts: three grouped queries, whatever the amount of data -----------------------------------

CHART_HOURS = 24
CHART_TOP_REASONS = 8


@dataclass(frozen=True)
class DashboardCharts:
    hours: list[dt.datetime]  # the starts of the last CHART_HOURS hours, oldest first, local time
    finished_per_hour: dict[str, list[int]]  # system -> tasks ended (succeeded or failed) in each hour
    failure_reasons: list[tuple[str, str, int]]  # (system, target code, failed tasks), most first
    oldest_waiting: dict[str, dt.timedelta | None]  # system -> how long its oldest due task has waited


def dashboard_charts(now=None) -> DashboardCharts:
    """What the dashboard draws: work finished per hour per system over the last day, the failures by reason
    (the tasks failed for good, by the target's code) and the age of the oldest waiting work per system."""
    now = now or timezone.now()
    Task = AccountCreationTask
    this_hour = timezone.localtime(now).replace(minute=0, second=0, microsecond=0)
    hours = [this_hour - dt.timedelta(hours=n) for n in range(CHART_HOURS - 1, -1, -1)]
    finished = {system: [0] * CHART_HOURS for system in System.values}
    rows = (Task.objects.filter(finished_at__gte=hours[0], status__in=[Task.Status.SUCCEEDED, Task.Status.FAILED,
                                                                          Task.Status.RETRIED])
            .annotate(hour=TruncHour("finished_at")).values("system", "hour").annotate(n=Count("id")).order_by())
    index = {hour: n for n, hour in enumerate(hours)}
    for row in rows:
        slot = index.get(timezone.localtime(row["hour"]).replace(minute=0, second=0, microsecond=0))
        if slot is not None and row["system"] in finished:
            finished[row["system"]][slot] += row["n"]
    reasons = (Task.objects.filter(status=Task.Status.FAILED).values("system", "last_error_code")
               .annotate(n=Count("id")).order_by("-n", "system", "last_error_code")[:CHART_TOP_REASONS])
    depth = queue_depth(now)
    return DashboardCharts(
        hours=hours, finished_per_hour=finished,
        failure_reasons=[(row["system"], row["last_error_code"], row["n"]) for row in reasons],
        oldest_waiting={system: (now - d.oldest_due_at) if d.oldest_due_at else None for system, d in depth.items()},
    )
