"""Stage 3, process_account_creation_tasks: claim due tasks, call the targets, record and roll up.

A worker claims due tasks in small batches (SELECT … FOR UPDATE SKIP LOCKED in a short transaction),
marking them running under a lease. Per target system a fixed set of threads calls the backends, outside
any transaction. Results are written back in batches, fenced by the claim's lease token: a worker whose
lease expired and whose task was claimed again cannot overwrite the newer claim's outcome.
"""

import contextvars
import datetime as dt
import json
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
from django.db import DatabaseError, IntegrityError, OperationalError, connection, connections, models
from django.db.models import Case, Count, F, Q, Value, When
from django.db.models.base import ModelState
from django.utils import timezone

from ..backends import get_backend
from ..backends.base import Outcome, OutcomeKind, PersonSnapshot
from ..models import Account, AccountCreationTask, HrPerson, TaskAttempt
from .bulk import insert_from_arrays, update_from_arrays
from .email_reallocation import person_reallocate_email
from .lifecycle import stop_retries_of_cancelled_requests
from .locking import atomic_with_retry, current_lease_tokens, skip_locked
from .pacing import concurrency_slot
from .notifications import deliver_due_notifications
from .rollup import reconcile_processing_requests, rollup_items_for_persons

logger = logging.getLogger(__name__)

Task = AccountCreationTask
_STOP = object()
LEASE_EXPIRY_INTERVAL = 1.0  # seconds between two hand-backs of expired leases in a worker's loop


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


def expire_leases(*, now, system: str | None = None) -> int:
    """Hand back tasks whose worker's lease ran out (a worker killed mid-call): due again at once, as
    `waiting` when the target had accepted an asynchronous create, else `pending`."""
    expired = Task.objects.filter(status=Task.Status.RUNNING, lease_expires_at__lt=now)
    if system is not None:
        expired = expired.filter(system=system)
    return expired.update(
        status=_handed_back_status(), locked_by="", lease_token="", lease_expires_at=None, next_attempt_at=now,
        updated_at=now,
    )


# What a claim loads: every task column, and the person columns snapshot() reads.
_TASK_FIELDS = [f.attname for f in Task._meta.concrete_fields]
_SNAPSHOT_FIELDS = {"id", "person_id", "employee_number", "full_name", "email", "telephone_number1", "person_type",
                    "person_dept"}
_PERSON_FIELDS = [f.attname for f in HrPerson._meta.concrete_fields if f.attname in _SNAPSHOT_FIELDS]


def claim_due_tasks(*, system: str, limit: int, worker: str, expire: bool = True) -> tuple[str, list[Task]]:
    """Claim up to `limit` due tasks of one system; return the claim's lease token and the tasks.

    With `expire`, tasks whose lease ran out are handed back first (a worker's main loop does that once
    a second for every system instead).
    """
    token = uuid.uuid4().hex

    def claim():
        now = timezone.now()
        if expire:
            expire_leases(system=system, now=now)
        lease = dict(worker=worker, token=token, now=now,
                     expires=now + dt.timedelta(seconds=settings.TASK_LEASE_SECONDS))
        if connection.vendor == "postgresql":
            return _claim_in_one_statement(system, limit, **lease)
        return _claim_with_orm(system, limit, **lease)

    return token, atomic_with_retry(claim)


def _claim_with_orm(system: str, limit: int, *, worker, token, now, expires) -> list[Task]:
    tasks = list(
        skip_locked(Task.objects.filter(system=system, status__in=[Task.Status.PENDING, Task.Status.WAITING],
                                        next_attempt_at__lte=now)
                    .select_related("person").order_by("-priority", "next_attempt_at", "id"))[:limit]
    )
    if not tasks:
        return []
    # A poll of an async job is not a new attempt; a fresh call (or one after a lost lease) is.
    Task.objects.filter(id__in=[t.id for t in tasks]).update(
        status=Task.Status.RUNNING, locked_by=worker, lease_token=token, lease_expires_at=expires,
        attempts=Case(When(status=Task.Status.WAITING, then=F("attempts")), default=F("attempts") + 1),
        updated_at=now,
    )
    for task in tasks:
        if task.status != Task.Status.WAITING:
            task.attempts += 1
        task.status, task.locked_by, task.lease_token = Task.Status.RUNNING, worker, token
        task.lease_expires_at, task.updated_at = expires, now
    return tasks


def _claim_in_one_statement(system: str, limit: int, *, worker, token, now, expires) -> list[Task]:
    """Pick, lock and mark the due tasks, and read their persons, in one round trip.

    Only pending and waiting rows are picked: the claim index (task_due) serves this in order, whatever
    the backlog. The picked ids are then looked up as `= ANY(ARRAY(…))`, an index condition, rather than
    joined (PostgreSQL would hash the whole table for a join of a few hundred rows). A poll of an async
    job is not a new attempt; a fresh call (or one after a lost lease) is.
    """
    task_table, person_table = Task._meta.db_table, HrPerson._meta.db_table
    task_columns = ", ".join(f't."{Task._meta.get_field(name).column}"' for name in _TASK_FIELDS)
    person_columns = ", ".join(f'p."{name}"' for name in _PERSON_FIELDS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""WITH picked AS (
                    SELECT id FROM "{task_table}"
                    WHERE system = %s AND status IN ('pending', 'waiting') AND next_attempt_at <= %s
                    ORDER BY priority DESC, next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED
                ), claimed AS (
                    UPDATE "{task_table}" t SET status = 'running', locked_by = %s, lease_token = %s,
                        lease_expires_at = %s, updated_at = %s,
                        attempts = CASE WHEN t.status = 'waiting' THEN t.attempts ELSE t.attempts + 1 END
                    WHERE t.id = ANY(ARRAY(SELECT id FROM picked)) RETURNING t.*
                ), persons AS (
                    SELECT {person_columns} FROM "{person_table}" p
                    WHERE p.id = ANY(ARRAY(SELECT person_id FROM claimed))
                )
                SELECT {task_columns}, {person_columns} FROM claimed t JOIN persons p ON p.id = t.person_id
                ORDER BY t.priority DESC, t.next_attempt_at, t.id""",
            [system, now, limit, worker, token, expires, now],
        )
        rows = cursor.fetchall()
    return [_task_from_row(row) for row in rows]


_TASK_JSON = _TASK_FIELDS.index("backend_state")
_PERSON_JSON = _PERSON_FIELDS.index("person_dept")
_person_cache = Task.person.field.set_cached_value


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _loaded(model, attnames: list[str], values) -> models.Model:
    """A model instance as the ORM would load it from a row, built without Model.__init__ (a claim builds
    thousands a second; __init__ walks every field). Fields not given are deferred, as with .only()."""
    obj = model.__new__(model)
    obj.__dict__.update(zip(attnames, values))
    obj._state = ModelState()
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


def _task_from_row(row) -> Task:
    n = len(_TASK_FIELDS)
    task_values, person_values = list(row[:n]), list(row[n:])
    # psycopg2 hands jsonb over as text (Django decodes it in from_db_value, which is skipped here).
    task_values[_TASK_JSON] = _json(task_values[_TASK_JSON])
    person_values[_PERSON_JSON] = _json(person_values[_PERSON_JSON])
    task = _loaded(Task, _TASK_FIELDS, task_values)
    _person_cache(task, _loaded(HrPerson, _PERSON_FIELDS, person_values))
    return task


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


def _apply(result: CallResult, now) -> tuple[str, int]:
    """Update the task in memory for its outcome; return the kind of result and the attempt's number."""
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
    return verdict, attempt_number


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


# What a result writes per task; the lease columns and updated_at are the same for every row.
TASK_RESULT_FIELDS = ["status", "attempts", "backend_state", "finished_at", "next_attempt_at", "last_error_code",
                      "last_error"]


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


def _may_reallocate(result: CallResult) -> bool:
    return result.outcome.kind == OutcomeKind.PERMANENT and bool((result.outcome.state or {}).get("reallocate_email"))


def record_results(results: list[CallResult], *, worker: str, totals: ProcessResult) -> None:
    """Write a batch of call results in one transaction, fenced by each claim's lease token.

    The fence and the write are one statement: a task row is written only while it is still `running`
    under the claim's token (a worker whose lease expired cannot overwrite a newer claim), and only what
    was written goes on to the attempt log, the accounts and the roll-up. An email reallocation writes
    elsewhere before the task row, so when one is among the results the claims are checked first.
    """
    def write():
        now = timezone.now()
        kept = results
        if any(_may_reallocate(r) for r in results):
            current = current_lease_tokens(Task, [r.task.pk for r in results], status=Task.Status.RUNNING)
            kept = [r for r in results if current.get(r.task.pk) == r.token]
        applied = [(r, *_apply(r, now)) for r in kept]
        written = set(_write_task_results([r for r, _, _ in applied], now))
        applied = [(r, verdict, number) for r, verdict, number in applied if r.task.pk in written]
        if applied:
            kept = [r for r, _, _ in applied]
            _log_attempts(applied, worker)
            _update_accounts(kept, now)
            stopped = stop_retries_of_cancelled_requests(
                [r.task.pk for r in kept if r.task.status == Task.Status.PENDING])
            rollup_items_for_persons(stopped | {r.task.person_id for r in kept if r.task.status in
                                                (Task.Status.SUCCEEDED, Task.Status.FAILED)})
        return [verdict for _, verdict, _ in applied], len(results) - len(applied)

    forgive_lost_claims(results)
    verdicts, fenced = atomic_with_retry(write, retry_on=(OperationalError, IntegrityError))
    for verdict in verdicts:
        setattr(totals, verdict, getattr(totals, verdict) + 1)
    totals.fenced_off += fenced
    if fenced:
        logger.warning("%d result(s) discarded: their lease had expired and the tasks were claimed again", fenced)


def _write_task_results(results: list[CallResult], now) -> list[int]:
    """Write the tasks' new state where the claim's lease still holds; return the ids written."""
    if not results:
        return []
    results = sorted(results, key=lambda r: r.task.pk)  # rows locked in id order, like every other writer
    tasks = [r.task for r in results]
    return update_from_arrays(
        Task, match={"id": [t.pk for t in tasks], "lease_token": [r.token for r in results]},
        values={name: [getattr(t, name) for t in tasks] for name in TASK_RESULT_FIELDS},
        constants={"locked_by": "", "lease_token": "", "lease_expires_at": None, "updated_at": now},
        where={"status": Task.Status.RUNNING}, returning="id",
    )


def _log_attempts(applied: list[tuple[CallResult, str, int]], worker: str) -> None:
    """A TaskAttempt row per call, with the target's code and message verbatim."""
    outcomes = [r.outcome for r, _, _ in applied]
    insert_from_arrays(TaskAttempt, {
        "task": [r.task.pk for r, _, _ in applied],
        "attempt_number": [number for _, _, number in applied],
        "outcome": [o.kind.value for o in outcomes],
        "code": [o.code[:64] for o in outcomes],
        "message": [o.message for o in outcomes],
        "duration_ms": [r.duration_ms for r, _, _ in applied],
        "started_at": [r.started_at for r, _, _ in applied],
    }, constants={"worker": worker})


def _update_accounts(results: list[CallResult], now) -> None:
    """Final tasks decide their accounts: created with the target's id, or failed with the reason."""
    final = [r for r in results if r.task.status in (Task.Status.SUCCEEDED, Task.Status.FAILED)]
    if not final:
        return
    rows = []
    for result in final:
        task = result.task
        if task.status == Task.Status.SUCCEEDED:
            rows.append((task.person_id, task.system, Account.Status.CREATED, result.outcome.external_id[:255], "",
                         now))
        else:
            message = f"[{task.last_error_code}] {task.last_error}" if task.last_error_code else task.last_error
            rows.append((task.person_id, task.system, Account.Status.FAILED, "", message, None))
    person, system, status, external_id, error_message, provisioned_at = map(list, zip(*rows))
    update_from_arrays(
        Account, match={"person": person, "system": system},
        values={"status": status, "external_id": external_id, "error_message": error_message,
                "provisioned_at": provisioned_at},
        constants={"updated_at": now},
    )


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


@dataclass
class _Written:
    count: int
    error: Exception | None = None


class Recorder:
    """Writes batches of results, from a thread of its own when it can.

    The main thread claims while the previous batch is written: both mostly wait on PostgreSQL, so the two
    overlap instead of adding up. One batch is written at a time; results arriving meanwhile wait in the
    main thread's buffer and go as the next, larger batch. The thread has its own connection, which
    cannot see the caller's uncommitted rows: inside a transaction (and on SQLite) batches are written
    inline instead.
    """

    def __init__(self, *, worker: str, totals: ProcessResult, threaded: bool, reports: queue.Queue):
        self.worker = worker
        self.totals = totals
        self.pending = 0  # results handed over and not reported written yet (main thread's count)
        self.reports = reports  # the main thread's queue: a report wakes it like a call's result does
        self.jobs: queue.Queue | None = None
        self.thread = None
        if threaded:
            self.jobs = queue.Queue()
            self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                           name="recorder", daemon=True)
            self.thread.start()

    def hand_over(self, results: list[CallResult]) -> None:
        self.pending += len(results)
        if self.jobs is not None:
            self.jobs.put(results)
            return
        try:
            record_results(results, worker=self.worker, totals=self.totals)
        finally:
            self.pending -= len(results)
        self.reports.put(_Written(0))

    def _run(self) -> None:
        try:
            while (batch := self.jobs.get()) is not _STOP:
                try:
                    record_results(batch, worker=self.worker, totals=self.totals)
                    self.reports.put(_Written(len(batch)))
                except Exception as exc:  # handed to the main thread, which fails the stage with it
                    self.reports.put(_Written(len(batch), exc))
        finally:
            connections.close_all()

    def take(self, report: "_Written") -> None:
        """A batch was written (or failed to be, which fails the stage here)."""
        self.pending -= report.count
        if report.error is not None:
            raise report.error

    def stop(self) -> None:
        if self.thread is not None:
            self.jobs.put(_STOP)
            self.thread.join()
            self.thread = None


def _prefetch_capacity(pool, call_seconds: float | None) -> int:
    """How many claimed tasks to keep ahead of a system's threads.

    PROCESS_PREFETCH per thread, but no more than PROCESS_QUEUE_SECONDS of work, judged by the recent
    duration of a call (which includes any wait for the target's rate limit): a queued task waits, and so
    does a higher-priority request arriving behind it; when the backlog runs out, workers with long
    queues finish last while the others idle; and a task must never wait in the queue past its lease
    (another worker would claim it again), so the queue never holds more than a quarter of the lease
    either. Until a call has finished, one task per thread.
    """
    seconds = min(settings.PROCESS_QUEUE_SECONDS, settings.TASK_LEASE_SECONDS / 4)
    most = pool.size * settings.PROCESS_PREFETCH
    if call_seconds is None:
        return pool.size
    # Compared as products: the moving average of instant calls decays towards the smallest float, and
    # dividing by it would overflow.
    if pool.size * seconds < most * call_seconds:
        most = int(pool.size * seconds / call_seconds)
    return max(pool.size, most)


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
    call_seconds: dict[str, float] = {}  # a moving average of each system's call duration
    recorder = Recorder(worker=worker, totals=totals, reports=results,
                        threaded=connection.vendor == "postgresql" and not connection.in_atomic_block)
    exhausted = set()
    buffer: list[CallResult] = []
    last_flush = time.monotonic()
    next_expiry = 0.0
    try:
        while True:
            may_claim = not stop.is_set() and time.monotonic() < deadline and (
                limit is None or totals.claimed < limit)
            if may_claim and time.monotonic() >= next_expiry:
                # Leases of dead workers, every system at once, once a second rather than in every claim.
                atomic_with_retry(lambda: expire_leases(now=timezone.now()))
                next_expiry = time.monotonic() + LEASE_EXPIRY_INTERVAL
            capacities = {system: _prefetch_capacity(pool, call_seconds.get(system)) for system, pool in pools.items()}
            # Results not written yet count against the claims: a slow database slows the claiming down.
            if may_claim and len(buffer) + recorder.pending < 2 * sum(capacities.values()):
                for system, pool in pools.items():
                    # Keep a queue of claimed tasks ahead of the threads and top it up in chunks: a claim's
                    # round trip is shared by many tasks.
                    capacity = capacities[system]
                    free = capacity - pool.in_flight
                    if system in exhausted or free < max(1, capacity // 2):
                        continue
                    want = free if limit is None else min(free, limit - totals.claimed)
                    if want <= 0:
                        continue
                    token, tasks = claim_due_tasks(system=system, limit=want, worker=worker, expire=False)
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
            if in_flight == 0 and not buffer and not recorder.pending:
                if not may_claim or len(exhausted) == len(pools):
                    break
            written = False
            try:
                item = results.get(timeout=0.2 if in_flight or recorder.pending else 0.01)
                while True:
                    if isinstance(item, _Written):
                        recorder.take(item)
                        written = True
                    else:
                        system = item.task.system
                        pools[system].in_flight -= 1
                        seconds = item.duration_ms / 1000
                        call_seconds[system] = 0.8 * call_seconds.get(system, seconds) + 0.2 * seconds
                        buffer.append(item)
                    item = results.get_nowait()
            except queue.Empty:
                pass
            if buffer and not recorder.pending and (
                    len(buffer) >= flush_size or time.monotonic() - last_flush >= flush_interval
                    or sum(p.in_flight for p in pools.values()) == 0):
                recorder.hand_over(buffer)
                buffer = []
                last_flush = time.monotonic()
            if written:
                # Retried and polled tasks may be due again already: let every system look again.
                exhausted.clear()
    finally:
        for pool in pools.values():
            pool.stop()
        recorder.stop()
        if buffer:
            record_results(buffer, worker=worker, totals=totals)
    atomic_with_retry(reconcile_processing_requests)
    if not stop.is_set():  # on SIGTERM the outbox waits for the next run
        notified = deliver_due_notifications(worker=worker)
        totals.notifications_delivered = notified["delivered"]
        totals.notifications_failed = notified["failed"]
    return totals
