"""Row claims and retried transactions; they degrade gracefully on SQLite (one worker there). Held slots: leases.py."""

import logging
import time

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


def no_jit() -> None:
    """Switch PostgreSQL's JIT compilation off for the rest of the current transaction (`SET LOCAL`).

    The service's statements are short and run thousands of times. The row estimates of its batch statements
    (a lookup per element of an array parameter) are enough to switch JIT on, which then costs tens of
    milliseconds per statement and saves nothing. Set per transaction, not per session: a session setting
    would not follow the statements behind PgBouncer in transaction pooling mode (or `ALTER ROLE … SET jit =
    off`, docs/deployment.md)."""
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")


def atomic_with_retry(func, *, attempts: int = 5, retry_on=(OperationalError,)):
    """Run func() in a transaction without JIT, retrying on deadlocks, serialization failures and lost races."""
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic():
                no_jit()
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
