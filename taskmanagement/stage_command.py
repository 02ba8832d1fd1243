"""The shared shape of the three stage commands: run once, print one line, exit non-zero on failure."""

import logging
import os
import signal
import socket
import threading
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection, connections
from django.utils import timezone

from .models import TaskRun
from .services import stage_run

logger = logging.getLogger(__name__)

# After a database failure, how long to keep trying to record it (a restarting server answers within seconds).
RECORD_FAILURE_TRIES = (0.5, 1.0, 2.0)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line: drivers spread theirs over several (psycopg2's hints)."""
    return " ".join(str(exc).split())


def record_lost_failure(*, stage: str, summary: str) -> None:
    """Mark this process's unfinished run of `stage` failed, when the failure was the database itself.

    The run could not record its own failure then; try again on fresh connections for a few seconds, so that
    a database restart does not leave the run `running` for ever. Gives up quietly: the exit code and the
    message already tell the scheduler.
    """
    if connection.in_atomic_block:
        return  # called inside the caller's transaction (call_command in a test): not ours to reconnect
    for pause in RECORD_FAILURE_TRIES:
        connections.close_all()
        try:
            TaskRun.objects.filter(stage=stage, host=socket.gethostname(), pid=os.getpid(),
                                   outcome=TaskRun.Outcome.RUNNING).update(
                outcome=TaskRun.Outcome.FAILED, summary=summary[:4000], finished_at=timezone.now())
            return
        except DatabaseError:
            time.sleep(pause)
    logger.warning("could not record the failure of this %s run: the database is still unavailable", stage)


class StageCommand(BaseCommand):
    stage: str = ""
    stoppable = False  # True: SIGTERM/SIGINT stop claiming and let in-flight work finish
    # Cron starts these every few minutes: Django's system checks (models, URLs, settings; ~0.1 s, a fifth of
    # a start-up) belong to deployment (`manage.py check --deploy`, `migrate`), as for the web server's workers.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Report what would be done; change nothing.")
        parser.add_argument("--limit", type=int, default=None, help="Handle at most this many rows.")

    def handle(self, *args, dry_run, limit, **options):
        if limit is not None and limit < 1:
            raise CommandError("--limit must be a positive integer")
        extra = {}
        if self.stoppable and not dry_run:
            stop = threading.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
            extra["stop"] = stop
        try:
            run = stage_run(stage=self.stage, trigger=TaskRun.Trigger.COMMAND, dry_run=dry_run, limit=limit,
                            **extra)
        except DatabaseError as exc:
            message = f"{self.stage} failed: database error: {one_line(exc)}"
            record_lost_failure(stage=self.stage, summary=message)
            raise CommandError(message) from exc
        except Exception as exc:
            raise CommandError(f"{self.stage} failed: {type(exc).__name__}: {one_line(exc)}") from exc
        prefix = "[dry run] " if dry_run else ""
        self.stdout.write(f"{prefix}{self.stage}: {run.summary}")
