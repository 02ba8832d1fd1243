"""Reconciliation against the local targets: findings exactly as the targets drifted, repairs on the queue."""

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.core.management import CommandError

from syncservice.models import (
    Account,
    AccountCreationTask,
    AuditEntry,
    LocalTargetAccount,
    OrphanAction,
    ReconciliationFinding,
    ReconciliationRun,
)
from taskmanagement.models import TaskRun

from .fixtures import admin_action, make_users, requires_postgres, run_pipeline, stage, submit

pytestmark = [pytest.mark.django_db(transaction=True), requires_postgres]


@pytest.fixture
def provisioned(hr_caller, fast_retries, settings):
    """Ten persons with accounts in the three local targets; the targets are then changed by hand."""
    settings.RECONCILE_PAGE_SIZE = 3  # several pages per system
    submit(hr_caller, businessKey="RECON", userList=make_users(10, "R"))
    run_pipeline()
    assert LocalTargetAccount.objects.count() == 30
    return hr_caller


def target(system: str, number: str) -> LocalTargetAccount:
    return LocalTargetAccount.objects.get(system=system, employee_number=number)


def findings(run_id: int) -> set[tuple]:
    return set(ReconciliationFinding.objects.filter(run_id=run_id).values_list(
        "system", "employee_number", "kind", "field", "theirs"))


def latest() -> ReconciliationRun:
    return ReconciliationRun.objects.latest("id")


def drift_the_targets() -> None:
    target("idaas", "R000001").delete()                                       # missing
    LocalTargetAccount.objects.filter(system="welink", employee_number="R000002").update(full_name="改名")
    LocalTargetAccount.objects.filter(system="email", employee_number="R000003").update(active=False)
    LocalTargetAccount.objects.create(system="idaas", employee_number="STRANGER1", external_id="idaas-x1",
                                      full_name="陌生人", email="stranger@example.com")  # orphan
    LocalTargetAccount.objects.create(system="welink", employee_number="", external_id="welink-hand",
                                      full_name="手工", email="hand@example.com")  # orphan by its address


def test_the_report_lists_exactly_what_changed_at_the_targets(provisioned):
    assert "no findings" in stage("reconcile_accounts", "--dry-run")
    drift_the_targets()

    out = stage("reconcile_accounts", "--dry-run")

    run = latest()
    assert (run.status, run.mode, run.repair) == ("completed", "dry_run", False)
    assert findings(run.pk) == {
        ("idaas", "R000001", "missing", "", ""),
        ("welink", "R000002", "drift", "full_name", "改名"),
        ("email", "R000003", "drift", "active", "false"),
        ("idaas", "STRANGER1", "orphan", "", "stranger@example.com"),
        ("welink", "", "orphan", "", "hand@example.com"),
    }
    assert run.counts == {"missing": 1, "drift": 2, "orphan": 2}
    assert run.compared["idaas"] == {"target": 10, "compared": 10, "orphansCheckable": True, "stoppedAt": None,
                                     "finished": True}
    assert "missing 1" in out and "orphan 2" in out
    assert not AccountCreationTask.objects.exclude(operation="create").exists()  # a dry run repairs nothing


def test_repair_fixes_missing_drifted_and_wrongly_active_and_leaves_orphans_alone(provisioned, settings):
    drift_the_targets()
    settings.RECONCILE_MAX_REPAIRS = "50%"

    stage("reconcile_accounts", "--repair")
    run_pipeline()

    assert target("idaas", "R000001").full_name == "王小明"  # recreated
    assert Account.objects.get(system="idaas", person__employee_number="R000001").external_id == \
        target("idaas", "R000001").external_id
    assert target("welink", "R000002").full_name == "王小明"
    assert target("email", "R000003").active is True
    assert LocalTargetAccount.objects.filter(employee_number__in=["STRANGER1", ""]).count() == 2  # untouched
    repairs = dict(ReconciliationFinding.objects.filter(run=latest()).values_list("kind", "repair").distinct())
    assert repairs["orphan"] == "report_only"

    stage("reconcile_accounts", "--dry-run")
    assert set(ReconciliationFinding.objects.filter(run=latest()).values_list("kind", flat=True)) == {"orphan"}


def test_the_guard_holds_a_mass_repair_back_until_forced(provisioned):
    # 4 of 10 IDaaS accounts deleted by hand: 40%, over the default 5%.
    LocalTargetAccount.objects.filter(system="idaas", employee_number__in=["R000000", "R000001", "R000002",
                                                                            "R000003"]).delete()

    summary = stage("reconcile_accounts", "--repair")

    run = latest()
    assert run.repairs["idaas"] == {"planned": 4, "limit": 0, "held": True, "opened": 0}
    assert "RECONCILE_MAX_REPAIRS" in run.note and "--force" in run.note
    assert "held back" in summary
    assert set(ReconciliationFinding.objects.filter(run=run).values_list("repair", flat=True)) == {"held"}
    assert not AccountCreationTask.objects.filter(status="pending").exists()

    stage("reconcile_accounts", "--repair", "--force")
    run_pipeline()
    assert LocalTargetAccount.objects.filter(system="idaas").count() == 10


def test_duplicates_are_reported_never_changed(provisioned, monkeypatch):
    # Two accounts of one person at the target (a vendor bug; the local table's key cannot hold one).
    from syncservice.backends.base import AccountPage, TargetAccount
    from syncservice.backends.local import LocalBackend

    real = LocalBackend.list_accounts

    def doubled(self, *, cursor, page_size):
        page = real(self, cursor=cursor, page_size=page_size)
        if self.system == "idaas" and cursor is None:
            twin = TargetAccount(external_id="idaas-twin", key=page.accounts[0].key, full_name="王小明")
            return AccountPage(accounts=[*page.accounts, twin], next_cursor=page.next_cursor)
        return page

    monkeypatch.setattr(LocalBackend, "list_accounts", doubled)
    stage("reconcile_accounts", "--repair", "--system", "idaas")

    [duplicate] = ReconciliationFinding.objects.filter(run=latest(), kind="duplicate")
    assert "idaas-twin" in duplicate.theirs and duplicate.repair == "report_only"
    assert not AccountCreationTask.objects.filter(status="pending").exists()


def test_a_run_that_fails_half_way_says_where_it_stopped(provisioned, monkeypatch):
    from syncservice.backends.base import ListingFailed
    from syncservice.backends.local import LocalBackend

    calls = {"n": 0}
    real = LocalBackend.list_accounts

    def failing(self, *, cursor, page_size):
        calls["n"] += 1
        if self.system == "welink" and cursor is not None:
            raise ListingFailed("503", "welink unavailable")
        return real(self, cursor=cursor, page_size=page_size)

    monkeypatch.setattr(LocalBackend, "list_accounts", failing)
    with pytest.raises(CommandError, match="welink unavailable"):
        stage("reconcile_accounts")

    run = latest()
    assert run.status == "failed"
    assert "welink unavailable" in run.note
    assert run.compared["idaas"]["finished"] is True
    assert run.compared["welink"]["finished"] is False and run.compared["welink"]["stoppedAt"] is not None
    assert run.compared["welink"]["target"] == 3
    assert TaskRun.objects.filter(stage="reconcile_accounts").latest("id").outcome == "failed"


def test_the_api_runs_lists_and_pages_findings(provisioned, operator_caller, make_caller):
    drift_the_targets()
    response = operator_caller.post_json("/task-management/reconcile_accounts/",
                                         {"mode": "dry_run", "systems": ["idaas", "welink"]})
    assert response.status_code == 200, response.content
    run_id = response.json()["counts"]["reconciliation_id"]

    listed = operator_caller.get("/task-management/reconciliations/").json()
    assert listed["results"][0]["id"] == run_id
    detail = operator_caller.get(f"/task-management/reconciliations/{run_id}/?page_size=2").json()
    assert detail["counts"] == {"missing": 1, "drift": 1, "orphan": 2}
    assert detail["findings"]["count"] == 4 and len(detail["findings"]["results"]) == 2
    orphans = operator_caller.get(f"/task-management/reconciliations/{run_id}/?kind=orphan").json()
    assert {f["externalId"] for f in orphans["findings"]["results"]} == {"idaas-x1", "welink-hand"}

    bad = operator_caller.post_json("/task-management/reconcile_accounts/",
                                    {"mode": "now", "systems": ["crm"], "repair": "yes"})
    assert bad.status_code == 400
    assert {e["field"] for e in bad.json()["errors"]} == {"mode", "repair", "systems[0]"}
    assert operator_caller.get("/task-management/reconciliations/999999/").status_code == 404
    origin = make_caller("SUPPLIER")
    assert origin.get("/task-management/reconciliations/").status_code == 403


def test_an_operator_links_an_orphan_that_belongs_to_a_person_of_ours(provisioned, staff_client):
    # R000005's IDaaS account was made by hand before the service created it: ours forgets it, the target keeps it.
    Account.objects.filter(system="idaas", person__employee_number="R000005").update(status="not_created",
                                                                                     external_id="")
    stage("reconcile_accounts", "--dry-run", "--system", "idaas")
    orphan = ReconciliationFinding.objects.get(run=latest(), kind="orphan")
    assert orphan.employee_number == "R000005"

    admin_action(staff_client, "reconciliationfinding", "link_orphans", [orphan.pk])
    run_pipeline()

    account = Account.objects.get(system="idaas", person__employee_number="R000005")
    assert (account.status, account.external_id) == ("created", target("idaas", "R000005").external_id)
    stage("reconcile_accounts", "--dry-run", "--system", "idaas")
    assert not ReconciliationFinding.objects.filter(run=latest()).exists()


def test_an_operator_disables_an_orphan_through_the_queue(provisioned, staff_client, django_user_model):
    drift_the_targets()
    stage("reconcile_accounts", "--dry-run", "--system", "idaas")
    orphan = ReconciliationFinding.objects.get(run=latest(), kind="orphan")
    drift = ReconciliationFinding.objects.filter(run=latest()).exclude(kind="orphan").first()
    assert orphan.external_id == "idaas-x1"

    # A staff user who may only look cannot act on a finding.
    viewer = django_user_model.objects.create_user("viewer", password="pw-for-tests-only", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_reconciliationfinding"))
    staff_client.force_login(viewer)
    staff_client.post("/admin/syncservice/reconciliationfinding/",
                      {"action": "disable_orphans", "_selected_action": [orphan.pk]})
    assert not OrphanAction.objects.exists()

    staff_client.force_login(django_user_model.objects.create_superuser("ops2", "o@example.com", "pw-for-tests"))
    admin_action(staff_client, "reconciliationfinding", "disable_orphans", [orphan.pk, drift.pk])
    action = OrphanAction.objects.get()
    assert (action.finding_id, action.status, action.requested_by) == (orphan.pk, "pending", "ops2")
    orphan.refresh_from_db()
    assert orphan.repair == "opened"
    # Nothing at the target changes before the process stage runs it; a second disable is refused.
    assert target("idaas", "STRANGER1").active is True
    admin_action(staff_client, "reconciliationfinding", "disable_orphans", [orphan.pk])
    assert OrphanAction.objects.count() == 1

    stage("process_account_creation_tasks")

    action.refresh_from_db()
    stranger = target("idaas", "STRANGER1")
    assert (action.status, action.attempts, action.finished_at is not None) == ("succeeded", 1, True)
    assert (stranger.active, stranger.full_name, stranger.email) == (False, "陌生人", "stranger@example.com")
    entry = AuditEntry.objects.get(action="reconciliation.disable")
    assert (entry.actor, entry.object_id) == ("ops2", str(orphan.pk))
    assert LogEntry.objects.filter(object_id=str(orphan.pk), change_message="停用对账发现的账号").exists()
    # The operator sees the action's state as the other queues' rows show theirs: a badge.
    for path in ("/admin/syncservice/orphanaction/", f"/admin/syncservice/orphanaction/{action.pk}/change/"):
        page = staff_client.get(path)
        assert page.status_code == 200 and b'data-status="succeeded"' in page.content
    # Our own accounts were not touched.
    assert LocalTargetAccount.objects.filter(system="idaas", active=False).count() == 1


def test_an_orphan_that_became_ours_is_not_disabled(provisioned, staff_client):
    drift_the_targets()
    stage("reconcile_accounts", "--dry-run", "--system", "idaas")
    orphan = ReconciliationFinding.objects.get(run=latest(), kind="orphan")
    Account.objects.filter(system="idaas", person__employee_number="R000009").update(external_id="idaas-x1")

    admin_action(staff_client, "reconciliationfinding", "disable_orphans", [orphan.pk])

    assert not OrphanAction.objects.exists()
    assert ReconciliationFinding.objects.get(pk=orphan.pk).repair == "report_only"


def test_a_failed_orphan_disable_is_retried_then_reported(provisioned, staff_client, settings):
    drift_the_targets()
    stage("reconcile_accounts", "--dry-run", "--system", "idaas")
    orphan = ReconciliationFinding.objects.get(run=latest(), kind="orphan")
    admin_action(staff_client, "reconciliationfinding", "disable_orphans", [orphan.pk])
    target("idaas", "STRANGER1").delete()  # gone at the target before the stage ran

    stage("process_account_creation_tasks")

    action = OrphanAction.objects.get()
    assert (action.status, action.last_error_code) == ("failed", "account_missing")


def test_an_orphan_that_became_ours_after_the_disable_was_asked_is_not_switched_off(provisioned, staff_client):
    drift_the_targets()
    stage("reconcile_accounts", "--dry-run", "--system", "idaas")
    orphan = ReconciliationFinding.objects.get(run=latest(), kind="orphan")
    admin_action(staff_client, "reconciliationfinding", "disable_orphans", [orphan.pk])
    # Before the stage runs, a creation links the existing account to a person of ours.
    Account.objects.filter(system="idaas", person__employee_number="R000009").update(external_id="idaas-x1")

    stage("process_account_creation_tasks")

    action = OrphanAction.objects.get()
    assert (action.status, action.last_error_code) == ("failed", "account_claimed")
    assert target("idaas", "STRANGER1").active is True
