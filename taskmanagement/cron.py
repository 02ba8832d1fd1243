"""Entry points for django-crontab (settings.CRONJOBS): each runs one stage once."""

import contextlib

from django.conf import settings

from .models import TaskRun
from .services import stage_run


def _run(stage: str) -> None:
    # stage_run has logged a failure with its traceback and recorded it on the run; let through,
    # django-crontab would only log the same traceback a second time.
    with contextlib.suppress(Exception):
        stage_run(stage=stage, trigger=TaskRun.Trigger.CRON)


def sync_hr_persons():
    _run(TaskRun.Stage.SYNC_HR_PERSONS)


def create_account_tasks():
    _run(TaskRun.Stage.CREATE_ACCOUNT_TASKS)


def process_account_creation_tasks():
    _run(TaskRun.Stage.PROCESS_ACCOUNT_TASKS)


def purge_account_requests():
    _run(TaskRun.Stage.PURGE_ACCOUNT_REQUESTS)


def reconcile_accounts():
    """The daily comparison; repairs only when asked (RECONCILE_REPAIR), within RECONCILE_MAX_REPAIRS."""
    with contextlib.suppress(Exception):
        stage_run(stage=TaskRun.Stage.RECONCILE_ACCOUNTS, trigger=TaskRun.Trigger.CRON,
                  repair=settings.RECONCILE_REPAIR)
