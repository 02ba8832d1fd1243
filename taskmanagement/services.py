"""Run a pipeline stage once, recording a TaskRun, whoever started it."""

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from config.logging import request_id_var
from syncservice.models import ReconciliationRun
from syncservice.services.provisioning import run_process_stage
from syncservice.services.reconciliation import reconcile
from syncservice.services.retention import purge_finished_requests
from syncservice.services.sync import run_sync_stage
from syncservice.services.tasks import run_task_creation_stage

from .models import StageHeartbeat, TaskRun
from .selectors import PIPELINE_STAGES

logger = logging.getLogger(__name__)


# Runs nobody asked for: when idle they keep no TaskRun, only the stage's heartbeat.
SCHEDULED_TRIGGERS = frozenset({TaskRun.Trigger.CRON, TaskRun.Trigger.SCHEDULER})


@dataclass(frozen=True)
class StageSpec:
    run: Callable
    describe: Callable[[dict, bool], str]
    # Counts that echo the run's arguments rather than measure work (the purge's older_than_days).
    arguments: frozenset[str] = frozenset()

    def is_idle(self, counts: dict) -> bool:
        """Nothing claimed, nothing done: no count of work in `counts` (nested ones included) is positive."""
        return not _counts_work(counts, self.arguments)


def _counts_work(counts: dict, arguments: frozenset[str] = frozenset()) -> bool:
    for key, value in counts.items():
        if key in arguments:
            continue
        if isinstance(value, dict) and _counts_work(value):
            return True
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return True
    return False


def _describe_sync(c: dict, dry_run: bool) -> str:
    if dry_run:
        return (f"would claim {c['requests_claimed']} pending request(s) and sync {c['items_synced']} item(s); "
                "HR sync not run")
    return (f"claimed {c['requests_claimed']} request(s), synced {c['items_synced']} item(s) "
            f"({c['persons_created']} new person(s), {c['persons_updated']} updated); {c.get('hr_note', '')}")


def _describe_tasks(c: dict, dry_run: bool) -> str:
    if dry_run:
        return (f"would create tasks for {c['items_processed']} synced item(s) and "
                f"{c['hr_tasks_created']} HR-synced account(s)")
    return (f"{c['items_processed']} item(s) → {c['tasks_created']} task(s) "
            f"({c['items_already_done']} item(s) already done); {c['hr_tasks_created']} task(s) for HR-synced persons")


def _describe_process(c: dict, dry_run: bool) -> str:
    by_system = ", ".join(f"{k} {v}" for k, v in sorted(c.get("by_system", {}).items()))
    if dry_run:
        return f"{c['claimed']} task(s) due ({by_system or 'none'})"
    text = (f"processed {c['claimed']} task(s): {c['succeeded']} succeeded, {c['retried']} to retry, "
            f"{c['waiting']} waiting on the target, {c['failed']} failed")
    if c.get("fenced_off"):
        text += f", {c['fenced_off']} discarded (lease lost)"
    if c.get("released"):
        text += f", {c['released']} released unstarted"
    if c.get("notifications_delivered"):
        text += f"; {c['notifications_delivered']} notification(s) delivered"
    if c.get("notifications_failed"):
        text += f", {c['notifications_failed']} notification(s) failed for good"
    return text


def _run_sync(dry_run, limit, hr_sync=True, **_):
    result = run_sync_stage(dry_run=dry_run, limit=limit, hr_sync=hr_sync)
    return {**result.as_counts(), "hr_note": result.hr_sync_note}


def _run_tasks(dry_run, limit, **_):
    return run_task_creation_stage(dry_run=dry_run, limit=limit).as_counts()


def _run_process(dry_run, limit, **options):
    return run_process_stage(dry_run=dry_run, limit=limit, **options).as_counts()


def _run_purge(dry_run, limit, older_than_days=None, **_):
    days = settings.REQUEST_RETENTION_DAYS if older_than_days is None else older_than_days
    counts = purge_finished_requests(older_than_days=days, dry_run=dry_run).as_counts()
    return {**counts, "older_than_days": days}


def _describe_purge(c: dict, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    return (f"{verb} {c['requests']} finished request(s) and {c['items']} item(s) "
            f"older than {c['older_than_days']} day(s)")


class ReconciliationFailed(Exception):
    """A reconciliation that could not finish: its run keeps what it compared and where it stopped."""


def _run_reconcile(dry_run, limit, systems=None, repair=False, force=False, triggered_by="", **_):
    run = reconcile(systems=systems, repair=repair, dry_run=dry_run, force=force, triggered_by=triggered_by)
    if run.status == ReconciliationRun.Status.FAILED:
        raise ReconciliationFailed(f"reconciliation {run.pk} failed: {run.note}")
    opened = sum(r.get("opened", 0) for r in run.repairs.values())
    held = sorted(system for system, r in run.repairs.items() if r.get("held"))
    return {"reconciliation_id": run.pk, "findings": dict(run.counts),
            "compared": {system: c["compared"] for system, c in run.compared.items()},
            "repairs_opened": opened, "repairs_held": held}


def _describe_reconcile(c: dict, dry_run: bool) -> str:
    findings = ", ".join(f"{kind} {n}" for kind, n in sorted(c["findings"].items())) or "no findings"
    compared = ", ".join(f"{system} {n}" for system, n in sorted(c["compared"].items()))
    text = f"reconciliation {c['reconciliation_id']}: compared {compared}; {findings}"
    if c["repairs_held"]:
        text += f"; repairs held back by RECONCILE_MAX_REPAIRS in {', '.join(c['repairs_held'])} (use --force)"
    elif c["repairs_opened"]:
        text += f"; {c['repairs_opened']} repair(s) opened"
    return text


STAGES = {
    TaskRun.Stage.SYNC_HR_PERSONS: StageSpec(_run_sync, _describe_sync),
    TaskRun.Stage.CREATE_ACCOUNT_TASKS: StageSpec(_run_tasks, _describe_tasks),
    TaskRun.Stage.PROCESS_ACCOUNT_TASKS: StageSpec(_run_process, _describe_process),
    TaskRun.Stage.PURGE_ACCOUNT_REQUESTS: StageSpec(_run_purge, _describe_purge,
                                                    arguments=frozenset({"older_than_days"})),
    TaskRun.Stage.RECONCILE_ACCOUNTS: StageSpec(_run_reconcile, _describe_reconcile,
                                                arguments=frozenset({"reconciliation_id"})),
}


def run_is_idle(run: TaskRun) -> bool:
    """Whether a finished run claimed nothing and did nothing, judged from the counts its stage returned."""
    return STAGES[TaskRun.Stage(run.stage)].is_idle(run.counts)


def stage_run(*, stage: str, trigger: str, dry_run: bool = False, limit: int | None = None,
              triggered_by: str = "", **options) -> TaskRun:
    """Run one stage once and return its TaskRun; a failure is logged and recorded, then raised.

    The TaskRun is written before the stage starts, so that a run that crashes leaves its record. An idle
    scheduled run (cron, run_scheduler) gives its row up once it has finished: only the stage's heartbeat
    moves, and the TaskRun comes back unsaved (pk None). A run a person asked for (the API, a command) keeps
    its row even when idle: the answer names it and it is listed among the runs.
    """
    spec = STAGES[TaskRun.Stage(stage)]
    try:
        run = TaskRun.objects.create(stage=stage, trigger=trigger, dry_run=dry_run, host=socket.gethostname(),
                                     pid=os.getpid(), triggered_by=triggered_by[:128])
    except Exception:
        logger.exception("%s could not start: its run could not be recorded", stage)
        raise
    # Log lines of the run carry its id (nested in the API request's id when started through the API).
    parent = request_id_var.get()
    token = request_id_var.set(f"{parent}/{stage}#{run.pk}" if parent != "-" else f"{stage}#{run.pk}")
    if stage == TaskRun.Stage.RECONCILE_ACCOUNTS:
        options = {**options, "triggered_by": triggered_by}
    try:
        return _execute(run, spec, dry_run, limit, options)
    finally:
        request_id_var.reset(token)


def _execute(run: TaskRun, spec: StageSpec, dry_run: bool, limit: int | None, options: dict) -> TaskRun:
    stage = run.stage
    try:
        counts = spec.run(dry_run, limit, **options)
    except Exception as exc:
        # The one record of the failure with its traceback, whoever started the run: the command, the API,
        # cron and the scheduler pass only the message on.
        logger.exception("%s run %s failed: %s: %s", stage, run.pk, type(exc).__name__, exc)
        run.outcome = TaskRun.Outcome.FAILED
        run.summary = f"{type(exc).__name__}: {exc}"[:4000]
        run.finished_at = timezone.now()
        try:
            with transaction.atomic():
                run.save(update_fields=["outcome", "summary", "finished_at"])
                _beat(run)
        except Exception:  # the database itself may be what failed
            logger.warning("could not record the failure of %s run %s", stage, run.pk)
        raise
    run.counts = counts
    run.summary = spec.describe(counts, dry_run)
    run.outcome = TaskRun.Outcome.SUCCEEDED
    run.finished_at = timezone.now()
    idle = spec.is_idle(counts)
    # An idle run (every few seconds under run_scheduler) is not worth an INFO line.
    logger.log(logging.DEBUG if idle else logging.INFO, "%s finished: %s", stage, run.summary)
    with transaction.atomic():
        if idle and run.trigger in SCHEDULED_TRIGGERS:
            run.delete()
        else:
            run.save(update_fields=["counts", "summary", "outcome", "finished_at"])
        _beat(run)
    return run


def _beat(run: TaskRun) -> None:
    """Move the stage's heartbeat to this finished run, in one statement (several workers may race for it)."""
    if run.dry_run:
        return
    succeeded = run.outcome == TaskRun.Outcome.SUCCEEDED
    beat = StageHeartbeat(stage=run.stage, last_checked_at=run.finished_at, last_outcome=run.outcome,
                          last_succeeded_at=run.finished_at if succeeded else None,
                          last_duration_ms=round((run.finished_at - run.started_at).total_seconds() * 1000))
    fields = ["last_checked_at", "last_outcome", "last_duration_ms"]
    # A failure leaves the time of the last success as it was.
    StageHeartbeat.objects.bulk_create([beat], update_conflicts=True, unique_fields=["stage"],
                                       update_fields=[*fields, "last_succeeded_at"] if succeeded else fields)


@dataclass
class Round:
    busy: bool = False   # a stage claimed or did something
    failures: int = 0


def pipeline_round(stop, *, out, err, hr_sync: bool = True) -> Round:
    """Run each stage of the pipeline once (until `stop` is set), as the scheduler does; a stage that fails
    is written to `err` and the round goes on (stage_run logged and recorded it). `out` gets the summary of
    every stage that did something."""
    result = Round()
    for stage in PIPELINE_STAGES:  # in pipeline order
        if stop.is_set():
            break
        close_old_connections()
        try:
            extra = {"stop": stop} if stage == TaskRun.Stage.PROCESS_ACCOUNT_TASKS else {}
            if stage == TaskRun.Stage.SYNC_HR_PERSONS and not hr_sync:
                extra["hr_sync"] = False
            run = stage_run(stage=stage, trigger=TaskRun.Trigger.SCHEDULER, **extra)
            if not run_is_idle(run):
                result.busy = True
                out(f"{stage}: {run.summary}")
        except Exception as exc:
            result.failures += 1
            err(f"{stage} failed: {type(exc).__name__}: {exc}")
    return result
