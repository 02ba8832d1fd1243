"""One executor for every kind of job: per-lane thread pools, prefetch, a recorder thread, the main loop.

The main thread claims due jobs of each lane in chunks and keeps a short queue of them ahead of the lane's
threads. The threads call the handler outside any transaction; results come back to the main thread, which
hands them in batches to the recorder, a thread with a connection of its own that writes them (fenced by
the claim's lease token) while the main thread goes on claiming. The lane threads share one more connection
for what they touch in the database: three per worker. On SIGTERM (`stop`) claiming stops, unstarted jobs
are released and calls in flight finish and are recorded.
"""

import contextvars
import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.utils import timezone

from ..db.locking import atomic_with_retry
from ..db.shared import shared_connection
from . import engines, jobs
from .engines import Claimed
from .handler import Handler
from .outcomes import JobResult

logger = logging.getLogger(__name__)

_STOP = object()
LEASE_EXPIRY_INTERVAL = 1.0  # seconds between two hand-backs of expired leases in the main loop


@dataclass
class Tally:
    """What one kind of job did in a run."""

    claimed: int = 0
    by_lane: dict = field(default_factory=dict)
    verdicts: Counter = field(default_factory=Counter)
    fenced_off: int = 0
    released: int = 0


def call_jobs(handler: Handler, lane, batch: list[Claimed]) -> list[JobResult]:
    """Call the handler for a batch of claimed jobs, timed; a handler that raises loses no job."""
    started = timezone.now()
    clock = time.monotonic()
    try:
        outcomes = handler.call(lane, batch)
        if len(outcomes) != len(batch):
            raise RuntimeError(f"{handler.name} answered {len(outcomes)} outcome(s) for {len(batch)} job(s)")
    except Exception as exc:  # a bug must not lose the jobs: record it and try again later
        logger.exception("%s handler raised for job(s) %s", handler.name, [c.job.pk for c in batch])
        outcomes = [handler.crashed(c.job, exc) for c in batch]
    duration_ms = int((time.monotonic() - clock) * 1000)
    return [JobResult(c.job, c.token, c.counted, outcome, started, duration_ms) for c, outcome in zip(batch, outcomes)]


class Lane:
    """A fixed set of threads calling one lane of one kind.

    The threads' database work (a local backend's rows, the outbound slots) runs on the process's one shared
    connection (syncservice.db.shared), so a worker's connection count does not grow with its threads.
    """

    def __init__(self, handler: Handler, name, size: int, results: queue.Queue):
        self.handler, self.name, self.size = handler, name, size
        self.batch = max(1, handler.batch_size(name))
        self.jobs: queue.Queue = queue.Queue()
        self.results = results
        self.in_flight = 0
        self.exhausted = False
        self.call_seconds: float | None = None  # a moving average of a call's duration
        self.threads = self._start_threads()

    def _start_threads(self) -> list[threading.Thread]:
        # Each thread runs in a copy of the stage's context, so its log lines carry the run's id.
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                    name=f"{self.name or self.handler.name}-{i}", daemon=True)
                   for i in range(self.size)]
        for thread in threads:
            thread.start()
        return threads

    def _run(self):
        shared_connection().install()
        try:
            while (batch := self.jobs.get()) is not _STOP:
                self._call(batch)
        finally:
            shared_connection().uninstall()
            connections.close_all()

    def _call(self, batch: list[Claimed]) -> None:
        try:
            results = call_jobs(self.handler, self.name, batch)
        except Exception as exc:  # the handler's crashed() itself failed: the run fails, it must not hang
            self.results.put((self, _LaneFailed(len(batch), exc)))
            return
        for result in results:
            self.results.put((self, result))

    def submit(self, claimed: list[Claimed]) -> None:
        """Queue claimed jobs for the threads, in batches of what one call takes."""
        self.in_flight += len(claimed)
        for start in range(0, len(claimed), self.batch):
            self.jobs.put(claimed[start:start + self.batch])

    def finished(self, result: JobResult) -> None:
        """Count a finished call off and fold its duration into the moving average."""
        self.in_flight -= 1
        seconds = result.duration_ms / 1000
        self.call_seconds = seconds if self.call_seconds is None else 0.8 * self.call_seconds + 0.2 * seconds

    def take_unstarted(self) -> list[Claimed]:
        taken = []
        while True:
            try:
                batch = self.jobs.get_nowait()
            except queue.Empty:
                return taken
            if batch is not _STOP:
                taken.extend(batch)
                self.in_flight -= len(batch)

    def stop(self):
        for _ in self.threads:
            self.jobs.put(_STOP)
        for thread in self.threads:
            thread.join()


class InlineLane(Lane):
    """Where threads may not write beside the main thread (SQLite): calls run in the main thread."""

    def __init__(self, handler: Handler, name, size: int, results: queue.Queue):
        super().__init__(handler, name, 1, results)

    def _start_threads(self) -> list[threading.Thread]:
        return []

    def submit(self, claimed: list[Claimed]) -> None:
        self.in_flight += len(claimed)
        for start in range(0, len(claimed), self.batch):
            self._call(claimed[start:start + self.batch])

    def take_unstarted(self) -> list[Claimed]:
        return []

    def stop(self):
        pass


def prefetch_capacity(lane: Lane, lease_seconds: float) -> int:
    """How many claimed jobs to keep ahead of a lane's threads.

    PROCESS_PREFETCH per thread, but no more than PROCESS_QUEUE_SECONDS of work, judged by the recent
    duration of a call (which includes any wait for the target's rate limit): a queued job waits, and so
    does a higher-priority job arriving behind it; when the backlog runs out, workers with long queues
    finish last while the others idle; and a job must never wait in the queue past its lease (another
    worker would claim it again), so the queue never holds more than a quarter of the lease either.
    Until a call has finished, one job per thread.
    """
    seconds = min(settings.PROCESS_QUEUE_SECONDS, lease_seconds / 4)
    call_seconds = lane.call_seconds
    most = lane.size * lane.batch * settings.PROCESS_PREFETCH
    if call_seconds is None:
        return lane.size * lane.batch
    # Compared as products: the moving average of instant calls decays towards the smallest float, and
    # dividing by it would overflow.
    if lane.size * lane.batch * seconds < most * call_seconds:
        most = int(lane.size * lane.batch * seconds / call_seconds)
    return max(lane.size * lane.batch, most)


@dataclass
class _Written:
    count: int
    error: Exception | None = None


@dataclass
class _LaneFailed:
    count: int
    error: Exception


def record_batch(results: list[JobResult], handlers: dict[str, Handler], tallies: dict[str, Tally],
                 worker: str) -> None:
    """Write results of every kind, one transaction per kind."""
    by_kind = defaultdict(list)
    for result in results:
        by_kind[result.job._meta.label].append(result)
    for label, group in by_kind.items():
        handler = handlers[label]
        verdicts, fenced = jobs.record(handler, group, worker=worker)
        tally = tallies[handler.name]
        tally.verdicts.update(verdicts)
        tally.fenced_off += fenced


class Recorder:
    """Writes batches of results, from a thread of its own when it can.

    The main thread claims while the previous batch is written: both mostly wait on the database, so the
    two overlap instead of adding up. One batch is written at a time; results arriving meanwhile wait in
    the main thread's buffer and go as the next, larger batch. The thread has its own connection, which
    cannot see the caller's uncommitted rows: inside a transaction (and on SQLite) batches are written
    inline instead.
    """

    def __init__(self, *, write, threaded: bool, reports: queue.Queue):
        self.write = write
        self.pending = 0  # results handed over and not reported written yet (main thread's count)
        self.reports = reports  # the main thread's queue: a report wakes it like a call's result does
        self.jobs: queue.Queue | None = None
        self.thread = None
        if threaded:
            self.jobs = queue.Queue()
            self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                           name="recorder", daemon=True)
            self.thread.start()

    def hand_over(self, results: list[JobResult]) -> bool:
        """Queue a batch for the thread, or write it at once; True when it was written here."""
        self.pending += len(results)
        if self.jobs is not None:
            self.jobs.put(results)
            return False
        try:
            self.write(results)
        finally:
            self.pending -= len(results)
        return True

    def _run(self) -> None:
        try:
            while (batch := self.jobs.get()) is not _STOP:
                try:
                    self.write(batch)
                    self.reports.put(_Written(len(batch)))
                except Exception as exc:  # handed to the main thread, which fails the stage with it
                    self.reports.put(_Written(len(batch), exc))
        finally:
            connections.close_all()

    def take(self, report: _Written) -> None:
        """A batch was written (or failed to be, which fails the stage here)."""
        self.pending -= report.count
        if report.error is not None:
            raise report.error

    def stop(self) -> None:
        if self.thread is not None:
            self.jobs.put(_STOP)
            self.thread.join()
            self.thread = None


def run(handlers: list[Handler], *, worker: str, limits: dict[str, int | None] | None = None,
        deadline: float, stop: threading.Event | None = None, flush_size: int = 200,
        flush_interval: float = 0.05) -> dict[str, Tally]:
    """Work through due jobs of every kind until none are due, each kind's limit was claimed, the monotonic
    `deadline` passed or `stop` is set; return what each kind did."""
    limits = limits or {}
    stop = stop or threading.Event()
    for handler in handlers:
        handler.check()  # a misconfigured kind fails the run before anything is claimed
    tallies = {handler.name: Tally() for handler in handlers}
    by_table = {handler.table.name: handler for handler in handlers}
    results: queue.Queue = queue.Queue()
    threaded = engines.engine().concurrent_writers and not connection.in_atomic_block
    lane_class = Lane if engines.engine().concurrent_writers else InlineLane
    lanes = [lane_class(handler, name, max(1, handler.threads(name)), results)
             for handler in handlers for name in handler.lanes()]

    def write(batch):
        record_batch(batch, by_table, tallies, worker)

    recorder = Recorder(write=write, threaded=threaded, reports=results)
    buffer: list[JobResult] = []
    last_flush = time.monotonic()
    next_expiry = 0.0

    def claimable(handler: Handler) -> int | None:
        limit = limits.get(handler.name)
        return None if limit is None else limit - tallies[handler.name].claimed

    try:
        while True:
            may_claim = not stop.is_set() and time.monotonic() < deadline
            if may_claim and time.monotonic() >= next_expiry:
                # Leases of dead workers, every lane at once, and each kind's upkeep, once a second.
                for handler in handlers:
                    atomic_with_retry(lambda: jobs.expire_leases(handler.table, now=timezone.now()))
                    atomic_with_retry(handler.upkeep)
                next_expiry = time.monotonic() + LEASE_EXPIRY_INTERVAL
            capacities = [prefetch_capacity(lane, lane.handler.table.lease_seconds) for lane in lanes]
            # Results not written yet count against the claims: a slow database slows the claiming down.
            if may_claim and len(buffer) + recorder.pending < 2 * sum(capacities):
                for lane, capacity in zip(lanes, capacities):
                    # Keep a queue of claimed jobs ahead of the threads and top it up in chunks: a claim's
                    # round trip is shared by many jobs.
                    free = capacity - lane.in_flight
                    if lane.exhausted or free < max(1, capacity // 2):
                        continue
                    left = claimable(lane.handler)
                    want = free if left is None else min(free, left)
                    most = lane.handler.claim_size(lane.name)
                    want = want if most is None else min(want, most)
                    if want <= 0:
                        continue
                    claimed = jobs.claim_due(lane.handler.table, lane=lane.name, limit=want, worker=worker,
                                             expire=False)
                    lane.exhausted = not claimed
                    lane.submit(claimed)
                    tally = tallies[lane.handler.name]
                    tally.claimed += len(claimed)
                    tally.by_lane[lane.name] = tally.by_lane.get(lane.name, 0) + len(claimed)
            if stop.is_set():
                unstarted = defaultdict(list)
                for lane in lanes:
                    unstarted[lane.handler].extend(lane.take_unstarted())
                for handler, claimed in unstarted.items():
                    tallies[handler.name].released += jobs.release(handler.table, claimed)
            in_flight = sum(lane.in_flight for lane in lanes)
            if in_flight == 0 and not buffer and not recorder.pending:
                done = all(lane.exhausted or claimable(lane.handler) == 0 for lane in lanes)
                if not may_claim or done:
                    break
            written = False
            try:
                item = results.get(timeout=0.2 if in_flight or recorder.pending else 0.01)
                while True:
                    if isinstance(item, _Written):
                        recorder.take(item)
                        written = True
                    else:
                        lane, result = item
                        if isinstance(result, _LaneFailed):
                            lane.in_flight -= result.count
                            raise result.error
                        lane.finished(result)
                        buffer.append(result)
                    item = results.get_nowait()
            except queue.Empty:
                pass
            if buffer and not recorder.pending and (
                    len(buffer) >= flush_size or time.monotonic() - last_flush >= flush_interval
                    or sum(lane.in_flight for lane in lanes) == 0):
                written = recorder.hand_over(buffer) or written
                buffer = []
                last_flush = time.monotonic()
            if written:
                # Retried and polled jobs may be due again already, and written results may have made new
                # jobs (a request that ended queues its notification): let every lane look again.
                for lane in lanes:
                    lane.exhausted = False
    finally:
        # On the way out (a failure included), claimed jobs no thread started go back at once instead of
        # waiting out their lease; calls in flight finish and are written.
        unstarted = defaultdict(list)
        for lane in lanes:
            unstarted[lane.handler].extend(lane.take_unstarted())
        try:
            for handler, claimed in unstarted.items():
                tallies[handler.name].released += jobs.release(handler.table, claimed)
        except DatabaseError:
            logger.warning("could not release %d unstarted job(s); their leases will expire",
                           sum(map(len, unstarted.values())))
        for lane in lanes:
            lane.stop()
        recorder.stop()
        if buffer:
            write(buffer)
    return tallies

