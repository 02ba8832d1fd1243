"""Stage 1: turn pending request items into HR persons, then run the incremental HR sync."""

from taskmanagement.models import TaskRun
from taskmanagement.stage_command import StageCommand


class Command(StageCommand):
    help = "Stage 1: turn pending request items into HR persons, then run the incremental HR sync."
    stage = TaskRun.Stage.SYNC_HR_PERSONS
