"""Waking the worker mode (run_worker): PostgreSQL LISTEN/NOTIFY, and the earliest due time of queued work.

Intake sends `NOTIFY aps_work` inside its transaction; PostgreSQL delivers it when that transaction commits
(never for one that rolls back), through PgBouncer too. The worker listens on a direct connection of its
own (DATABASE_LISTEN_URL, defaulting to DATABASE_URL): a pooled connection in transaction mode cannot
listen. A notification lost (the listener reconnecting) only delays work until the worker's next poll.
"""

import contextlib
import logging
import os
import select

import dj_database_url
from django.conf import settings
from django.db import connection
from django.db.models import Min

from ..models import AccountCreationTask, Notification, OrphanAction

logger = logging.getLogger(__name__)

CHANNEL = "aps_work"


def notify_work(reason: str) -> None:
    """Tell the listening workers there is work, on commit of the current transaction (PostgreSQL only)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, reason])


def earliest_due():
    """The earliest time queued work becomes due: a retry, a poll of the target, a lease that expires."""
    Task = AccountCreationTask
    ready = [Task.Status.PENDING, Task.Status.WAITING]
    times = [
        Task.objects.filter(status__in=ready).aggregate(t=Min("next_attempt_at"))["t"],
        Task.objects.filter(status=Task.Status.RUNNING).aggregate(t=Min("lease_expires_at"))["t"],
        Notification.objects.filter(status=Notification.Status.PENDING).aggregate(t=Min("next_attempt_at"))["t"],
        Notification.objects.filter(status=Notification.Status.SENDING).aggregate(t=Min("lease_expires_at"))["t"],
        OrphanAction.objects.filter(status=OrphanAction.Status.PENDING).aggregate(t=Min("next_attempt_at"))["t"],
        OrphanAction.objects.filter(status=OrphanAction.Status.RUNNING).aggregate(t=Min("lease_expires_at"))["t"],
    ]
    times = [t for t in times if t is not None]
    return min(times) if times else None


class Listener:
    """A direct connection LISTENing on the work channel; reconnects when it is lost."""

    def __init__(self):
        self.conn = None

    def _connect(self):
        import psycopg2

        url = settings.DATABASE_LISTEN_URL
        params = dj_database_url.parse(url)
        # The URL's own options (sslmode, …) hold here too; a database that cannot be reached must not hold
        # the worker (and its SIGTERM) for the system's TCP timeout.
        options = {"connect_timeout": 10, **(params.get("OPTIONS") or {}),
                   "application_name": f"aps run_worker listen {os.getpid()}"[:63]}
        options.pop("options", None)  # startup parameters (the pooled connections') are not the listener's
        self.conn = psycopg2.connect(
            host=params.get("HOST") or None, port=params.get("PORT") or None, user=params.get("USER") or None,
            password=params.get("PASSWORD") or None, dbname=params["NAME"], **options)
        self.conn.autocommit = True
        with self.conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")

    def fileno(self):
        return self.conn.fileno()

    def ensure(self) -> bool:
        """Connected and listening; False (after a warning) when the database cannot be reached now."""
        if self.conn is not None and not self.conn.closed:
            return True
        try:
            self._connect()
            return True
        except Exception as exc:  # the poll carries on without notifications until the next try
            logger.warning("worker: cannot LISTEN on %s: %s", CHANNEL, " ".join(str(exc).split()))
            self.close()
            return False

    def wait(self, timeout: float, wake_fd: int) -> bool:
        """Wait up to `timeout` s for a notification (or a byte on `wake_fd`); True when one came."""
        listening = self.ensure()
        fds = [wake_fd, self.conn] if listening else [wake_fd]
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except (OSError, ValueError):
            ready = []
        if not listening or self.conn not in ready:
            return False
        try:
            self.conn.poll()
            got = bool(self.conn.notifies)
            self.conn.notifies.clear()
            return got
        except Exception as exc:
            logger.warning("worker: lost the LISTEN connection: %s", " ".join(str(exc).split()))
            self.close()
            return False

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self.conn.close()
            self.conn = None
