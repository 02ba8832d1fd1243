"""Accounts stay true after they are created: movers, leavers (HR and the API) and returners, on the queue."""

import json

import pytest

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    AccountEvent,
    HrPerson,
    LocalTargetAccount,
    TaskAttempt,
)
from syncservice.selectors import account_history
from syncservice.services.lifecycle import tasks_retry

from .fixtures import document, make_users, requires_postgres, run_pipeline, stage, submit

pytestmark = [pytest.mark.django_db(transaction=True), requires_postgres]
SYSTEMS = {"idaas", "welink", "email"}


def hr_file(tmp_path, persons) -> str:
    path = tmp_path / "hr.json"
    path.write_text(json.dumps(persons, ensure_ascii=False))
    return str(path)


def hr_person(number: str, name: str, updated: str, *, phone="13700000001", dept="HR1", status="1") -> dict:
    return {"person_id": int(number[1:]), "employee_number": number, "full_name": name, "last_update_date": updated,
            "telephone_number1": phone, "person_type": "员工", "employee_status": status,
            "person_dept": [{"department_code": dept, "partner_company": "", "country": "中国"}]}


def targets(number: str) -> dict[str, LocalTargetAccount]:
    return {a.system: a for a in LocalTargetAccount.objects.filter(employee_number=number)}


def calls() -> int:
    return TaskAttempt.objects.count()


@pytest.fixture
def hr(settings, tmp_path, fast_retries):
    """Write the HR source's persons: hr(person, ...) replaces the file the local HR backend reads."""
    def write(*persons):
        settings.LOCAL_HR_PERSONS_FILE = hr_file(tmp_path, list(persons))
    return write


def test_an_hr_mover_reaches_every_account_and_a_sync_without_change_calls_nothing(hr):
    hr(hr_person("H1", "王伟", "2026-01-01T00:00:00Z"))
    run_pipeline()
    assert {a.system: a.active for a in targets("H1").values()} == dict.fromkeys(SYSTEMS, True)
    address = HrPerson.objects.get().email

    hr(hr_person("H1", "王伟明", "2026-02-01T00:00:00Z", phone="13900000009", dept="FIN"))
    run_pipeline()

    for system, account in targets("H1").items():
        assert (account.full_name, account.mobile, account.department_code, account.email, account.active) == \
            ("王伟明", "13900000009", "FIN", address, True), system
    tasks = AccountCreationTask.objects.filter(operation="update")
    assert {(t.system, t.status) for t in tasks} == {(s, "succeeded") for s in SYSTEMS}
    assert set(tasks.get(system="idaas").change["fields"]) == {"full_name", "phone_number", "department_code"}
    events = AccountEvent.objects.filter(operation="update", result="succeeded")
    assert events.count() == 3
    assert all(set(e.fields) >= {"full_name", "phone_number"} for e in events)

    # The HR source answers the same records again (the sync re-reads an overlap): no change, no call.
    before = calls()
    run_pipeline()
    run_pipeline()
    assert calls() == before
    assert AccountCreationTask.objects.count() == 6


def test_several_changes_before_the_worker_runs_make_one_task_with_the_latest_values(hr):
    hr(hr_person("H2", "李娜", "2026-01-01T00:00:00Z"))
    run_pipeline()
    for n, name in enumerate(["李娜娜", "李娜一", "李娜二"]):
        hr(hr_person("H2", name, f"2026-02-0{n + 1}T00:00:00Z"))
        stage("sync_hr_persons")

    updates = AccountCreationTask.objects.filter(operation="update")
    assert updates.count() == 3  # one per system
    assert {t.change["values"]["full_name"] for t in updates} == {"李娜二"}
    stage("process_account_creation_tasks")
    assert {a.full_name for a in targets("H2").values()} == {"李娜二"}
    assert TaskAttempt.objects.filter(task__operation="update").count() == 3


def test_a_change_is_never_sent_before_the_account_exists(hr):
    hr(hr_person("H3", "赵敏", "2026-01-01T00:00:00Z"))
    stage("sync_hr_persons")
    stage("create_account_tasks")
    hr(hr_person("H3", "赵敏敏", "2026-02-01T00:00:00Z"))
    stage("sync_hr_persons")
    assert not AccountCreationTask.objects.exclude(operation="create").exists()

    stage("process_account_creation_tasks")  # created with the values of its claim: the new name already
    assert {a.full_name for a in targets("H3").values()} == {"赵敏敏"}
    assert not AccountCreationTask.objects.exclude(operation="create").exists()


def test_an_hr_leaver_is_disabled_everywhere_and_a_returner_comes_back_with_the_same_address(hr):
    hr(hr_person("H4", "孙丽", "2026-01-01T00:00:00Z"))
    run_pipeline()
    address = HrPerson.objects.get().email
    ids = {s: a.external_id for s, a in targets("H4").items()}

    hr(hr_person("H4", "孙丽", "2026-02-01T00:00:00Z", status="离职"))
    run_pipeline()
    assert {s: a.active for s, a in targets("H4").items()} == dict.fromkeys(SYSTEMS, False)
    assert set(Account.objects.values_list("enabled", flat=True)) == {False}
    assert {t.operation for t in AccountCreationTask.objects.filter(status="succeeded")} >= {"disable"}

    hr(hr_person("H4", "孙丽", "2026-03-01T00:00:00Z", status="1"))
    run_pipeline()
    back = targets("H4")
    assert {s: a.active for s, a in back.items()} == dict.fromkeys(SYSTEMS, True)
    assert {s: a.external_id for s, a in back.items()} == ids
    assert {a.email for a in back.values()} == {address}
    assert LocalTargetAccount.objects.count() == 3
    history = account_history(Account.objects.get(system="idaas"))
    assert [(e["operation"], e["result"]) for e in history] == [
        ("create", "succeeded"), ("disable", "succeeded"), ("enable", "succeeded")]


def test_a_new_hr_person_who_already_left_gets_no_accounts(hr):
    hr(hr_person("H5", "周杰", "2026-01-01T00:00:00Z", status="离职"))
    run_pipeline()
    assert not LocalTargetAccount.objects.exists()
    assert not AccountCreationTask.objects.exists()


def deactivate(caller, **body):
    return caller.post_json("/account-creation/deactivate_accounts/", body)


def test_the_api_deactivates_only_the_origins_own_persons_and_tracks_it_like_a_creation(
        hr_caller, make_caller, fast_retries):
    other = make_caller("SUPPLIER")
    submit(hr_caller)  # TEST001, TEST002
    submit(other, originSystem="SUPPLIER", businessKey="S1", userList=[
        {"employeeNumber": "SUP001", "employeeName": "钱七", "departmentCode": "D9", "phoneNumber": "13600000001"}])
    run_pipeline()
    assert LocalTargetAccount.objects.filter(active=True).count() == 9

    refused = deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="LEAVE1",
                         userList=[{"employeeNumber": "TEST001"}, {"employeeNumber": "SUP001"},
                                   {"employeeNumber": "NOBODY"}])
    assert refused.status_code == 400
    body = refused.json()
    assert (body["success"], body["code"]) == (False, "validation_error")
    assert [(e["field"], e["code"]) for e in body["errors"]] == [
        ("userList[1].employeeNumber", "not_submitted_by_origin"),
        ("userList[2].employeeNumber", "not_submitted_by_origin")]
    assert AccountCreationRequest.objects.filter(request_type="deactivate").count() == 0

    accepted = deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="LEAVE1",
                          systemList=["idaas", "welink"], userList=[{"employeeNumber": "TEST001"}])
    assert accepted.status_code == 202, accepted.content
    request_id = accepted.json()["requestId"]
    assert accepted["Location"] == f"/account-creation/requests/{request_id}/"
    again = deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="LEAVE1",
                       systemList=["idaas", "welink"], userList=[{"employeeNumber": "TEST001"}])
    assert (again.status_code, again.json()["requestId"]) == (200, request_id)
    assert deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="LEAVE1",
                      userList=[{"employeeNumber": "TEST002"}]).status_code == 409

    run_pipeline()

    doc = document(hr_caller, request_id)
    assert (doc["requestType"], doc["status"], doc["processedUsers"]) == ("deactivate", "completed", 1)
    states = {a["system"]: (a["state"], a["enabled"], a["lastChange"]["operation"])
              for a in doc["items"][0]["accounts"]}
    assert states == {"idaas": ("disabled", False, "disable"), "welink": ("disabled", False, "disable")}
    assert {s: a.active for s, a in targets("TEST001").items()} == {"idaas": False, "welink": False, "email": True}
    assert all(a.active for a in targets("TEST002").values())
    assert all(a.active for a in targets("SUP001").values())
    log = hr_caller.get(f"/account-creation/requests/{request_id}/items/{doc['items'][0]['id']}/log/").json()
    assert {(e["system"], e["operation"], e["outcome"]) for e in log["results"]} >= {
        ("idaas", "disable", "applied"), ("welink", "disable", "applied")}


def test_a_deactivation_cancels_a_pending_creation_instead_of_completing_it(hr_caller, fast_retries):
    create_id = submit(hr_caller)
    stage("sync_hr_persons")
    stage("create_account_tasks")  # tasks open, nothing called yet

    response = deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="LEAVE2",
                          userList=[{"employeeNumber": "TEST001"}])
    assert response.status_code == 202
    run_pipeline()

    assert not LocalTargetAccount.objects.filter(employee_number="TEST001").exists()
    assert len(targets("TEST002")) == 3
    person_tasks = AccountCreationTask.objects.filter(person__employee_number="TEST001")
    assert set(person_tasks.values_list("status", flat=True)) == {"cancelled"}
    deactivation = document(hr_caller, response.json()["requestId"])
    assert deactivation["status"] == "completed"
    creation = document(hr_caller, create_id)
    assert creation["status"] == "partial_failed"
    item = next(i for i in creation["items"] if i["employeeNumber"] == "TEST001")
    assert item["status"] == "failed"
    assert {a["state"] for a in item["accounts"]} == {"disabled"}


def test_a_resubmission_moves_an_api_person_and_brings_a_deactivated_one_back(hr_caller, fast_retries):
    submit(hr_caller, userList=[{"employeeNumber": "API1", "employeeName": "吴刚", "departmentCode": "D1",
                                 "phoneNumber": "13800000001"}])
    run_pipeline()
    address = HrPerson.objects.get().email
    deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="OUT", userList=[{"employeeNumber": "API1"}])
    run_pipeline()
    assert not any(a.active for a in targets("API1").values())

    again = submit(hr_caller, businessKey="BACK", userList=[
        {"employeeNumber": "API1", "employeeName": "吴刚", "departmentCode": "D2", "phoneNumber": "13800000002"}])
    run_pipeline()

    doc = document(hr_caller, again)
    assert doc["status"] == "completed"
    assert {a["state"] for a in doc["items"][0]["accounts"]} == {"created"}
    for system, account in targets("API1").items():
        assert (account.active, account.department_code, account.mobile, account.email) == \
            (True, "D2", "13800000002", address), system
    assert LocalTargetAccount.objects.count() == 3


def test_a_change_that_fails_for_good_names_its_operation(hr, settings):
    hr(hr_person("H6", "郑爽", "2026-01-01T00:00:00Z"))
    run_pipeline()
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = "^H6$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]
    hr(hr_person("H6", "郑爽爽", "2026-02-01T00:00:00Z"))
    run_pipeline()

    account = Account.objects.get(system="welink")
    assert (account.status, account.change_status) == ("created", "failed")
    assert account.error_message.startswith("更新失败：[LOCAL-422]")
    assert account.last_change["operation"] == "update" and account.last_change["result"] == "failed"
    assert targets("H6")["idaas"].full_name == "郑爽爽"
    assert targets("H6")["welink"].full_name == "郑爽"

    # Tried again (the admin's task retry) once the target takes it: the current values arrive.
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = ""
    failed = AccountCreationTask.objects.filter(system="welink", operation="update", status="failed")
    assert tasks_retry(tasks=list(failed)) == 1
    stage("process_account_creation_tasks")
    assert targets("H6")["welink"].full_name == "郑爽爽"
    account.refresh_from_db()
    assert (account.change_status, account.error_message, account.last_change["result"]) == ("", "", "succeeded")
    assert set(AccountCreationTask.objects.filter(system="welink", operation="update")
               .values_list("status", flat=True)) == {"retried", "succeeded"}


# --- several workers, killed at random moments, on changes ---------------------------------------------

MOVERS = 60


@pytest.mark.slow
def test_changes_under_several_killed_workers_end_true_with_one_account_each(hr_caller, fast_retries):
    import random
    import signal
    import time

    from .test_concurrency import manage, subprocess_env, wait_until

    users = [{"employeeNumber": f"M{i:04d}", "employeeName": "陈一", "departmentCode": "D1",
              "phoneNumber": f"137{i:08d}"} for i in range(MOVERS)]
    submit(hr_caller, businessKey="MOVE-0", userList=users)
    run_pipeline()
    assert LocalTargetAccount.objects.count() == MOVERS * 3
    # Everyone moves department and gets a new mobile; the first half also leaves.
    submit(hr_caller, businessKey="MOVE-1", userList=[
        {**u, "departmentCode": "D2", "phoneNumber": f"136{i:08d}"} for i, u in enumerate(users)])
    leavers = [u["employeeNumber"] for u in users[:MOVERS // 2]]
    assert deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="MOVE-OUT",
                      userList=[{"employeeNumber": n} for n in leavers]).status_code == 202

    env = subprocess_env(LOCAL_BACKEND_LATENCY_MS=200, IDAAS_CONCURRENCY=2, WELINK_CONCURRENCY=2,
                         MAILBOX_CONCURRENCY=2, LOCAL_WELINK_ASYNC=1, STAGE_BATCH_SIZE=10, TASK_LEASE_SECONDS=3)
    rng = random.Random(13)
    kills = 0
    for _ in range(4):
        workers = [manage("run_scheduler", "--interval", "0.2", env=env) for _ in range(2)]
        time.sleep(rng.uniform(1.0, 2.5))
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
            kills += 1
    finishers = [manage("run_scheduler", "--interval", "0.2", env=env) for _ in range(2)]
    try:
        done = wait_until(lambda: not AccountCreationTask.objects.filter(
            status__in=AccountCreationTask.OPEN_STATUSES).exists() and not AccountCreationRequest.objects.filter(
            status__in=["pending", "processing"]).exists(), timeout=180, interval=0.5)
    finally:
        for worker in finishers:
            worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=60) for worker in finishers]
    assert done, outputs
    assert kills == 8

    # One account per person and system, each holding the person's current values and active state.
    assert LocalTargetAccount.objects.count() == MOVERS * 3
    for account in LocalTargetAccount.objects.all():
        i = int(account.employee_number[1:])
        assert (account.department_code, account.mobile) == ("D2", f"136{i:08d}"), account.employee_number
        assert account.active == (account.employee_number not in leavers), account.employee_number
    assert set(Account.objects.values_list("status", "change_status")) == {("created", "")}
    assert not AccountCreationTask.objects.filter(status__in=["failed", "running"]).exists()
    statuses = dict(AccountCreationRequest.objects.values_list("business_key", "status"))
    assert statuses == {"MOVE-0": "completed", "MOVE-1": "partial_failed", "MOVE-OUT": "completed"}
    # The resubmission asked for active accounts of persons who then left: those items end failed, disabled.
    failed = AccountCreationRequestItem.objects.filter(request__business_key="MOVE-1", status="failed")
    assert sorted(failed.values_list("employee_number", flat=True)) == leavers


def test_a_deactivation_is_validated_like_a_creation_every_error_at_once_nothing_stored(hr_caller):
    response = deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="", systemList=["idaas", "crm", "idaas"],
                          userList=[{"employeeNumber": "E1"}, {"employeeNumber": "e1"}, {"employeeNumber": " x"},
                                    {"employeeNumber": "E2", "phone": "1"}, "E3"], extra=1)
    assert response.status_code == 400
    body = response.json()
    assert (body["success"], body["code"]) == (False, "validation_error")
    assert {(e["field"], e["code"]) for e in body["errors"]} == {
        ("extra", "unknown_field"), ("businessKey", "blank"), ("systemList[1]", "invalid_choice"),
        ("systemList[2]", "duplicate"), ("userList[1].employeeNumber", "duplicate"),
        ("userList[2].employeeNumber", "invalid_format"), ("userList[3].phone", "unknown_field"),
        ("userList[4]", "invalid_type")}
    assert not AccountCreationRequest.objects.exists()
    assert deactivate(hr_caller, originSystem="HR_SYSTEM", businessKey="K", userList=[]).json()["errors"] == [
        {"field": "userList", "code": "empty", "message": "请至少指定一个用户。"}]


def test_a_change_that_raises_costs_no_creation_of_its_batch_its_outcome(hr, hr_caller, monkeypatch):
    from syncservice.backends.local import LocalMailboxBackend
    from syncservice.services.provisioning import ensure_accounts

    hr(hr_person("H7", "周杰", "2026-01-01T00:00:00Z"))
    run_pipeline()
    hr(hr_person("H7", "周杰伦", "2026-02-01T00:00:00Z"))
    submit(hr_caller, businessKey="BATCH-MIX", userList=make_users(1, "N"))
    stage("sync_hr_persons")
    stage("create_account_tasks")
    tasks = list(AccountCreationTask.objects.filter(system="email", status="pending").select_related("person")
                 .order_by("operation"))
    assert [t.operation for t in tasks] == ["create", "update"]

    def broken(self, person, change, state):
        raise KeyError("a bug in one change")

    monkeypatch.setattr(LocalMailboxBackend, "apply_change", broken)
    outcomes = ensure_accounts("email", tasks)

    assert outcomes[0].kind == "created"
    assert (outcomes[1].kind, outcomes[1].code) == ("transient", "exception")
