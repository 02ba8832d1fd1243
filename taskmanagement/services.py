"""Run a pipeline stage once, recording a TaskRun, whoever started it."""

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from config.logging import request_id_var
from syncservice.services.provisioning import run_process_stage
from syncservice.services.retention import purge_finished_requests
from syncservice.services.sync import run_sync_stage
from syncservice.services.tasks import run_task_creation_stage

from .models import TaskRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    run: Callable
    describe: Callable[[dict, bool], str]


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


def _run_sync(dry_run, limit, **_):
    result = run_sync_stage(dry_run=dry_run, limit=limit)
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


STAGES = {
    TaskRun.Stage.SYNC_HR_PERSONS: StageSpec(_run_sync, _describe_sync),
    TaskRun.Stage.CREATE_ACCOUNT_TASKS: StageSpec(_run_tasks, _describe_tasks),
    TaskRun.Stage.PROCESS_ACCOUNT_TASKS: StageSpec(_run_process, _describe_process),
    TaskRun.Stage.PURGE_ACCOUNT_REQUESTS: StageSpec(_run_purge, _describe_purge),
}


def stage_run(*, stage: str, trigger: str, dry_run: bool = False, limit: int | None = None,
              triggered_by: str = "", **options) -> TaskRun:
    """Run one stage once and return its TaskRun; a failure is logged and recorded, then raised."""
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
            run.save(update_fields=["outcome", "summary", "finished_at"])
        except Exception:  # the database itself may be what failed
            logger.warning("could not record the failure of %s run %s", stage, run.pk)
        raise
    run.counts = counts
    run.summary = spec.describe(counts, dry_run)
    run.outcome = TaskRun.Outcome.SUCCEEDED
    run.finished_at = timezone.now()
    run.save(update_fields=["counts", "summary", "outcome", "finished_at"])
    # An idle run (every few seconds under run_scheduler) is not worth an INFO line.
    busy = any(isinstance(value, int) and value for value in counts.values())
    logger.log(logging.INFO if busy else logging.DEBUG, "%s finished: %s", stage, run.summary)
    return run
