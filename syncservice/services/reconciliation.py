"""Reconciliation: compare our records with what each target holds, and repair through the queue.

A run reads each target's accounts in pages through its backend (the shared outbound limits hold) and
compares every page with our accounts in one query. What it finds is stored with the run:

- `missing`: we hold a created account the target does not have;
- `orphan`: the target has an account in our key space (RECONCILE_EMPLOYEE_NUMBER_PATTERN, or an address
  at EMAIL_DOMAIN) that we do not know;
- `drift`: a field differs (email, name, mobile, department, active state), with ours and theirs;
- `duplicate`: the target holds two accounts with one employee number.

Memory stays bounded by the page: the keys a target holds go to scratch rows (ReconciliationSeen), and
missing accounts and duplicates are found by queries over them. A target that cannot list (WeLink) is
read by looking our own accounts up, a page at a time; its orphans cannot be checked, and the run says so.

A repair is ordinary queue work: a missing account gets a creation task; a drifted one an update, enable
or disable (the account's `applied` takes the target's value, and `open_changes` does the rest). Orphans
and duplicates are only reported. More repairs than RECONCILE_MAX_REPAIRS in a system (the accidental-
deletions guard) hold every repair of the run back, unless forced.
"""

import logging
import re
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from ..backends import get_backend
from ..backends.base import ListingFailed, TargetAccount
from ..db.bulk import update_from_arrays
from ..db.locking import wait_locked
from ..models import (
    Account,
    AccountCreationTask,
    HrPerson,
    ReconciliationFinding,
    ReconciliationRun,
    ReconciliationSeen,
    System,
)
from .account_changes import open_changes, person_values
from .tasks import open_creation_tasks

logger = logging.getLogger(__name__)

Finding = ReconciliationFinding
Kind = ReconciliationFinding.Kind
Repair = ReconciliationFinding.Repair
# The fields compared, as PersonSnapshot and TargetAccount name them.
FIELDS = ("email", "full_name", "phone_number", "department_code")


class RepairLimitInvalid(ValueError):
    pass


def repair_limit(total: int) -> int:
    """RECONCILE_MAX_REPAIRS for a system of `total` accounts: a number, or a percentage of them."""
    value = str(settings.RECONCILE_MAX_REPAIRS).strip()
    try:
        if value.endswith("%"):
            return int(total * float(value[:-1]) / 100)
        return int(value)
    except ValueError:
        raise RepairLimitInvalid(f"RECONCILE_MAX_REPAIRS={value!r} is neither a number nor a percentage") from None


def in_key_space(account: TargetAccount) -> bool:
    pattern = settings.RECONCILE_EMPLOYEE_NUMBER_PATTERN
    if account.key and pattern and re.search(pattern, account.key):
        return True
    return account.email.lower().endswith("@" + settings.EMAIL_DOMAIN.lower())


@dataclass
class _SystemTally:
    target: int = 0
    compared: int = 0
    orphans_checkable: bool = True
    stopped_at: str | None = None
    finished: bool = False

    def as_dict(self) -> dict:
        return {"target": self.target, "compared": self.compared, "orphansCheckable": self.orphans_checkable,
                "stoppedAt": self.stopped_at, "finished": self.finished}


def _ours_for(system: str, records: list[TargetAccount]) -> dict[str, Account]:
    """Our accounts of a page, by the target's key; an account that carries no key of ours (a mailbox made
    before extids were set) is matched by its external id, in a second query only when there is one."""
    ours = {a.person.employee_number: a for a in Account.objects.filter(
        system=system, person__employee_number__in=[r.key for r in records if r.key]).select_related("person")}
    unmatched = [r.external_id for r in records if r.key not in ours and r.external_id]
    if unmatched:
        for account in Account.objects.filter(system=system, external_id__in=unmatched).select_related("person"):
            ours.setdefault(account.external_id, account)
    return ours


def _compare_page(run: ReconciliationRun, system: str, records: list[TargetAccount], *,
                  check_orphans: bool) -> tuple[list[Finding], list[str]]:
    """Compare one page of the target's accounts with ours in one or two queries; return the findings and
    each record's key in our terms (the employee number of the account it was matched to)."""
    ours = _ours_for(system, records)
    findings, keys = [], []
    for record in records:
        account = ours.get(record.key) if record.key in ours else ours.get(record.external_id)
        keys.append(account.person.employee_number if account is not None else record.key)
        if account is not None and account.status == Account.Status.CREATING:
            continue  # ours, being created (a repair's recreation, say)
        if account is None or account.status != Account.Status.CREATED:
            if check_orphans and in_key_space(record):
                findings.append(Finding(run=run, system=system, employee_number=record.key[:64], kind=Kind.ORPHAN,
                                        theirs=record.email or record.full_name, external_id=record.external_id[:255],
                                        repair=Repair.REPORT_ONLY, account=account))
            continue
        if account.change_status == Account.ChangeStatus.UPDATING:
            continue  # a change is on its way: what the target holds is about to move
        findings += _drift(run, system, account, record)
    return findings, keys


def _drift(run: ReconciliationRun, system: str, account: Account, record: TargetAccount) -> list[Finding]:
    wanted = person_values(account.person)
    found = []
    for field in FIELDS:
        theirs = getattr(record, field)
        if theirs is None or theirs == wanted[field]:
            continue
        # A mailbox's address is its id at the mail system: reported, never changed by a repair.
        repair = Repair.REPORT_ONLY if (system == System.EMAIL and field == "email") else Repair.PLANNED
        found.append(Finding(run=run, system=system, employee_number=record.key[:64], kind=Kind.DRIFT, field=field,
                             ours=wanted[field], theirs=theirs, external_id=record.external_id[:255],
                             repair=repair, account=account))
    if record.active != account.enabled:
        found.append(Finding(run=run, system=system, employee_number=record.key[:64], kind=Kind.DRIFT,
                             field="active", ours=str(account.enabled).lower(), theirs=str(record.active).lower(),
                             external_id=record.external_id[:255], repair=Repair.PLANNED, account=account))
    return found


def _record_page(run: ReconciliationRun, system: str, records: list[TargetAccount], *, check_orphans: bool) -> None:
    findings, keys = _compare_page(run, system, records, check_orphans=check_orphans)
    with transaction.atomic():
        ReconciliationSeen.objects.bulk_create([
            ReconciliationSeen(run=run, system=system, key=key[:64], external_id=r.external_id[:255])
            for key, r in zip(keys, records, strict=True)])
        Finding.objects.bulk_create(findings)


def _read_listing(run: ReconciliationRun, system: str, backend, tally: _SystemTally, page_size: int) -> None:
    cursor = None
    while True:
        tally.stopped_at = cursor
        page = backend.list_accounts(cursor=cursor, page_size=page_size)
        _record_page(run, system, page.accounts, check_orphans=True)
        tally.target += len(page.accounts)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _read_by_lookups(run: ReconciliationRun, system: str, backend, tally: _SystemTally, page_size: int) -> None:
    """A target that cannot list: our created accounts, a page at a time, looked up there."""
    tally.orphans_checkable = False
    last_id = 0
    while True:
        tally.stopped_at = str(last_id) if last_id else None
        page = list(Account.objects.filter(system=system, status=Account.Status.CREATED, id__gt=last_id)
                    .order_by("id").values_list("id", "person__employee_number")[:page_size])
        if not page:
            return
        records = backend.lookup_accounts([number for _, number in page])
        _record_page(run, system, records, check_orphans=False)
        tally.target += len(records)
        last_id = page[-1][0]


def _missing_and_duplicates(run: ReconciliationRun, system: str, page_size: int) -> int:
    """Findings the scratch rows tell: our accounts the target did not show, keys it showed twice."""
    seen = ReconciliationSeen.objects.filter(run=run, system=system)
    ours = Account.objects.filter(system=system, status=Account.Status.CREATED)
    compared = ours.count()
    missing = (ours.exclude(person__employee_number__in=seen.values("key"))
               .values_list("id", "person__employee_number", "external_id", "enabled").order_by("id"))
    batch = []
    for account_id, number, external_id, enabled in missing.iterator(chunk_size=page_size):
        # A leaver's account gone from the target is reported: recreating it only to disable it helps nobody.
        repair = Repair.PLANNED if enabled else Repair.REPORT_ONLY
        batch.append(Finding(run=run, system=system, employee_number=number, kind=Kind.MISSING,
                             ours=external_id, external_id=external_id, repair=repair, account_id=account_id))
        if len(batch) >= page_size:
            Finding.objects.bulk_create(batch)
            batch = []
    Finding.objects.bulk_create(batch)
    # Two accounts, not one read twice: index paging (SCIM) may show an account again when others move.
    doubled = (seen.exclude(key="").values("key").annotate(n=Count("external_id", distinct=True))
               .filter(n__gt=1).values_list("key", flat=True))
    for key in doubled.iterator(chunk_size=page_size):
        ids = sorted(set(seen.filter(key=key).values_list("external_id", flat=True)))
        Finding.objects.create(run=run, system=system, employee_number=key, kind=Kind.DUPLICATE,
                               theirs=", ".join(ids)[:2000], external_id=ids[0], repair=Repair.REPORT_ONLY)
        # Which of the two is the person's is the operator's call: no drift (nor repair) from either.
        Finding.objects.filter(run=run, system=system, kind=Kind.DRIFT, employee_number=key).delete()
    return compared


def _repair(run: ReconciliationRun, systems: list[str], *, force: bool, page_size: int) -> dict:
    """Open the planned repairs as queue work, unless a system's count is over the guard's limit."""
    planned = Finding.objects.filter(run=run, repair=Repair.PLANNED)
    report = {}
    for system in systems:
        accounts = planned.filter(system=system).values("account_id").distinct().count()
        total = Account.objects.filter(system=system, status=Account.Status.CREATED).count()
        limit = repair_limit(total)
        report[system] = {"planned": accounts, "limit": limit, "held": False, "opened": 0}
        if accounts > limit and not force:
            report[system]["held"] = True
    held = [s for s, r in report.items() if r["held"]]
    if held:
        planned.update(repair=Repair.HELD)
        return report
    for system in systems:
        report[system]["opened"] = _open_repairs(run, system, page_size)
    return report


def _open_repairs(run: ReconciliationRun, system: str, page_size: int) -> int:
    opened = 0
    findings = Finding.objects.filter(run=run, system=system, repair=Repair.PLANNED).exclude(account=None)
    while True:
        with transaction.atomic():
            page = list(findings.select_related("account").order_by("id")[:page_size])
            if not page:
                return opened
            now = timezone.now()
            missing = {f.account_id for f in page if f.kind == Kind.MISSING}
            drifted: dict[int, dict] = {}
            for f in page:
                if f.kind == Kind.DRIFT:
                    drifted.setdefault(f.account_id, {})[f.field] = (f.theirs == "true") if f.field == "active" \
                        else f.theirs
            # What the target holds is what the account was last given now: open_changes brings it back.
            accounts = list(wait_locked(Account.objects.filter(pk__in=drifted).order_by("id")).only("id", "applied"))
            update_from_arrays(Account, match={"id": [a.pk for a in accounts]},
                               values={"applied": [{**(a.applied or {}), **drifted[a.pk]} for a in accounts]},
                               constants={"updated_at": now})
            recreate = list(wait_locked(Account.objects.filter(pk__in=missing).order_by("id"))
                            .only("id", "person_id", "system"))
            Account.objects.filter(pk__in=missing).update(
                status=Account.Status.NOT_CREATED, external_id="", applied={}, updated_at=now)
            open_creation_tasks({(a.person_id, a.system) for a in recreate})
            open_changes({f.account.person_id for f in page if f.account_id in drifted}, now=now)
            Finding.objects.filter(pk__in=[f.pk for f in page]).update(repair=Repair.OPENED)
            opened += len(missing) + len(drifted)


def reconcile(*, systems: list[str] | None = None, repair: bool = False, dry_run: bool = False,
              force: bool = False, triggered_by: str = "") -> ReconciliationRun:
    """One reconciliation run over `systems` (default: every provisioned one); returns the run, failed or not.

    A dry run compares and reports; it never repairs. A run that fails half way keeps what it compared,
    where each system stopped and why.
    """
    systems = list(systems or settings.PROVISIONING_SYSTEMS)
    page_size = settings.RECONCILE_PAGE_SIZE
    repair_limit(0)  # a malformed RECONCILE_MAX_REPAIRS stops the run before it reads anything
    mode = ReconciliationRun.Mode.DRY_RUN if dry_run else ReconciliationRun.Mode.RUN
    run = ReconciliationRun.objects.create(systems=systems, repair=repair and not dry_run, force=force, mode=mode,
                                           triggered_by=triggered_by[:128])
    tallies = {system: _SystemTally() for system in systems}
    try:
        for system in systems:
            backend, tally = get_backend(system), tallies[system]
            if backend.can_list:
                _read_listing(run, system, backend, tally, page_size)
            else:
                _read_by_lookups(run, system, backend, tally, page_size)
            tally.compared = _missing_and_duplicates(run, system, page_size)
            tally.stopped_at, tally.finished = None, True
        if run.repair:
            run.repairs = _repair(run, systems, force=force, page_size=page_size)
            held = [s for s, r in run.repairs.items() if r["held"]]
            if held:
                run.note = ("修复未执行：" + "; ".join(
                    f"{s} 需修复 {run.repairs[s]['planned']} 个账号，超过上限 {run.repairs[s]['limit']}" for s in held)
                    + "（RECONCILE_MAX_REPAIRS）；确认无误后使用 --force 重新运行。")
        run.status = ReconciliationRun.Status.COMPLETED
    except ListingFailed as exc:
        run.status, run.note = ReconciliationRun.Status.FAILED, f"读取目标系统失败：{exc}"
    except Exception as exc:
        logger.exception("reconciliation run %s failed", run.pk)
        run.status, run.note = ReconciliationRun.Status.FAILED, f"{type(exc).__name__}: {exc}"[:4000]
    finally:
        run.compared = {system: tally.as_dict() for system, tally in tallies.items()}
        run.counts = dict(Finding.objects.filter(run=run).values_list("kind").annotate(n=Count("id")))
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "note", "compared", "counts", "repairs", "finished_at"])
        ReconciliationSeen.objects.filter(run=run).delete()
    return run



@transaction.atomic
def orphans_link(findings) -> int:
    """Link orphans to the persons they belong to (the operator's call, from the admin): the account is ours
    from now on, and an update brings it to the person's values. Only an orphan whose employee number is a
    person of ours, with no account there yet and nothing open for it, can be linked; returns how many were."""
    linked = 0
    now = timezone.now()
    for finding in Finding.objects.select_for_update().filter(
            pk__in=[f.pk for f in findings], kind=Kind.ORPHAN).exclude(repair=Repair.OPENED).order_by("id"):
        person = HrPerson.objects.filter(employee_number=finding.employee_number).first()
        if person is None or not finding.external_id:
            continue
        busy = AccountCreationTask.objects.filter(person=person, system=finding.system,
                                                  status__in=AccountCreationTask.OPEN_STATUSES).exists()
        account, _ = Account.objects.select_for_update().get_or_create(person=person, system=finding.system)
        if busy or account.status == Account.Status.CREATED:
            continue
        # What the target holds is not known field by field: every value is sent once (the update below).
        Account.objects.filter(pk=account.pk).update(
            status=Account.Status.CREATED, external_id=finding.external_id, applied={"active": True},
            change_status=Account.ChangeStatus.NONE, error_message="", provisioned_at=now, updated_at=now)
        open_changes({person.pk}, now=now)
        Finding.objects.filter(pk=finding.pk).update(repair=Repair.OPENED, account=account)
        linked += 1
    return linked
