"""Stage 3, process_account_creation_tasks: claim due tasks, call the targets, record and roll up.

A worker claims due tasks in small batches (SELECT … FOR UPDATE SKIP LOCKED in a short transaction),
marking them running under a lease. Per target system a fixed set of threads calls the backends, outside
any transaction. Results are written back in batches, fenced by the claim's lease token: a worker whose
lease expired and whose task was claimed again cannot overwrite the newer claim's outcome.
"""

import contextvars
import datetime as dt
import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, connection, connections
from django.db.models import Case, Count, F, Q, Value, When
from django.utils import timezone

from ..backends import get_backend
from ..backends.base import Outcome, OutcomeKind, PersonSnapshot
from ..models import Account, AccountCreationTask, TaskAttempt
from .bulk import bulk_insert_rows, bulk_update_rows
from .email_reallocation import person_reallocate_email
from .lifecycle import stop_retries_of_cancelled_requests
from .locking import atomic_with_retry, current_lease_tokens, skip_locked
from .pacing import concurrency_slot
from .notifications import deliver_due_notifications
from .rollup import reconcile_processing_requests, rollup_items_for_persons

logger = logging.getLogger(__name__)

Task = AccountCreationTask
_STOP = object()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Capped exponential backoff with jitter, never shorter than what the target asked for."""
    base = settings.TASK_RETRY_BASE_SECONDS
    cap = settings.TASK_RETRY_MAX_SECONDS
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    delay = delay * (0.5 + random.random() / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def _due(now):
    return (Q(status__in=[Task.Status.PENDING, Task.Status.WAITING], next_attempt_at__lte=now)
            | Q(status=Task.Status.RUNNING, lease_expires_at__lt=now))


def _handed_back_status():
    """Back to `waiting` when the target had accepted an asynchronous create (a poll is due), else `pending`."""
    return Case(When(backend_state__has_key="submitted", then=Value(Task.Status.WAITING)),
                default=Value(Task.Status.PENDING))


def expire_leases(*, system: str, now) -> int:
    """Hand back tasks whose worker's lease ran out (a worker killed mid-call): due again at once, as
    `waiting` when the target had accepted an asynchronous create, else `pending`."""
    return Task.objects.filter(system=system, status=Task.Status.RUNNING, lease_expires_at__lt=now).update(
        status=_handed_back_status(), locked_by="", lease_token="", lease_expires_at=None, next_attempt_at=now,
        updated_at=now,
    )


def claim_due_tasks(*, system: str, limit: int, worker: str) -> tuple[str, list[Task]]:
    """Claim up to `limit` due tasks of one system; return the claim's lease token and the tasks."""
    token = uuid.uuid4().hex

    def claim():
        now = timezone.now()
        expire_leases(system=system, now=now)
        # Only pending and waiting rows: the claim index (task_due) serves this in order, whatever the backlog.
        tasks = list(
            skip_locked(Task.objects.filter(system=system, status__in=[Task.Status.PENDING, Task.Status.WAITING],
                                            next_attempt_at__lte=now)
                        .select_related("person").order_by("-priority", "next_attempt_at", "id"))[:limit]
        )
        if not tasks:
            return []
        # A poll of an async job is not a new attempt; a fresh call (or one after a lost lease) is.
        Task.objects.filter(id__in=[t.id for t in tasks]).update(
            status=Task.Status.RUNNING, locked_by=worker, lease_token=token,
            lease_expires_at=now + dt.timedelta(seconds=settings.TASK_LEASE_SECONDS),
            attempts=Case(When(status=Task.Status.WAITING, then=F("attempts")), default=F("attempts") + 1),
            updated_at=now,
        )
        for task in tasks:
            if task.status != Task.Status.WAITING:
                task.attempts += 1
        return tasks

    return token, atomic_with_retry(claim)


def snapshot(task: Task) -> PersonSnapshot:
    person = task.person
    department = person.person_dept[0] if person.person_dept else {}
    return PersonSnapshot(
        person_pk=person.pk, person_id=person.person_id, employee_number=person.employee_number,
        full_name=person.full_name, email=person.email or "", phone_number=person.telephone_number1,
        department_code=(department or {}).get("department_code", ""), person_type=person.person_type,
        departments=list(person.person_dept or []),
    )


@dataclass
class CallResult:
    task: Task
    token: str
    outcome: Outcome
    started_at: object
    duration_ms: int


@dataclass
class ProcessResult:
    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    waiting: int = 0
    failed: int = 0
    fenced_off: int = 0
    released: int = 0
    notifications_delivered: int = 0
    notifications_failed: int = 0
    by_system: dict = field(default_factory=dict)

    def as_counts(self) -> dict:
        return dict(self.__dict__)


def call_backend(task: Task, token: str) -> CallResult:
    started = timezone.now()
    clock = time.monotonic()
    try:
        with concurrency_slot(task.system) as acquired:
            if acquired:
                outcome = get_backend(task.system).ensure_account(snapshot(task), dict(task.backend_state or {}))
            else:
                outcome = Outcome.transient("slot_busy", f"no free {task.system} call slot across the workers "
                                                         f"within {settings.TARGET_SLOT_WAIT_SECONDS:g} s")
    except DatabaseError as exc:
        # Our database failed (a restart, a dropped connection), not the target: one line, no traceback per
        # task, and a fresh connection for this thread's next call instead of a dead one.
        message = " ".join(str(exc).split())
        logger.warning("database error during the %s call for task %s: %s", task.system, task.pk, message)
        if not connection.in_atomic_block:
            connection.close()
        outcome = Outcome.transient("database_error", f"{type(exc).__name__}: {message}")
    except Exception as exc:  # a backend bug must not lose the task: record it and retry later
        logger.exception("backend %s raised for task %s", task.system, task.pk)
        outcome = Outcome.transient("exception", f"{type(exc).__name__}: {exc}")
    return CallResult(task, token, outcome, started, int((time.monotonic() - clock) * 1000))


def _apply(result: CallResult, now, worker: str) -> tuple[str, TaskAttempt]:
    """Update the task in memory for its outcome; return the kind of result and the attempt row."""
    task, outcome = result.task, result.outcome
    attempt_number = task.attempts
    if outcome.state is not None:
        task.backend_state = outcome.state
    task.locked_by = ""
    task.lease_token = ""
    task.lease_expires_at = None
    task.updated_at = now
    kind = outcome.kind
    if kind in (OutcomeKind.CREATED, OutcomeKind.LINKED):
        task.status = Task.Status.SUCCEEDED
        task.finished_at = now
        task.last_error_code = task.last_error = ""
        verdict = "succeeded"
    elif kind == OutcomeKind.IN_PROGRESS:
        submitted = task.backend_state.setdefault("submitted_at", now.isoformat())
        age = (now - dt.datetime.fromisoformat(submitted)).total_seconds()
        if age > settings.TASK_ASYNC_TIMEOUT_SECONDS:
            task.status = Task.Status.FAILED
            task.finished_at = now
            task.last_error_code = "async_timeout"
            task.last_error = f"still in progress at the target after {int(age)} s: {outcome.message}"
            verdict = "failed"
        else:
            task.status = Task.Status.WAITING
            task.next_attempt_at = now + dt.timedelta(
                seconds=outcome.retry_after or settings.TASK_ASYNC_POLL_SECONDS)
            verdict = "waiting"
    elif kind == OutcomeKind.PERMANENT and _reallocate_email(task, outcome):
        # The address belongs to someone else at the mail system: the person got the next free candidate
        # and the task goes again at once, without using up an attempt.
        task.attempts -= 1
        verdict = _retry_at(task, outcome, now)
    elif kind == OutcomeKind.TRANSIENT and outcome.rate_limited and \
            task.backend_state.get("rate_limited", 0) < settings.TASK_MAX_RATE_LIMIT_DEFERRALS:
        # "Slow down" is not a failure of this task: it keeps its attempt and waits its turn.
        task.backend_state["rate_limited"] = task.backend_state.get("rate_limited", 0) + 1
        task.attempts -= 1
        verdict = _retry_at(task, outcome, now + dt.timedelta(seconds=outcome.retry_after or 1.0))
    elif kind == OutcomeKind.TRANSIENT and task.attempts < task.max_attempts:
        delay = retry_delay(task.attempts, outcome.retry_after)
        verdict = _retry_at(task, outcome, now + dt.timedelta(seconds=delay))
    else:
        task.status = Task.Status.FAILED
        task.finished_at = now
        task.last_error_code, task.last_error = outcome.code, outcome.message
        if kind == OutcomeKind.TRANSIENT:
            task.last_error = f"gave up after {task.attempts} attempts: {outcome.message}"
        verdict = "failed"
    attempt = TaskAttempt(
        task_id=task.pk, attempt_number=attempt_number, outcome=kind.value, code=outcome.code[:64],
        message=outcome.message, duration_ms=result.duration_ms, worker=worker, started_at=result.started_at,
    )
    return verdict, attempt


def _retry_at(task: Task, outcome: Outcome, when) -> str:
    task.status = Task.Status.PENDING
    task.next_attempt_at = when
    task.last_error_code, task.last_error = outcome.code, outcome.message
    return "retried"


def _reallocate_email(task: Task, outcome: Outcome) -> bool:
    """Move the person to their next email candidate when the mail system refused the current one."""
    state = outcome.state or {}
    refused = state.get("refused_emails") or []
    if not state.get("reallocate_email") or len(refused) > settings.EMAIL_MAX_REALLOCATIONS:
        return False
    person_reallocate_email(person_pk=task.person_id, taken_email=state.get("taken_email", ""), refused=refused)
    task.backend_state = {k: v for k, v in state.items() if k not in ("reallocate_email", "taken_email")}
    return True


ATTEMPT_FIELDS = ["task", "attempt_number", "outcome", "code", "message", "duration_ms", "worker", "started_at"]
TASK_RESULT_FIELDS = ["status", "attempts", "backend_state", "locked_by", "lease_token", "lease_expires_at",
                      "updated_at", "finished_at", "next_attempt_at", "last_error_code", "last_error"]


def forgive_lost_claims(results: list[CallResult]) -> None:
    """Give back the attempts of claims whose worker died before recording anything (kill -9, a lost lease).

    A claim counts an attempt before the call; a worker killed before it recorded the outcome leaves that
    attempt counted with no TaskAttempt row, and prefetched tasks it never even called lose one too. Only a
    transient failure at the attempt limit is judged by the count, so only those are looked at: the claims
    without a row are given back, at most `max_attempts` of them, so that a task that kills every worker
    that takes it still ends.
    """
    at_limit = [r.task for r in results
                if r.outcome.kind == OutcomeKind.TRANSIENT and r.task.attempts >= r.task.max_attempts]
    if not at_limit:
        return
    recorded = dict(TaskAttempt.objects.filter(task_id__in=[t.pk for t in at_limit]).values("task_id")
                    .annotate(n=Count("id")).values_list("task_id", "n"))
    for task in at_limit:
        lost = task.attempts - 1 - recorded.get(task.pk, 0)  # this call's attempt has no row yet
        task.attempts -= max(0, min(lost, task.max_attempts))


def record_results(results: list[CallResult], *, worker: str, totals: ProcessResult) -> None:
    """Write a batch of call results in one transaction, fenced by each claim's lease token."""
    def write():
        now = timezone.now()
        current = current_lease_tokens(Task, [r.task.pk for r in results], status=Task.Status.RUNNING)
        kept = [r for r in results if current.get(r.task.pk) == r.token]
        verdicts, attempts = [], []
        for result in kept:
            verdict, attempt = _apply(result, now, worker)
            verdicts.append(verdict)
            attempts.append(attempt)
        if kept:
            bulk_update_rows([r.task for r in kept], TASK_RESULT_FIELDS)
            bulk_insert_rows(attempts, ATTEMPT_FIELDS)
            _update_accounts(kept, now)
            stopped = stop_retries_of_cancelled_requests(
                [r.task.pk for r in kept if r.task.status == Task.Status.PENDING])
            rollup_items_for_persons(stopped | {r.task.person_id for r in kept if r.task.status in
                                                (Task.Status.SUCCEEDED, Task.Status.FAILED)})
        return verdicts, len(results) - len(kept)

    forgive_lost_claims(results)
    verdicts, fenced = atomic_with_retry(write, retry_on=(OperationalError, IntegrityError))
    for verdict in verdicts:
        setattr(totals, verdict, getattr(totals, verdict) + 1)
    totals.fenced_off += fenced
    if fenced:
        logger.warning("%d result(s) discarded: their lease had expired and the tasks were claimed again", fenced)


def _update_accounts(results: list[CallResult], now) -> None:
    final = [r for r in results if r.task.status in (Task.Status.SUCCEEDED, Task.Status.FAILED)]
    if not final:
        return
    ids = {
        (person_id, system): pk
        for pk, person_id, system in Account.objects.filter(
            person_id__in={r.task.person_id for r in final}, system__in={r.task.system for r in final},
        ).values_list("id", "person_id", "system")
    }
    changed = []
    for result in final:
        task = result.task
        pk = ids.get((task.person_id, task.system))
        if pk is None:
            continue
        if task.status == Task.Status.SUCCEEDED:
            changed.append(Account(pk=pk, status=Account.Status.CREATED, external_id=result.outcome.external_id[:255],
                                   error_message="", provisioned_at=now, updated_at=now))
        else:
            message = f"[{task.last_error_code}] {task.last_error}" if task.last_error_code else task.last_error
            changed.append(Account(pk=pk, status=Account.Status.FAILED, external_id="", error_message=message,
                                   provisioned_at=None, updated_at=now))
    bulk_update_rows(changed, ["status", "external_id", "error_message", "provisioned_at", "updated_at"])


def release_tasks(tasks: list[tuple[Task, str]]) -> int:
    """Hand claimed but unstarted tasks back (on shutdown): pending again, the claim's attempt undone."""
    if not tasks:
        return 0
    condition = Q()
    for task, token in tasks:
        condition |= Q(id=task.pk, lease_token=token)
    return Task.objects.filter(condition, status=Task.Status.RUNNING).update(
        status=_handed_back_status(),
        attempts=Case(When(backend_state__has_key="submitted", then=F("attempts")), default=F("attempts") - 1),
        locked_by="", lease_token="", lease_expires_at=None, updated_at=timezone.now(),
    )


class SystemWorkers:
    """A fixed set of threads calling one target system; each closes its own database connections."""

    def __init__(self, system: str, size: int, results: queue.Queue):
        self.system = system
        self.size = size
        self.jobs: queue.Queue = queue.Queue()
        self.results = results
        self.in_flight = 0
        # Each thread runs in a copy of the stage's context, so its log lines carry the run's id.
        self.threads = [threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                         name=f"{system}-{i}", daemon=True) for i in range(size)]
        for thread in self.threads:
            thread.start()

    def _run(self):
        try:
            while True:
                job = self.jobs.get()
                if job is _STOP:
                    return
                task, token = job
                self.results.put(call_backend(task, token))
        finally:
            connections.close_all()

    def submit(self, task: Task, token: str) -> None:
        self.in_flight += 1
        self.jobs.put((task, token))

    def take_unstarted(self) -> list[tuple[Task, str]]:
        taken = []
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return taken
            if job is not _STOP:
                taken.append(job)
                self.in_flight -= 1

    def stop(self):
        for _ in self.threads:
            self.jobs.put(_STOP)
        for thread in self.threads:
            thread.join()


class InlineWorkers:
    """SQLite cannot write from several connections at once: call the backend in the stage's own thread."""

    def __init__(self, system: str, results: queue.Queue):
        self.system = system
        self.size = 1
        self.results = results
        self.in_flight = 0

    def submit(self, task: Task, token: str) -> None:
        self.in_flight += 1
        self.results.put(call_backend(task, token))

    def take_unstarted(self) -> list[tuple[Task, str]]:
        return []

    def stop(self):
        pass


def make_workers(system: str, results: queue.Queue):
    if connection.vendor == "sqlite":
        return InlineWorkers(system, results)
    return SystemWorkers(system, max(1, settings.BACKEND_CONCURRENCY.get(system, 4)), results)


def run_process_stage(*, dry_run: bool = False, limit: int | None = None, max_seconds: float | None = None,
                      stop: threading.Event | None = None, worker: str | None = None,
                      flush_size: int = 200, flush_interval: float = 0.05) -> ProcessResult:
    """Work through due tasks until none are due, `limit` tasks were claimed, time is up or `stop` is set."""
    totals = ProcessResult()
    systems = list(settings.PROVISIONING_SYSTEMS)
    if dry_run:
        now = timezone.now()
        for system in systems:
            totals.by_system[system] = Task.objects.filter(_due(now), system=system).count()
        totals.claimed = sum(totals.by_system.values())
        return totals
    for system in systems:
        get_backend(system)  # a misconfigured backend fails the stage before anything is claimed
    worker = worker or worker_name()
    stop = stop or threading.Event()
    deadline = time.monotonic() + (max_seconds or settings.PROCESS_STAGE_MAX_SECONDS)
    results: queue.Queue = queue.Queue()
    pools = {system: make_workers(system, results) for system in systems}
    exhausted = set()
    buffer: list[CallResult] = []
    last_flush = time.monotonic()
    try:
        while True:
            may_claim = not stop.is_set() and time.monotonic() < deadline and (
                limit is None or totals.claimed < limit)
            if may_claim:
                for system, pool in pools.items():
                    # Keep a queue of claimed tasks ahead of the threads (PROCESS_PREFETCH per thread) and
                    # top it up in chunks: a claim's round trips are shared by many tasks.
                    capacity = pool.size * settings.PROCESS_PREFETCH
                    free = capacity - pool.in_flight
                    if system in exhausted or free < max(1, capacity // 2):
                        continue
                    want = free if limit is None else min(free, limit - totals.claimed)
                    if want <= 0:
                        continue
                    token, tasks = claim_due_tasks(system=system, limit=want, worker=worker)
                    if not tasks:
                        exhausted.add(system)
                    for task in tasks:
                        pool.submit(task, token)
                    totals.claimed += len(tasks)
                    totals.by_system[system] = totals.by_system.get(system, 0) + len(tasks)
            in_flight = sum(p.in_flight for p in pools.values())
            if stop.is_set():
                unstarted = [job for pool in pools.values() for job in pool.take_unstarted()]
                totals.released += release_tasks(unstarted)
                in_flight = sum(p.in_flight for p in pools.values())
            if in_flight == 0 and not buffer:
                if not may_claim or len(exhausted) == len(pools):
                    break
            try:
                result = results.get(timeout=0.2 if in_flight else 0.01)
                pools[result.task.system].in_flight -= 1
                buffer.append(result)
                while True:
                    result = results.get_nowait()
                    pools[result.task.system].in_flight -= 1
                    buffer.append(result)
            except queue.Empty:
                pass
            if buffer and (len(buffer) >= flush_size or time.monotonic() - last_flush >= flush_interval
                           or sum(p.in_flight for p in pools.values()) == 0):
                record_results(buffer, worker=worker, totals=totals)
                # Retried and polled tasks may be due again already: let every system look again.
                exhausted.clear()
                buffer = []
                last_flush = time.monotonic()
    finally:
        for pool in pools.values():
            pool.stop()
        if buffer:
            record_results(buffer, worker=worker, totals=totals)
    atomic_with_retry(reconcile_processing_requests)
    if not stop.is_set():  # on SIGTERM the outbox waits for the next run
        notified = deliver_due_notifications(worker=worker)
        totals.notifications_delivered = notified["delivered"]
        totals.notifications_failed = notified["failed"]
    return totals
