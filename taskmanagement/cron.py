"""Entry points for django-crontab (settings.CRONJOBS): each runs one stage once."""

from .models import TaskRun
from .services import stage_run


def sync_hr_persons():
    stage_run(stage=TaskRun.Stage.SYNC_HR_PERSONS, trigger=TaskRun.Trigger.CRON)


def create_account_tasks():
    stage_run(stage=TaskRun.Stage.CREATE_ACCOUNT_TASKS, trigger=TaskRun.Trigger.CRON)


def process_account_creation_tasks():
    stage_run(stage=TaskRun.Stage.PROCESS_ACCOUNT_TASKS, trigger=TaskRun.Trigger.CRON)


def purge_account_requests():
    stage_run(stage=TaskRun.Stage.PURGE_ACCOUNT_REQUESTS, trigger=TaskRun.Trigger.CRON)
