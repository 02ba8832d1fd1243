"""Named slots held across transactions without a database session: rows with leases (models.Lease).

A slot is taken by one UPDATE of a free or expired row (`FOR UPDATE SKIP LOCKED` picks it), renewed by a
thread of the process while it is held, and released by its holder's token. Every statement is autocommitted
and stands alone, so any server connection may run it: correct behind PgBouncer in transaction pooling mode,
where a session advisory lock would land on whichever server connection ran the statement.

On SQLite (one worker at a time) nothing is shared: every slot is granted at once.
"""

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, InterfaceError, connection
from django.db.models import Exists, Q
from django.db.models.functions import Now

from ..models import Lease
from .shared import shared_connection, unflushed_prefix

logger = logging.getLogger(__name__)

# What a statement on a connection that went away raises: InterfaceError is not a DatabaseError.
DatabaseErrors = (DatabaseError, InterfaceError)

TABLE = Lease._meta.db_table


@dataclass
class Held:
    scope: str
    slot: int
    holder: str
    lost: bool = False  # the renewal found the lease taken by another holder (it had expired)


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def lease_seconds() -> float:
    return float(settings.LEASE_SECONDS)


class _Renewer:
    """One thread per process renewing every lease it holds, a third of a lease's length apart."""

    def __init__(self):
        self.lock = threading.Lock()
        self.held: dict[str, Held] = {}
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()

    def add(self, held: Held) -> None:
        with self.lock:
            self.held[held.holder] = held
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
                self.thread.start()

    def remove(self, held: Held) -> None:
        with self.lock:
            self.held.pop(held.holder, None)

    def _run(self) -> None:
        wrapper = shared_connection(DEFAULT_DB_ALIAS).wrapper()
        failures = 0  # in a row: the first is retried at once, the next ones at the usual pace
        try:
            while True:
                if failures != 1:
                    self.wake.wait(lease_seconds() / 3)
                self.wake.clear()
                with self.lock:
                    held = dict(self.held)
                    if not held:
                        self.thread = None
                        return
                try:
                    with wrapper.cursor() as cursor:
                        cursor.execute(
                            f"UPDATE {TABLE} SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                            "WHERE holder = ANY(%s) RETURNING holder", [lease_seconds(), list(held)])
                        renewed = {row[0] for row in cursor.fetchall()}
                except DatabaseErrors as exc:
                    # A dropped or closed connection (InterfaceError) too: a renewer that died here would let
                    # every lease of the process expire under its holders. Reconnect and try again at once,
                    # then a round later; a lease outlives a few misses.
                    logger.warning("could not renew %d lease(s): %s", len(held), exc)
                    wrapper.close()
                    failures += 1
                    continue
                failures = 0
                for holder, lease in held.items():
                    if holder not in renewed and not lease.lost:
                        lease.lost = True
                        logger.warning("lease %s#%d expired and was taken by another holder", lease.scope,
                                       lease.slot)
        finally:
            wrapper.close()


_renewer = _Renewer()


def _ensure_rows(cursor, scope: str, slots: int) -> int:
    """Create the scope's slot rows that do not exist yet; return how many were made."""
    cursor.execute(
        f"INSERT INTO {TABLE} (scope, slot, holder) SELECT %s, s, '' FROM generate_series(0, %s - 1) AS s "
        "ON CONFLICT (scope, slot) DO NOTHING", [scope, slots])
    return cursor.rowcount


# Taking and giving back a slot are one query string each, a transaction of its own whose commit does not
# wait for its WAL flush (unflushed_prefix): they run thousands of times a minute on the threads' one shared
# connection, and a crash of PostgreSQL that forgets the last of them frees slots whose holders are gone too.
def try_take(scope: str, slots: int = 1, *, cursor_factory=None) -> Held | None:
    """Take one free or expired slot of the scope (0 ≤ slot < slots) in one statement; None when all are held."""
    cursor_factory = cursor_factory or connection.cursor
    holder = new_holder()
    with cursor_factory() as cursor:
        for _ in range(2):  # the second time only when the scope's rows had to be made first
            cursor.execute(
                unflushed_prefix() + f"""
                UPDATE {TABLE} SET holder = %s, acquired_at = clock_timestamp(),
                                   expires_at = clock_timestamp() + make_interval(secs => %s)
                WHERE id = (SELECT id FROM {TABLE}
                            WHERE scope = %s AND slot < %s
                              AND (expires_at IS NULL OR expires_at < clock_timestamp())
                            ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING slot
                """,
                [holder, lease_seconds(), scope, slots],
            )
            row = cursor.fetchone()
            if row is not None or not _ensure_rows(cursor, scope, slots):
                break
    if row is None:
        return None
    held = Held(scope, row[0], holder)
    _renewer.add(held)
    return held


def release(held: Held, *, cursor_factory=None) -> None:
    """Give the slot back (only if this holder still has it)."""
    _renewer.remove(held)
    cursor_factory = cursor_factory or connection.cursor
    with cursor_factory() as cursor:
        cursor.execute(unflushed_prefix() + f"UPDATE {TABLE} SET holder = '', expires_at = NULL "
                       "WHERE scope = %s AND slot = %s AND holder = %s", [held.scope, held.slot, held.holder])


def still_held(held: Held) -> bool:
    """Whether this holder has the slot now (a check before a write that must come from the one holder)."""
    if held.lost:
        return False
    if connection.vendor != "postgresql":
        return True  # one worker at a time there: nothing to share
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {TABLE} WHERE scope = %s AND slot = %s AND holder = %s "
                       "AND expires_at > clock_timestamp()", [held.scope, held.slot, held.holder])
        return cursor.fetchone() is not None


def held_q(held: Held) -> Q:
    """A condition for a write that must come from this holder alone, checked in the write's own statement
    (true on SQLite, where nothing is shared)."""
    if connection.vendor != "postgresql":
        return Q()
    return Q(Exists(Lease.objects.filter(scope=held.scope, slot=held.slot, holder=held.holder,
                                         expires_at__gt=Now())))


@contextlib.contextmanager
def singleton(scope: str):
    """Yield the lease when this process holds the scope's one slot, None when another holder has it."""
    if connection.vendor != "postgresql":
        yield Held(scope, 0, "local")
        return
    held = try_take(scope, 1)
    try:
        yield held
    finally:
        if held is not None:
            release(held)


def wait_take(scope: str, slots: int, *, timeout: float, cursor_factory=None, interval: float = 0.02) -> Held | None:
    """Take one of the scope's slots, waiting up to `timeout` seconds for one to free up."""
    deadline = time.monotonic() + timeout
    while True:
        held = try_take(scope, slots, cursor_factory=cursor_factory)
        if held is not None or time.monotonic() >= deadline:
            return held
        time.sleep(interval)
