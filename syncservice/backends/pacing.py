"""Outbound limits per target system, and per endpoint of it, that hold across every worker process at once.

Rate: each call takes the next free time slot of its endpoint (the API path: WeLink limits calls per API,
Exmail per cgi) and, when a system-wide rate is set, of its system, from shared rows (TargetThrottle, one
per system and endpoint), spaced by the tightest of the vendor's windows (40 a second; 500 a minute and
15,000 an hour), in a single atomic statement; the caller sleeps until its slot. A rate-limit answer from
the target (HTTP 429, WeLink 48503, Exmail 45009) pauses the endpoint it came from (the system when only
a system-wide rate is set) for everyone: the shared row's next slot moves past the pause. Concurrency: a
call holds one of N leased slot rows of its system while it runs (db/leases.py).

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
# Over a window of a minute or more, a late thread moves one call by a fraction of a second: the window's
# count is its slots plus at most one late call per thread, so a small margin keeps it under the cap.
LONG_WINDOW_MARGIN = 1.05
SLOT_WAIT_SECONDS = 0.02

_local_lock = threading.Lock()
_local_next: dict[tuple[str, str], float] = {}


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

# The vendors' limits per endpoint: (setting, window in seconds). WeLink: 40 calls a second per API per
# client; Tencent Exmail: 500 calls a minute and 15,000 an hour per cgi.
ENDPOINT_LIMITS = {
    "welink": (("WELINK_MAX_CALLS_PER_SECOND_PER_API", 1.0),),
    "email": (("MAILBOX_MAX_CALLS_PER_MINUTE_PER_CGI", 60.0), ("MAILBOX_MAX_CALLS_PER_HOUR_PER_CGI", 3600.0)),
}
SYSTEM_WIDE = ""   # the endpoint key of the row that paces a system as a whole


def max_calls_per_second(system: str) -> float:
    """The system-wide rate (every endpoint together); 0 when there is none."""
    prefix = SETTING_PREFIX.get(system)
    return float(getattr(settings, f"{prefix}_MAX_CALLS_PER_SECOND", 0) or 0) if prefix else 0.0


def endpoint_interval(system: str) -> float:
    """Seconds between two calls to one endpoint of the system, by its tightest window; 0 when unlimited."""
    intervals = [seconds / limit * (SAFETY_MARGIN if seconds <= 1 else LONG_WINDOW_MARGIN)
                 for setting, seconds in ENDPOINT_LIMITS.get(system, ())
                 if (limit := float(getattr(settings, setting, 0) or 0)) > 0]
    return max(intervals, default=0.0)


def endpoint_key(system: str, endpoint: str) -> str:
    """The throttle row a call to `endpoint` is paced (and paused) on: its own when the system has
    per-endpoint limits, else the system's."""
    return endpoint[:64] if endpoint and endpoint_interval(system) > 0 else SYSTEM_WIDE


def _rows(system: str, endpoint: str) -> list[tuple[str, float]]:
    rows = []
    rate = max_calls_per_second(system)
    if rate > 0:
        rows.append((SYSTEM_WIDE, SAFETY_MARGIN / rate))
    key = endpoint_key(system, endpoint)
    if key != SYSTEM_WIDE:
        rows.append((key, endpoint_interval(system)))
    return rows


def pace(system: str, endpoint: str = "") -> float:
    """Wait for the next call slot of this endpoint (and of the system, when it has a system-wide rate);
    return the seconds waited (0 when unlimited)."""
    rows = _rows(system, endpoint)
    if not rows:
        return 0.0
    if connection.vendor == "postgresql":
        delay = _take_shared_slots(system, rows)
    else:
        delay = max(_take_local_slot((system, key), interval) for key, interval in rows)
    if delay > 0:
        time.sleep(delay)
    return max(delay, 0.0)


def _take_shared_slots(system: str, rows: list[tuple[str, float]]) -> float:
    """One statement takes a slot in each row; the call waits for the latest of them."""
    table = TargetThrottle._meta.db_table
    values = ", ".join(["(%s, %s::float8)"] * len(rows))
    with _shared.cursor() as cursor:
        cursor.execute(
            f"""
            WITH wanted(endpoint, secs) AS (VALUES {values})
            INSERT INTO {table} AS t (system, endpoint, next_call_at, pause_reason, updated_at)
            SELECT %s, w.endpoint, clock_timestamp() + make_interval(secs => w.secs), '', clock_timestamp()
            FROM wanted w
            ON CONFLICT (system, endpoint) DO UPDATE SET
                next_call_at = GREATEST(t.next_call_at, clock_timestamp(),
                                        COALESCE(t.paused_until, '-infinity'::timestamptz))
                               + make_interval(secs => (SELECT w.secs FROM wanted w
                                                        WHERE w.endpoint = EXCLUDED.endpoint)),
                updated_at = clock_timestamp()
            RETURNING EXTRACT(EPOCH FROM (t.next_call_at - clock_timestamp())) - (
                SELECT w.secs FROM wanted w WHERE w.endpoint = t.endpoint)
            """,
            [value for row in rows for value in row] + [system],
        )
        return max(float(delay) for (delay,) in cursor.fetchall())


def _take_local_slot(key: tuple[str, str], interval: float) -> float:
    with _local_lock:
        now = time.monotonic()
        slot = max(_local_next.get(key, now), now, _local_paused_until.get(key, now))
        _local_next[key] = slot + interval
        return slot - now


_local_paused_until: dict[tuple[str, str], float] = {}


def reset_local_pacing() -> None:
    """Forget the in-process slots and pauses (the SQLite path) and close the shared connection."""
    with _local_lock:
        _local_next.clear()
        _local_paused_until.clear()
    _shared.close()
    shared_connection(DEFAULT_DB_ALIAS).close()


def pause(system: str, seconds: float, reason: str, endpoint: str = "") -> None:
    """The target said slow down: no worker calls this endpoint (the system, without per-endpoint limits)
    again before `seconds` from now."""
    seconds = max(0.0, min(float(seconds), settings.TARGET_MAX_PAUSE_SECONDS))
    key = endpoint_key(system, endpoint)
    logger.warning("pausing calls to %s%s for %.1f s: %s", system, f" {key}" if key else "", seconds, reason)
    if connection.vendor != "postgresql":
        with _local_lock:
            _local_paused_until[(system, key)] = max(_local_paused_until.get((system, key), 0),
                                                     time.monotonic() + seconds)
        return
    until = timezone.now() + dt.timedelta(seconds=seconds)
    throttle, _ = TargetThrottle.objects.get_or_create(system=system, endpoint=key)
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
