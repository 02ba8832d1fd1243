"""The worker mode: the three stages as soon as there is work, woken by the database.

A round runs sync_hr_persons, create_account_tasks and process_account_creation_tasks, like run_scheduler's.
After a round that found nothing to do the worker waits for a NOTIFY from intake (a request submitted),
until the earliest due time of queued work it knows of (a retry, a poll, an expiring lease), or at most
WORKER_POLL_SECONDS: a lost notification only delays work. On SQLite there is no LISTEN: it polls.
SIGTERM / SIGINT stop claiming; calls in flight finish and are recorded; the exit code is 0.
"""

import os
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections, connection
from django.utils import timezone

from syncservice.services.wakeup import Listener, earliest_due
from taskmanagement.services import pipeline_round

IDLE_FLOOR_SECONDS = 0.2


class Command(BaseCommand):
    help = ("Run the pipeline's stages whenever there is work: woken by PostgreSQL LISTEN/NOTIFY when a "
            "request is submitted, by the earliest due retry, and every WORKER_POLL_SECONDS at the latest.")

    def add_arguments(self, parser):
        parser.add_argument("--poll", type=float, default=None,
                            help="Longest wait between two rounds in seconds (default: WORKER_POLL_SECONDS).")

    def handle(self, *args, poll, **options):
        poll = settings.WORKER_POLL_SECONDS if poll is None else poll
        if poll <= 0:
            raise CommandError("--poll must be positive")
        stop = threading.Event()
        wake_r, wake_w = os.pipe()

        def on_signal(*_):
            stop.set()
            os.write(wake_w, b"x")

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        listener = Listener() if connection.vendor == "postgresql" else None
        if listener is not None:
            listener.ensure()  # listening before the first round: nothing submitted meanwhile is missed
        how = "woken by NOTIFY, and polling" if listener else "polling (no LISTEN on this database)"
        self.stdout.write(f"worker: {how} every {poll:g} s")
        self.stdout.flush()
        last_hr_sync = None
        try:
            while not stop.is_set():
                hr_due = last_hr_sync is None or time.monotonic() - last_hr_sync >= settings.WORKER_HR_SYNC_SECONDS
                busy = self._round(stop, hr_sync=hr_due)
                if hr_due:
                    last_hr_sync = time.monotonic()
                if busy or stop.is_set():
                    continue
                wait = poll
                due = earliest_due()
                if due is not None:
                    # Work due already after an idle round is work no stage could take (a busy slot, a lane
                    # not configured): look again soon, not in a tight loop.
                    wait = min(poll, max(IDLE_FLOOR_SECONDS, (due - timezone.now()).total_seconds()))
                close_old_connections()
                if listener is not None:
                    listener.wait(wait, wake_r)
                else:
                    stop.wait(wait)
        finally:
            if listener is not None:
                listener.close()
            os.close(wake_r)
            os.close(wake_w)
        self.stdout.write("worker: stopped")

    def _round(self, stop: threading.Event, *, hr_sync: bool) -> bool:
        """Run each stage once; True when any of them did something (the next round then starts at once)."""
        def out(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        result = pipeline_round(stop, out=out, err=self.stderr.write, hr_sync=hr_sync)
        if result.failures:
            stop.wait(1.0)  # a failing database or backend is not retried in a tight loop
        return result.busy
