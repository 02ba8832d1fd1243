"""Stage 2: create one account task per (person, system) still missing an account."""

from taskmanagement.models import TaskRun
from taskmanagement.stage_command import StageCommand


class Command(StageCommand):
    help = "Stage 2: create one account task per (person, system) still missing an account."
    stage = TaskRun.Stage.CREATE_ACCOUNT_TASKS
