"""Row claims, advisory locks and retried transactions; they degrade gracefully on SQLite (one worker there)."""

import contextlib
import logging
import time
import zlib

from django.db import OperationalError, connection, transaction
from django.db.models import QuerySet
from django.db.transaction import TransactionManagementError

logger = logging.getLogger(__name__)


def skip_locked(queryset: QuerySet) -> QuerySet:
    """Lock the selected rows of this model, skipping rows another worker holds (PostgreSQL)."""
    if connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True, of=("self",))
    return queryset


def require_transaction(what: str) -> None:
    """For code that locks rows in raw SQL, the check Django's select_for_update makes: on a database with
    row locks, refuse to run in autocommit, where the locks would be released at once and the caller's
    reads and writes would not be protected."""
    if connection.features.has_select_for_update and connection.get_autocommit():
        raise TransactionManagementError(f"{what} locks rows and must run inside a transaction")


def wait_locked(queryset: QuerySet) -> QuerySet:
    """Lock the selected rows of this model, waiting for other holders (PostgreSQL)."""
    if connection.features.has_select_for_update:
        return queryset.select_for_update(of=("self",))
    return queryset


@contextlib.contextmanager
def advisory_lock(name: str):
    """Yield True if this process holds the named lock (PostgreSQL session advisory lock), else False."""
    if connection.vendor != "postgresql":
        yield True
        return
    key = zlib.crc32(name.encode("utf-8"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def atomic_with_retry(func, *, attempts: int = 5, retry_on=(OperationalError,)):
    """Run func() in a transaction, retrying on deadlocks, serialization failures and lost races."""
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic():
                return func()
        except retry_on as exc:
            if attempt == attempts or not _retryable(exc):
                raise
            logger.info("retrying a transaction after %s (attempt %d)", type(exc).__name__, attempt)
            time.sleep(0.01 * attempt)


def _retryable(exc: Exception) -> bool:
    cause = getattr(exc, "__cause__", None)
    pgcode = getattr(cause, "pgcode", None)
    if pgcode is not None:
        # 40P01 deadlock_detected, 40001 serialization_failure, 23505 unique_violation (a lost race).
        return pgcode in {"40P01", "40001", "23505"}
    return "locked" in str(exc) or "UNIQUE" in str(exc)


def current_lease_tokens(model, ids, *, status: str) -> dict:
    """Lock the claimed rows still in `status` and return their lease tokens by id: a result is written only
    when its claim's token is still the row's (a worker whose lease expired cannot overwrite a newer claim)."""
    return dict(model.objects.select_for_update().filter(id__in=ids, status=status).order_by("id")
                .values_list("id", "lease_token"))
