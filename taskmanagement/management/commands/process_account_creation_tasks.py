"""Stage 3: call the target systems for due tasks and roll statuses up."""

from taskmanagement.models import TaskRun
from taskmanagement.stage_command import StageCommand


class Command(StageCommand):
    help = "Stage 3: call the target systems for due tasks and roll statuses up."
    stage = TaskRun.Stage.PROCESS_ACCOUNT_TASKS
    stoppable = True
