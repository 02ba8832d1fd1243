"""One guard around the calls a lane thread makes to a target: a failure of our own side never loses a job."""

import logging
from collections.abc import Callable

from django.db import DatabaseError, InterfaceError, connection

from ..backends.base import Outcome

logger = logging.getLogger(__name__)


def guarded(system: str, ids: list, call: Callable[[], list[Outcome]], *, what: str = "call") -> list[Outcome]:
    """`call()`'s outcomes, one per job of `ids`; if it raises, the same transient outcome for each.

    A database error (a restart, a dropped connection) is ours, not the target's: one line without a
    traceback, and a fresh connection for the thread's next call instead of a dead one. Anything else is a
    bug in a backend, logged with its traceback and retried later."""
    try:
        return call()
    except (DatabaseError, InterfaceError) as exc:
        message = " ".join(str(exc).split())
        logger.warning("database error during the %s %s for job(s) %s: %s", system, what, ids, message)
        if not connection.in_atomic_block:
            connection.close()
        return [Outcome.transient("database_error", f"{type(exc).__name__}: {message}")] * len(ids)
    except Exception as exc:
        logger.exception("backend %s raised during the %s for job(s) %s", system, what, ids)
        return [Outcome.transient("exception", f"{type(exc).__name__}: {exc}")] * len(ids)
