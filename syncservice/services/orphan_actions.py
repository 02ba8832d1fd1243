"""Orphans an operator disables: the "switch this account off" kind of job on the shared queue.

Reconciliation only reports an orphan (an account at a target, in our key space, that no account of ours
is). The operator links it to a person (reconciliation.orphans_link) or disables it from the admin; a
disable is an OrphanAction, claimed and called by the process stage's executor like every other job, within
the shared rate limits and concurrency slots. The call is the backend's `disable_account`: the account's
active state and nothing else (the service does not know whose values the account should hold).
"""

import logging

from django.conf import settings
from django.db import transaction

from ..backends import get_backend
from ..backends.base import Outcome, OutcomeKind, TargetAccount
from ..backends.pacing import concurrency_slot
from ..models import Account, OrphanAction, ReconciliationFinding
from ..queue.engines import Claimed
from ..queue.handler import Handler
from ..queue.outcomes import Decision, JobResult, Settled, Verdict
from ..queue.table import JobTable
from .target_calls import guarded
from .wakeup import notify_work

logger = logging.getLogger(__name__)

Finding = ReconciliationFinding

ORPHAN_ACTIONS = JobTable(
    model=OrphanAction,
    ready=(OrphanAction.Status.PENDING,),
    running=OrphanAction.Status.RUNNING,
    succeeded=OrphanAction.Status.SUCCEEDED,
    failed=OrphanAction.Status.FAILED,
    pending=OrphanAction.Status.PENDING,
    lane_field="system",
    worker_field="locked_by",
    updated_field="updated_at",
    finished_field="finished_at",
    error_code_field="last_error_code",
    lease_setting="TASK_LEASE_SECONDS",
    retry_base_setting="TASK_RETRY_BASE_SECONDS",
    retry_cap_setting="TASK_RETRY_MAX_SECONDS",
)


class OrphanRefused(ValueError):
    """Why an orphan cannot be disabled (shown to the operator)."""


@transaction.atomic
def orphans_disable(findings, *, requested_by: str) -> tuple[list[OrphanAction], dict[int, str]]:
    """Queue a disable for each chosen orphan; return the actions opened and, by finding id, why the others
    were not. An orphan is disabled only while it is still nobody's: not linked (or disabled) already, and
    no account of ours carries its id at the target."""
    opened, refused = [], {}
    chosen = list(Finding.objects.select_for_update(of=("self",)).filter(pk__in=[f.pk for f in findings])
                  .order_by("id"))
    for finding in chosen:
        try:
            _check(finding)
        except OrphanRefused as exc:
            refused[finding.pk] = str(exc)
            continue
        opened.append(OrphanAction.objects.create(
            finding=finding, system=finding.system, external_id=finding.external_id,
            employee_number=finding.employee_number, requested_by=requested_by[:150]))
        Finding.objects.filter(pk=finding.pk).update(repair=Finding.Repair.OPENED)
    if opened:
        notify_work("orphan")  # a worker in worker mode starts it at once, on commit
    return opened, refused


def _check(finding: Finding) -> None:
    if finding.kind != Finding.Kind.ORPHAN:
        raise OrphanRefused("只有目标系统多出的账号可以停用")
    if finding.repair == Finding.Repair.OPENED:  # linked, or its disable queued (both set it)
        raise OrphanRefused("已关联或已发起停用")
    if not finding.external_id:
        raise OrphanRefused("目标系统未给出账号ID")
    if not get_backend(finding.system).can_disable_accounts:
        raise OrphanRefused(f"{finding.get_system_display()} 不支持停用无对应人员的账号")
    if Account.objects.filter(system=finding.system, external_id=finding.external_id).exists():
        raise OrphanRefused("该账号已是我方账号")
    if OrphanAction.objects.filter(system=finding.system, external_id=finding.external_id,
                                   status__in=(OrphanAction.Status.PENDING, OrphanAction.Status.RUNNING)).exists():
        raise OrphanRefused("该账号已在停用中")


def disable(action: OrphanAction) -> Outcome:
    """One call to the target, within the shared concurrency slots; never raises.

    Checked again just before the call: an account of ours may have come to carry this id since the
    operator asked (a creation that linked the existing account), and that account is never switched off."""
    def call() -> list[Outcome]:
        if Account.objects.filter(system=action.system, external_id=action.external_id).exists():
            return [Outcome.permanent("account_claimed", f"{action.external_id} is an account of ours now: "
                                                         "not disabled")]
        with concurrency_slot(action.system) as acquired:
            if not acquired:
                return [Outcome.transient("slot_busy", f"no free {action.system} call slot across the workers "
                                                       f"within {settings.TARGET_SLOT_WAIT_SECONDS:g} s")]
            account = TargetAccount(external_id=action.external_id, key=action.employee_number)
            return [get_backend(action.system).disable_account(account)]

    return guarded(action.system, [action.pk], call, what="orphan disable")[0]


class DisableOrphanHandler(Handler):
    """Switch off one orphan account at its target (OrphanAction)."""

    name = "disable_orphan"
    table = ORPHAN_ACTIONS

    def lanes(self) -> list[str]:
        return list(settings.PROVISIONING_SYSTEMS)

    def call(self, lane: str, jobs: list[Claimed]) -> list[Outcome]:
        return [disable(claimed.job) for claimed in jobs]

    def crashed(self, job: OrphanAction, exc: Exception) -> Outcome:
        return Outcome.transient("exception", f"{type(exc).__name__}: {exc}")

    def decide(self, result: JobResult, now) -> Decision:
        outcome = result.outcome
        if outcome.succeeded:
            return Decision.succeeded()
        if outcome.kind == OutcomeKind.TRANSIENT:  # a rate-limit answer too: its Retry-After is kept
            return Decision.retry(outcome.code, outcome.message, retry_after=outcome.retry_after)
        return Decision.failed(outcome.code, outcome.message)

    def after_write(self, settled: list[Settled], *, worker: str, now) -> None:
        for s in settled:
            if s.verdict in (Verdict.SUCCEEDED, Verdict.FAILED):
                action = s.result.job
                log = logger.info if s.verdict == Verdict.SUCCEEDED else logger.warning
                log("orphan %s at %s: disable %s%s", action.external_id, action.system, action.status,
                    f" ({action.last_error_code} {action.last_error})" if action.last_error else "")


DISABLE_ORPHAN = DisableOrphanHandler()
