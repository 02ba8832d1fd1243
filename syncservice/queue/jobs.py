"""The job lifecycle, once for every kind: claim, lease expiry, release, and results written fenced."""

import datetime as dt
import logging
import uuid
from collections import Counter, defaultdict

from django.db import IntegrityError, OperationalError
from django.db.models import F, Q
from django.utils import timezone

from ..db.locking import atomic_with_retry, current_lease_tokens
from . import engines
from .engines import Claimed, cleared_lease
from .handler import Handler
from .outcomes import JobResult, forgive_lost_claims, settle
from .table import JobTable

logger = logging.getLogger(__name__)


def claim_due(table: JobTable, *, lane=None, limit: int, worker: str, expire: bool = True) -> list[Claimed]:
    """Claim up to `limit` due jobs of a lane in priority order, under one lease token, in a short transaction.

    With `expire`, jobs whose lease ran out are handed back first (the executor does that once a second
    for every lane instead).
    """
    token = uuid.uuid4().hex

    def claim():
        now = timezone.now()
        if expire:
            expire_leases(table, now=now, lane=lane)
        expires = now + dt.timedelta(seconds=table.lease_seconds)
        return engines.engine().claim(table, lane=lane, limit=limit, worker=worker, token=token, now=now,
                                      expires=expires)

    return atomic_with_retry(claim)


def expire_leases(table: JobTable, *, now: dt.datetime, lane=None) -> int:
    """Hand back jobs whose worker's lease ran out (a worker killed mid-call): due again at once, as
    `polling` when the target had accepted the work, else `pending`. The attempt stays counted: whether
    it was lost is judged when the job reaches its limit (forgive_lost_claims)."""
    expired = table.model.objects.filter(table.lane_filter(lane), status=table.running, lease_expires_at__lt=now)
    return expired.update(status=table.handed_back_status(), next_attempt_at=now, **cleared_lease(table, now))


def release(table: JobTable, claimed: list[Claimed]) -> int:
    """Hand claimed but unstarted jobs back (on shutdown), each claim's attempt given back."""
    groups = defaultdict(list)
    for c in claimed:
        groups[c.token, c.counted].append(c.job.pk)
    released = 0
    for (token, counted), ids in groups.items():
        released += table.model.objects.filter(id__in=ids, lease_token=token, status=table.running).update(
            status=table.handed_back_status(), attempts=F("attempts") - int(counted),
            **cleared_lease(table, timezone.now()))
    return released


def due(table: JobTable, now: dt.datetime) -> Q:
    """Jobs a claim would take now, or once their expired lease is handed back."""
    return (Q(status__in=table.ready, next_attempt_at__lte=now)
            | Q(status=table.running, lease_expires_at__lt=now))


def record(handler: Handler, results: list[JobResult], *, worker: str) -> tuple[Counter, int]:
    """Write a batch of results of one kind in one transaction, fenced by each claim's lease token.

    The fence and the write are one statement: a row is written only while it is still running under
    the claim's token (a worker whose lease expired cannot overwrite a newer claim), and only what was
    written goes on to the handler's `after_write`. When `decide` writes elsewhere first, the claims are
    checked before it. Returns the verdicts written and the number of results fenced off.
    """
    table = handler.table

    def write():
        now = timezone.now()
        kept = results
        if handler.writes_before_result(results):
            current = current_lease_tokens(table.model, [r.job.pk for r in results], status=table.running)
            kept = [r for r in results if current.get(r.job.pk) == r.token]
        decided = [(r, handler.decide(r, now)) for r in kept]
        forgive_lost_claims(table, decided)
        settled = [settle(table, r, decision, now) for r, decision in decided]
        written = engines.engine().write_fenced(table, [(s.result.job, s.result.token) for s in settled], now)
        settled = [s for s in settled if s.result.job.pk in written]
        if settled:
            handler.after_write(settled, worker=worker, now=now)
        return Counter(s.verdict.value for s in settled), len(results) - len(settled)

    verdicts, fenced = atomic_with_retry(write, retry_on=(OperationalError, IntegrityError))
    if fenced:
        logger.warning("%d %s result(s) discarded: their lease had expired and they were claimed again",
                       fenced, handler.name)
    return verdicts, fenced
