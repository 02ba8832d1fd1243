"""Run the three stages in a loop, for development and for containers without cron."""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from taskmanagement.services import pipeline_round


class Command(BaseCommand):
    help = ("Run sync_hr_persons, create_account_tasks and process_account_creation_tasks every "
            "SCHEDULER_INTERVAL_SECONDS until stopped (SIGTERM or Ctrl-C finish the current stage first).")

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=None,
                            help="Seconds between rounds (default: SCHEDULER_INTERVAL_SECONDS).")
        parser.add_argument("--once", action="store_true", help="Run one round and exit.")

    def handle(self, *args, interval, once, **options):
        interval = settings.SCHEDULER_INTERVAL_SECONDS if interval is None else interval
        if interval <= 0:
            raise CommandError("--interval must be positive")
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(f"scheduler: running the pipeline every {interval:g} s")
        failures = 0
        while not stop.is_set():
            failures += pipeline_round(stop, out=self.stdout.write, err=self.stderr.write).failures
            if once:
                break
            stop.wait(interval)
        self.stdout.write("scheduler: stopped")
        if once and failures:
            raise CommandError(f"{failures} stage(s) failed")
