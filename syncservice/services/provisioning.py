"""Stage 3, process_account_creation_tasks: the "make sure the account exists" kind of job, and the stage.

A task is a job on the shared queue (syncservice.queue): claimed in small batches under a lease, called
per target system by the executor's threads outside any transaction, and written back fenced by the
claim's lease token. This module says what a call is (the backend's ensure_account), how its Outcome maps
onto the task, and what follows a written result: the attempt log, the account, the roll-up.
"""

import datetime as dt
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from ..backends import get_backend
from ..backends.base import AccountChange, Outcome, OutcomeKind, PersonSnapshot
from ..backends.pacing import concurrency_slot
from ..db.bulk import insert_from_arrays, update_from_arrays
from ..db.locking import atomic_with_retry
from ..models import Account, AccountCreationTask, HrPerson, TaskAttempt
from ..queue import executor, jobs
from ..queue.engines import Claimed
from ..queue.handler import Handler
from ..queue.outcomes import Decision, JobResult, Settled, Verdict
from ..queue.table import JobTable
from .account_changes import (
    open_changes,
    person_values,
    persons_out_of_line,
    record_change_results,
    record_events,
)
from .email_reallocation import person_reallocate_email
from .lifecycle import stop_retries_of_cancelled_requests
from .mailbox_first import MAILBOX, settle_blocked_tasks, settle_stranded_blocked_tasks
from .notifications import NotificationHandler
from .orphan_actions import DISABLE_ORPHAN
from .rollup import reconcile_processing_requests, rollup_items_for_persons
from .target_calls import guarded

logger = logging.getLogger(__name__)

Task = AccountCreationTask

# The person columns snapshot() reads, loaded with each claimed task in the claim's own statement.
_SNAPSHOT_FIELDS = {"id", "person_id", "employee_number", "full_name", "email", "telephone_number1", "person_type",
                    "person_dept"}

TASKS = JobTable(
    model=Task,
    ready=(Task.Status.PENDING, Task.Status.WAITING),
    running=Task.Status.RUNNING,
    succeeded=Task.Status.SUCCEEDED,
    failed=Task.Status.FAILED,
    pending=Task.Status.PENDING,
    polling=Task.Status.WAITING,
    polls_when=Q(backend_state__has_key="submitted"),  # the target accepted an asynchronous create
    lane_field="system",
    order=("-priority", "next_attempt_at", "id"),
    select_related=("person",),
    related_fields=tuple(f.attname for f in HrPerson._meta.concrete_fields if f.attname in _SNAPSHOT_FIELDS),
    worker_field="locked_by",
    updated_field="updated_at",
    finished_field="finished_at",
    error_code_field="last_error_code",
    result_fields=("backend_state",),
    lease_setting="TASK_LEASE_SECONDS",
    retry_base_setting="TASK_RETRY_BASE_SECONDS",
    retry_cap_setting="TASK_RETRY_MAX_SECONDS",
    attempt_log=(TaskAttempt, "task"),
)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def snapshot(task: Task) -> PersonSnapshot:
    """The person as the task's call sees them: a change carries the values it applies."""
    person = task.person
    # A creation sends the person as the claim loaded them; a change the values it carries.
    values = person_values(person) if task.operation == Task.Operation.CREATE else (task.change or {})["values"]
    return PersonSnapshot(
        person_pk=person.pk, person_id=person.person_id, employee_number=person.employee_number,
        person_type=person.person_type, departments=list(person.person_dept or []), **values,
    )


def account_change(task: Task) -> AccountChange:
    change = task.change or {}
    return AccountChange(operation=task.operation, external_id=change.get("external_id", ""),
                         fields=tuple(change.get("fields", ())), active=bool(change.get("active", True)))


def ensure_account(task: Task) -> Outcome:
    """One call to the task's target, within the shared concurrency slots; never raises.

    A creation makes sure the account exists; a change (update, disable, enable) applies its values."""
    return ensure_accounts(task.system, [task])[0]


def ensure_accounts(system: str, tasks: list[Task]) -> list[Outcome]:
    """The calls for several tasks of one system, in one of the shared concurrency slots; never raises.

    Creations go to the backend together (a bulk API sends several persons per call) and changes one by
    one; one outcome per task, in order. A failure of our own side answers for the calls it hit only: the
    creations' outcomes survive a change that raises after them, and each change stands alone."""
    def in_slot() -> list[Outcome]:
        with concurrency_slot(system) as acquired:
            if not acquired:
                busy = Outcome.transient("slot_busy", f"no free {system} call slot across the workers "
                                                      f"within {settings.TARGET_SLOT_WAIT_SECONDS:g} s")
                return [busy] * len(tasks)
            backend = get_backend(system)
            creations = [t for t in tasks if t.operation == Task.Operation.CREATE]
            created = iter(guarded(system, [t.pk for t in creations], lambda: backend.ensure_accounts(
                [(snapshot(t), dict(t.backend_state or {})) for t in creations])) if creations else [])
            return [next(created) if task.operation == Task.Operation.CREATE else
                    guarded(system, [task.pk], lambda task=task: [backend.apply_change(
                        snapshot(task), account_change(task), dict(task.backend_state or {}))], what="change")[0]
                    for task in tasks]

    return guarded(system, [t.pk for t in tasks], in_slot)


class CreateAccountHandler(Handler):
    """Make sure one person has an account in one target system (AccountCreationTask)."""

    name = "create_account"
    table = TASKS

    def lanes(self) -> list[str]:
        return list(settings.PROVISIONING_SYSTEMS)

    def threads(self, lane: str) -> int:
        return settings.BACKEND_CONCURRENCY.get(lane, 4)

    def check(self) -> None:
        for system in self.lanes():
            get_backend(system)

    def batch_size(self, lane: str) -> int:
        return get_backend(lane).batch_size()

    def call(self, lane: str, jobs: list[Claimed]) -> list[Outcome]:
        return ensure_accounts(lane, [claimed.job for claimed in jobs])

    def crashed(self, job: Task, exc: Exception) -> Outcome:
        return Outcome.transient("exception", f"{type(exc).__name__}: {exc}")

    def decide(self, result: JobResult, now) -> Decision:
        task, outcome = result.job, result.outcome
        if outcome.state is not None:
            task.backend_state = outcome.state
        kind = outcome.kind
        if outcome.succeeded:
            return Decision.succeeded()
        if kind == OutcomeKind.IN_PROGRESS:
            submitted = task.backend_state.setdefault("submitted_at", now.isoformat())
            age = (now - dt.datetime.fromisoformat(submitted)).total_seconds()
            if age > settings.TASK_ASYNC_TIMEOUT_SECONDS:
                return Decision.failed("async_timeout",
                                       f"still in progress at the target after {int(age)} s: {outcome.message}")
            return Decision.wait(delay=outcome.retry_after or settings.TASK_ASYNC_POLL_SECONDS)
        if kind == OutcomeKind.PERMANENT and self._reallocate_email(task, outcome):
            # The address belongs to someone else at the mail system: the person got the next free candidate
            # and the task goes again at once.
            return Decision.defer(outcome.code, outcome.message, delay=0)
        if kind == OutcomeKind.TRANSIENT and outcome.rate_limited and \
                task.backend_state.get("rate_limited", 0) < settings.TASK_MAX_RATE_LIMIT_DEFERRALS:
            # "Slow down" is not a failure of this task: it waits its turn.
            task.backend_state["rate_limited"] = task.backend_state.get("rate_limited", 0) + 1
            return Decision.defer(outcome.code, outcome.message, delay=outcome.retry_after or 1.0)
        if kind == OutcomeKind.TRANSIENT:
            return Decision.retry(outcome.code, outcome.message, retry_after=outcome.retry_after)
        return Decision.failed(outcome.code, outcome.message)

    @staticmethod
    def _reallocate_email(task: Task, outcome: Outcome) -> bool:
        """Move the person to their next email candidate when the mail system refused the current one."""
        state = outcome.state or {}
        refused = state.get("refused_emails") or []
        if not state.get("reallocate_email") or len(refused) > settings.EMAIL_MAX_REALLOCATIONS:
            return False
        person_reallocate_email(person_pk=task.person_id, taken_email=state.get("taken_email", ""), refused=refused)
        task.backend_state = {k: v for k, v in state.items() if k not in ("reallocate_email", "taken_email")}
        return True

    def writes_before_result(self, results: list[JobResult]) -> bool:
        # An email reallocation writes the person before the task row is written.
        return any(r.outcome.kind == OutcomeKind.PERMANENT and (r.outcome.state or {}).get("reallocate_email")
                   for r in results)

    def after_write(self, settled: list[Settled], *, worker: str, now) -> None:
        log_attempts(settled, worker)
        update_accounts(settled, now)
        changed = record_change_results(settled, now)
        record_events(settled, now)
        # What the targets now hold is compared with the persons again: a change that came in while these
        # calls ran (or a deactivation during a creation) opens its task here.
        open_changes(persons_out_of_line({s.result.job.person_id for s in settled if s.verdict == Verdict.SUCCEEDED}),
                     now=now)
        stopped = stop_retries_of_cancelled_requests(
            [s.result.job.pk for s in settled if s.result.job.status == Task.Status.PENDING])
        final = [s.result.job for s in settled if s.verdict in (Verdict.SUCCEEDED, Verdict.FAILED)]
        # A mailbox that exists (or failed for good) releases (or fails) the person's other tasks.
        dependents_failed = settle_blocked_tasks(
            person_ids={task.person_id for task in final if task.system == MAILBOX}, now=now)
        rollup_items_for_persons(stopped | {task.person_id for task in final} | dependents_failed | changed)

    def upkeep(self) -> None:
        settle_stranded_blocked_tasks()


def log_attempts(settled: list[Settled], worker: str) -> None:
    """A TaskAttempt row per call, with the target's code and message verbatim."""
    outcomes = [s.result.outcome for s in settled]
    insert_from_arrays(TaskAttempt, {
        "task": [s.result.job.pk for s in settled],
        "attempt_number": [s.attempt_number for s in settled],
        "outcome": [o.kind.value for o in outcomes],
        "code": [o.code[:64] for o in outcomes],
        "message": [o.message for o in outcomes],
        "duration_ms": [s.result.duration_ms for s in settled],
        "started_at": [s.result.started_at for s in settled],
    }, constants={"worker": worker})


def update_accounts(settled: list[Settled], now) -> None:
    """Final creations decide their accounts: created with the target's id and the values it was given
    (active), or failed with the reason. (Changes: account_changes.record_change_results.)"""
    rows = []
    for s in settled:
        task = s.result.job
        if task.operation != Task.Operation.CREATE:
            continue
        outcome = s.result.outcome
        if s.verdict == Verdict.SUCCEEDED:
            # What the target was given: the values of the claim's snapshot (a change since then differs from
            # them, and open_changes sends it). `linked`: the account existed before the service called.
            applied = {**person_values(task.person), "active": True}
            if outcome.kind == OutcomeKind.LINKED:
                applied["linked"] = True
            rows.append((task.person_id, task.system, Account.Status.CREATED, outcome.external_id[:255], "",
                         now, applied))
        elif s.verdict == Verdict.FAILED:
            message = f"[{task.last_error_code}] {task.last_error}" if task.last_error_code else task.last_error
            rows.append((task.person_id, task.system, Account.Status.FAILED, "", message, None, {}))
    if not rows:
        return
    person, system, status, external_id, error_message, provisioned_at, applied = map(list, zip(*rows))
    update_from_arrays(
        Account, match={"person": person, "system": system},
        values={"status": status, "external_id": external_id, "error_message": error_message,
                "provisioned_at": provisioned_at, "applied": applied},
        constants={"updated_at": now},
    )


CREATE_ACCOUNT = CreateAccountHandler()


# --- The stage, and the steps of one job for tests and tools --------------------------------------------

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

    def add(self, tally: executor.Tally) -> None:
        self.claimed += tally.claimed
        for system, count in tally.by_lane.items():
            self.by_system[system] = self.by_system.get(system, 0) + count
        for verdict in Verdict:
            setattr(self, verdict.value, getattr(self, verdict.value) + tally.verdicts[verdict.value])
        self.fenced_off += tally.fenced_off
        self.released += tally.released


def claim_due_tasks(*, system: str, limit: int, worker: str, expire: bool = True) -> tuple[str, list[Claimed]]:
    """Claim up to `limit` due tasks of one system; return the claim's lease token and the claims."""
    claimed = jobs.claim_due(TASKS, lane=system, limit=limit, worker=worker, expire=expire)
    return (claimed[0].token if claimed else ""), claimed


def call_backend(claimed: Claimed) -> JobResult:
    """Call the target for one claimed task (outside any transaction)."""
    [result] = executor.call_jobs(CREATE_ACCOUNT, claimed.job.system, [claimed])
    return result


def record_results(results: list[JobResult], *, worker: str, totals: ProcessResult) -> None:
    """Write a batch of call results in one transaction, fenced by each claim's lease token."""
    verdicts, fenced = jobs.record(CREATE_ACCOUNT, results, worker=worker)
    tally = executor.Tally(verdicts=verdicts, fenced_off=fenced)
    totals.add(tally)


def run_process_stage(*, dry_run: bool = False, limit: int | None = None, max_seconds: float | None = None,
                      stop: threading.Event | None = None, worker: str | None = None,
                      flush_size: int = 200, flush_interval: float = 0.05) -> ProcessResult:
    """Work through due tasks and notifications until none are due, `limit` tasks were claimed, time is
    up or `stop` is set; then settle requests left processing."""
    totals = ProcessResult()
    if dry_run:
        now = timezone.now()
        for system in settings.PROVISIONING_SYSTEMS:
            totals.by_system[system] = Task.objects.filter(jobs.due(TASKS, now), system=system).count()
        totals.claimed = sum(totals.by_system.values())
        return totals
    stop = stop or threading.Event()
    worker = worker or worker_name()
    deadline = time.monotonic() + (max_seconds or settings.PROCESS_STAGE_MAX_SECONDS)
    notifications = NotificationHandler()
    tallies = executor.run([CREATE_ACCOUNT, notifications, DISABLE_ORPHAN], worker=worker, stop=stop,
                           limits={CREATE_ACCOUNT.name: limit}, deadline=deadline,
                           flush_size=flush_size, flush_interval=flush_interval)
    totals.add(tallies[CREATE_ACCOUNT.name])
    notified = [tallies[notifications.name]]
    # Requests that ended outside this run's results (their last item cancelled, say) end here; their
    # notifications, and any the deadline cut off, go out in this run too, unless the stage is being stopped.
    atomic_with_retry(reconcile_processing_requests)
    if not stop.is_set():
        again = executor.run([notifications], worker=worker, stop=stop,
                             deadline=time.monotonic() + settings.PROCESS_STAGE_MAX_SECONDS)
        notified.append(again[notifications.name])
    totals.notifications_delivered = sum(t.verdicts[Verdict.SUCCEEDED.value] for t in notified)
    totals.notifications_failed = sum(t.verdicts[Verdict.FAILED.value] for t in notified)
    return totals

