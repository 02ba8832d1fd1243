"""A kind of job: what to call for claimed jobs and how each outcome maps onto rows."""

import datetime as dt

from .engines import Claimed
from .outcomes import Decision, JobResult, Settled
from .table import JobTable


class Handler:
    """Base class of a kind of job; the queue and the executor run any subclass unchanged.

    `call` runs in one of a lane's threads, outside any transaction; it gets up to `batch_size(lane)`
    jobs at once and answers with one outcome per job, in order (a vendor's bulk call answers per person).
    `decide` and `after_write` run in the transaction that writes a batch of results.
    """

    name: str = ""
    table: JobTable

    def lanes(self) -> list:
        """The lanes the queue is split into (each gets its own threads), e.g. target systems."""
        return [None]

    def threads(self, lane) -> int:
        return 1

    def batch_size(self, lane) -> int:
        """How many claimed jobs one call may take."""
        return 1

    def claim_size(self, lane) -> int | None:
        """The most jobs one claim takes for this lane (None: as many as the prefetch allows)."""
        return None

    def check(self) -> None:
        """Raise before anything is claimed when the kind cannot run (a misconfigured backend)."""

    def call(self, lane, jobs: list[Claimed]) -> list:
        """Do the work of the jobs; never touch the database; return one outcome per job, in order."""
        raise NotImplementedError("subclasses of Handler must provide call()")

    def crashed(self, job, exc: Exception):
        """The outcome of a job whose call raised (a bug in `call`): it must not lose the job."""
        raise NotImplementedError("subclasses of Handler must provide crashed()")

    def decide(self, result: JobResult, now: dt.datetime) -> Decision:
        """Judge one result; may set the handler's own columns on the job (those in table.result_fields)."""
        raise NotImplementedError("subclasses of Handler must provide decide()")

    def writes_before_result(self, results: list[JobResult]) -> bool:
        """True when `decide` writes other rows for some of these results: the claims are checked first."""
        return False

    def after_write(self, settled: list[Settled], *, worker: str, now: dt.datetime) -> None:
        """Rows that follow the results actually written (logs, accounts, roll-ups), same transaction."""

    def upkeep(self) -> None:
        """The kind's own housekeeping, once a second in the executor's loop, in a transaction of its own."""
