"""What a call's outcome does to its job: the one place that moves `attempts`, statuses and retry times.

A claim counts an attempt before the call, except a poll of work the target had already accepted. From
there a result decides: success and failure end the job; a retry waits a capped exponential backoff with
jitter (never shorter than the target's Retry-After) and fails the job for good once its attempts are used
up; a deferral (a rate-limit answer, an address given up to another person) waits without using one.
A claim that ends without a result gives its attempt back: see jobs.release and forgive_lost_claims.
"""

import datetime as dt
import enum
import random
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Count

from .table import JobTable


def backoff_delay(attempts: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Capped exponential backoff with jitter, never shorter than what the other side asked for."""
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    delay *= 0.5 + random.random() / 2
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def table_backoff_delay(table: JobTable, attempts: int, retry_after: float | None = None) -> float:
    return backoff_delay(attempts, base=getattr(settings, table.retry_base_setting),
                         cap=getattr(settings, table.retry_cap_setting), retry_after=retry_after)


class Verdict(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    WAITING = "waiting"
    FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    """A handler's judgement of one result; `settle` turns it into the job's new row."""

    verdict: Verdict
    code: str = ""
    message: str = ""
    delay: float | None = None         # seconds until the job is due again (waiting, deferred)
    retry_after: float | None = None   # what the other side asked for (a retry)
    counts: bool = True                # False: this claim gives its attempt back

    @classmethod
    def succeeded(cls) -> "Decision":
        return cls(Verdict.SUCCEEDED)

    @classmethod
    def failed(cls, code: str, message: str) -> "Decision":
        return cls(Verdict.FAILED, code, message)

    @classmethod
    def retry(cls, code: str, message: str, *, retry_after: float | None = None) -> "Decision":
        """Worth another attempt, after a backoff, while attempts are left; failed for good after the last."""
        return cls(Verdict.RETRIED, code, message, retry_after=retry_after)

    @classmethod
    def defer(cls, code: str, message: str, *, delay: float) -> "Decision":
        """Not this job's failure (slow down, go again with another address): wait without using an attempt."""
        return cls(Verdict.RETRIED, code, message, delay=delay, counts=False)

    @classmethod
    def wait(cls, *, delay: float) -> "Decision":
        """The other side accepted the work and finishes it later: poll again after `delay`."""
        return cls(Verdict.WAITING, delay=delay)


@dataclass
class JobResult:
    """One claimed job and what its call answered (the handler's own outcome type)."""

    job: models.Model
    token: str
    counted: bool         # the claim counted an attempt (it was not a poll)
    outcome: Any
    started_at: dt.datetime
    duration_ms: int


@dataclass
class Settled:
    result: JobResult
    verdict: Verdict
    attempt_number: int   # the attempt this call was, as counted before the result


def settle(table: JobTable, result: JobResult, decision: Decision, now: dt.datetime) -> Settled:
    """Apply a decision to the job in memory: status, attempts, due time and error columns."""
    job = result.job
    number = job.attempts
    if not decision.counts and result.counted:
        job.attempts -= 1
    verdict = decision.verdict
    message = decision.message
    if verdict == Verdict.WAITING and table.polling is None:
        raise ValueError(f"{table.name} has no polling status: a result cannot wait")
    if verdict == Verdict.RETRIED and decision.counts:
        if job.attempts >= job.max_attempts:
            verdict, message = Verdict.FAILED, f"gave up after {job.attempts} attempts: {decision.message}"
        else:
            decision_delay = table_backoff_delay(table, job.attempts, decision.retry_after)
            job.next_attempt_at = now + dt.timedelta(seconds=decision_delay)
    elif verdict == Verdict.RETRIED:
        job.next_attempt_at = now + dt.timedelta(seconds=decision.delay or 0)
    if verdict == Verdict.WAITING:
        job.status = table.polling
        job.next_attempt_at = now + dt.timedelta(seconds=decision.delay or 0)
        return Settled(result, verdict, number)
    # A deferred poll stays a poll: its next claim must not count an attempt either.
    again = table.polling if (table.polling and not result.counted and not decision.counts) else table.pending
    job.status = {Verdict.SUCCEEDED: table.succeeded, Verdict.FAILED: table.failed, Verdict.RETRIED: again}[verdict]
    setattr(job, table.error_field, message)
    if table.error_code_field:
        setattr(job, table.error_code_field, decision.code)
    if table.finished_field and verdict in (Verdict.SUCCEEDED, Verdict.FAILED):
        setattr(job, table.finished_field, now)
    return Settled(result, verdict, number)


def forgive_lost_claims(table: JobTable, decided: list[tuple[JobResult, Decision]]) -> None:
    """Give back the attempts of claims whose worker died before recording anything (kill -9, a lost lease).

    A claim counts an attempt before the call; a worker killed before it recorded the outcome leaves that
    attempt counted with no row in the attempt log, and prefetched jobs it never even called lose one too.
    Only a retry at the attempt limit is judged by the count (it would fail the job), so only those are
    looked at: the claims without a row are given back, at most `max_attempts` of them, so that a job that
    kills every worker that takes it still ends. Tables without an attempt log keep their counts.
    """
    if table.attempt_log is None:
        return
    at_limit = [r.job for r, d in decided
                if d.verdict == Verdict.RETRIED and d.counts and r.job.attempts >= r.job.max_attempts]
    if not at_limit:
        return
    log_model, key = table.attempt_log
    recorded = dict(log_model.objects.filter(**{f"{key}_id__in": [job.pk for job in at_limit]})
                    .values(f"{key}_id").annotate(n=Count("id")).values_list(f"{key}_id", "n"))
    for job in at_limit:
        lost = job.attempts - 1 - recorded.get(job.pk, 0)  # this call's attempt has no row yet
        job.attempts -= max(0, min(lost, job.max_attempts))
