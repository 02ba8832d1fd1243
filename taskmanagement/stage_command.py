"""The shared shape of the three stage commands: run once, print one line, exit non-zero on failure."""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from .models import TaskRun
from .services import stage_run


class StageCommand(BaseCommand):
    stage: str = ""
    stoppable = False  # True: SIGTERM/SIGINT stop claiming and let in-flight work finish

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
            raise CommandError(f"{self.stage} failed: database error: {exc}".strip()) from exc
        except Exception as exc:
            raise CommandError(f"{self.stage} failed: {type(exc).__name__}: {exc}") from exc
        prefix = "[dry run] " if dry_run else ""
        self.stdout.write(f"{prefix}{self.stage}: {run.summary}")
