"""Outbound limits per target system that hold across every worker process at once.

Rate: each call takes the next free time slot of its system from one shared row (TargetThrottle), spaced
1/rate apart, in a single atomic statement; the caller sleeps until its slot. A rate-limit answer from the
target (HTTP 429, WeLink 48503, …) pauses the system for everyone: the shared row's next slot moves past the
pause. Concurrency: a call holds one of N leased slot rows of its system while it runs (db/leases.py).

On SQLite (one worker at a time) the same limits hold within the process.
"""

import contextlib
import datetime as dt
import logging
import threading
import time

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection
from django.utils import timezone

from ..db import leases
from ..db.shared import shared_connection
from ..models import TargetThrottle

logger = logging.getLogger(__name__)

# Slots are spaced wider than 1/rate: threads wake late under load and calls bunch on the wire, and no
# one-second window at the target may ever hold more than `rate` calls.
SAFETY_MARGIN = 1.25
SLOT_WAIT_SECONDS = 0.02

_local_lock = threading.Lock()
_local_next: dict[str, float] = {}


class _SharedConnection:
    """A Django connection object for pacing, shared by the worker threads under a lock.

    The statements are tiny and autocommitted. They run on the process's one shared connection
    (syncservice.db.shared), the one the executor's lane threads use: a worker's connection count does not
    grow with its thread count.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self.wrapper = None

    @contextlib.contextmanager
    def cursor(self):
        with self.lock:
            if self.wrapper is None or not self.wrapper.is_usable():
                if self.wrapper is not None:
                    self.wrapper.close()
                self.wrapper = shared_connection(DEFAULT_DB_ALIAS).wrapper()
                self.wrapper.ensure_connection()
            with self.wrapper.cursor() as cursor:
                yield cursor

    def close(self) -> None:
        with self.lock:
            if self.wrapper is not None:
                self.wrapper.close()
                self.wrapper = None


_shared = _SharedConnection()


SETTING_PREFIX = {"idaas": "IDAAS", "welink": "WELINK", "email": "MAILBOX"}


def max_calls_per_second(system: str) -> float:
    prefix = SETTING_PREFIX.get(system)
    return float(getattr(settings, f"{prefix}_MAX_CALLS_PER_SECOND", 0) or 0) if prefix else 0.0


def pace(system: str) -> float:
    """Wait for this system's next call slot; return the seconds waited (0 when unlimited)."""
    rate = max_calls_per_second(system)
    if rate <= 0:
        return 0.0
    interval = SAFETY_MARGIN / rate
    if connection.vendor == "postgresql":
        delay = _take_shared_slot(system, interval)
    else:
        delay = _take_local_slot(system, interval)
    if delay > 0:
        time.sleep(delay)
    return max(delay, 0.0)


def _take_shared_slot(system: str, interval: float) -> float:
    table = TargetThrottle._meta.db_table
    with _shared.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} AS t (system, next_call_at, pause_reason, updated_at)
            VALUES (%s, clock_timestamp() + make_interval(secs => %s), '', clock_timestamp())
            ON CONFLICT (system) DO UPDATE SET
                next_call_at = GREATEST(t.next_call_at, clock_timestamp(),
                                        COALESCE(t.paused_until, '-infinity'::timestamptz))
                               + make_interval(secs => %s),
                updated_at = clock_timestamp()
            RETURNING EXTRACT(EPOCH FROM (t.next_call_at - make_interval(secs => %s) - clock_timestamp()))
            """,
            [system, interval, interval, interval],
        )
        return float(cursor.fetchone()[0])


def _take_local_slot(system: str, interval: float) -> float:
    with _local_lock:
        now = time.monotonic()
        slot = max(_local_next.get(system, now), now, _local_paused_until.get(system, now))
        _local_next[system] = slot + interval
        return slot - now


_local_paused_until: dict[str, float] = {}


def reset_local_pacing() -> None:
    """Forget the in-process slots and pauses (the SQLite path) and close the shared connection."""
    with _local_lock:
        _local_next.clear()
        _local_paused_until.clear()
    _shared.close()
    shared_connection(DEFAULT_DB_ALIAS).close()


def pause(system: str, seconds: float, reason: str) -> None:
    """The target said slow down: no worker calls it again before `seconds` from now."""
    seconds = max(0.0, min(float(seconds), settings.TARGET_MAX_PAUSE_SECONDS))
    logger.warning("pausing calls to %s for %.1f s: %s", system, seconds, reason)
    if connection.vendor != "postgresql":
        with _local_lock:
            _local_paused_until[system] = max(_local_paused_until.get(system, 0), time.monotonic() + seconds)
        return
    until = timezone.now() + dt.timedelta(seconds=seconds)
    throttle, _ = TargetThrottle.objects.get_or_create(system=system)
    TargetThrottle.objects.filter(pk=throttle.pk).update(
        paused_until=until, pause_reason=reason[:255], updated_at=timezone.now())


def max_concurrency(system: str) -> int:
    prefix = SETTING_PREFIX.get(system)
    return int(getattr(settings, f"{prefix}_MAX_CONCURRENCY", 0) or 0) if prefix else 0


@contextlib.contextmanager
def concurrency_slot(system: str, *, timeout: float | None = None):
    """Hold one of the system's N shared call slots while the body runs (no-op when unlimited).

    A slot is a row with a lease (syncservice.db.leases), taken and released by single autocommitted
    statements: no session state, so the limit holds behind PgBouncer in transaction pooling mode too.
    Yields True when a slot was taken, False when none freed up within `timeout` (the caller then gives
    the task back instead of calling).
    """
    slots = max_concurrency(system)
    if slots <= 0 or connection.vendor != "postgresql":
        yield True
        return
    wait = timeout if timeout is not None else settings.TARGET_SLOT_WAIT_SECONDS
    held = leases.wait_take(f"target-slot:{system}", slots, timeout=wait, cursor_factory=_shared.cursor,
                            interval=SLOT_WAIT_SECONDS)
    try:
        yield held is not None
    finally:
        if held is not None:
            leases.release(held, cursor_factory=_shared.cursor)
