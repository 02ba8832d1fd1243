"""The real pipeline stages against the simulators and scim2-server: every account ends created exactly once."""

import datetime as dt
import logging
import time
from io import StringIO

import pytest
import requests
from django.core.management import call_command

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationTask,
    HrPerson,
    ReconciliationFinding,
    ReconciliationRun,
    TaskAttempt,
)
from syncservice.simulators.welink import BULK_PATH, STATUS_PATH, USERS_PATH
from syncservice.tests.fixtures import make_users, note_example

from .conftest import EXMAIL_SECRET, HR_TOKEN, SCIM_TOKEN, WELINK_SECRET

pytestmark = pytest.mark.django_db(transaction=True)


def run_stages(deadline_seconds: float = 60) -> None:
    """sync → tasks → process, then process again until no task is open (retries wait out Retry-After)."""
    for name in ("sync_hr_persons", "create_account_tasks"):
        call_command(name, stdout=StringIO())
    deadline = time.monotonic() + deadline_seconds
    while AccountCreationTask.objects.filter(status__in=AccountCreationTask.OPEN_STATUSES).exists():
        assert time.monotonic() < deadline, list(AccountCreationTask.objects.values_list(
            "person__employee_number", "system", "status", "last_error_code", "last_error"))
        call_command("process_account_creation_tasks", stdout=StringIO())
        time.sleep(0.05)


def submit(caller, users: list[dict], systems: list[str], key: str = "E2E-1") -> AccountCreationRequest:
    response = caller.submit(note_example(businessKey=key, systemList=systems, userList=users))
    assert response.status_code == 202, response.content
    return AccountCreationRequest.objects.get(request_id=response.json()["requestId"])


def accounts(system: str) -> dict[str, Account]:
    return {a.person.employee_number: a for a in Account.objects.filter(system=system).select_related("person")}


def attempt_codes(system: str) -> set[str]:
    return set(TaskAttempt.objects.filter(task__system=system).values_list("code", flat=True))


def test_welink_accounts_are_opened_exactly_once_through_faults(hr_caller, welink_sim):
    users = make_users(12, prefix="WL")
    users[5]["phoneNumber"] = "13700000055"
    welink_sim.add_user("SOMEONE-ELSE", name="赵六", mobile="+86-13700000055")
    welink_sim.tokens.lifetime = 0.5                # tickets die while the client trusts them (7200 s)
    welink_sim.tokens.announced_expires_in = 7200
    welink_sim.rate_limit.limit = 3                 # the client-side limit is off: 48503 will happen
    welink_sim.faults.fail(3, status=503, path=STATUS_PATH)   # a whole batch's status poll fails
    welink_sim.faults.drop(2, path=BULK_PATH)       # accepted, answer lost
    welink_sim.faults.drop(1, path=STATUS_PATH, skip=4)
    request = submit(hr_caller, users, ["welink"])

    run_stages()

    request.refresh_from_db()
    assert request.status == "partial_failed"
    opened = accounts("welink")
    failed = opened.pop("WL000005")
    assert failed.status == "failed"
    assert "47120" in failed.error_message
    for number, account in opened.items():
        assert account.status == "created", (number, account.error_message)
        assert account.external_id == number   # the corpUserId: the status answer carries no userId
        assert welink_sim.opened[number] == 1
        assert welink_sim.submissions[number] == 1, number   # a lost answer is polled, not resubmitted
    assert {"47100", "47109", "http_503", "connection_error", "48503"} <= attempt_codes("welink")
    assert welink_sim.tokens.issued >= 2   # the 48503's pause outlived the ticket: it was refreshed


def test_ten_persons_share_each_welink_call_and_a_dropped_bulk_answer_duplicates_nobody(hr_caller, welink_sim):
    users = make_users(10, prefix="WB")
    users[4]["phoneNumber"] = "13700000044"
    welink_sim.add_user("SOMEONE-ELSE", name="赵六", mobile="+86-13700000044")
    welink_sim.faults.drop(1, path=BULK_PATH)       # the ten-person call arrived; its answer is lost
    submit(hr_caller, users, ["welink"], key="E2E-BULK")

    run_stages()

    opened = accounts("welink")
    failed = opened.pop("WB000004")
    assert (failed.status, "47120" in failed.error_message) == ("failed", True)
    assert {a.status for a in opened.values()} == {"created"}
    assert all(welink_sim.opened[number] == 1 and welink_sim.submissions[number] == 1 for number in opened)
    assert welink_sim.calls_to(BULK_PATH) == 1
    calls = sum(welink_sim.calls_to(path) for path in (BULK_PATH, STATUS_PATH, USERS_PATH))
    assert calls / 10 <= 0.5
    # The attempt log: one row per person per attempt, with that person's own code.
    attempts = TaskAttempt.objects.filter(task__system="welink")
    assert attempts.filter(code="connection_error").count() == 10
    assert attempts.filter(code="47120").get().task.person.employee_number == "WB000004"
    assert attempts.filter(code="47109").count() == 9


def test_exmail_mailboxes_are_created_exactly_once_through_faults(hr_caller, exmail_sim):
    users = make_users(10, prefix="EM")
    exmail_sim.tokens.lifetime = 0.3
    exmail_sim.tokens.announced_expires_in = 7200
    exmail_sim.rate_limit.limit = 12
    exmail_sim.faults.fail(2, status=502, path="/cgi-bin/user/create")
    exmail_sim.faults.drop(2, path="/cgi-bin/user/create")
    request = submit(hr_caller, users, ["email"])

    run_stages()

    request.refresh_from_db()
    assert request.status == "completed"
    mailboxes = accounts("email")
    assert len(mailboxes) == 10
    for number, account in mailboxes.items():
        assert account.status == "created", (number, account.error_message)
        assert account.external_id == account.person.email
        assert exmail_sim.created[account.person.email.lower()] == 1
        assert exmail_sim.users[account.person.email.lower()]["extid"] == number
    assert len(exmail_sim.created) == 10
    assert {"http_502", "connection_error"} <= attempt_codes("email")


def test_idaas_users_are_created_exactly_once_on_a_real_scim_server(hr_caller, scim):
    users = make_users(10, prefix=f"SC{time.time_ns() % 10**8}-")
    # scim2-server announces bulk: the ten creations go through POST /Bulk, whose faults hit all ten.
    scim.proxy.faults.fail(1, status=503, method="POST", path="/Bulk")
    scim.proxy.faults.fail(1, status=429, method="GET", path="/Users", retry_after=1)
    scim.proxy.faults.drop(1, method="POST", path="/Bulk")
    request = submit(hr_caller, users, ["idaas"])

    run_stages()

    request.refresh_from_db()
    assert request.status == "completed"
    for number, account in accounts("idaas").items():
        assert account.status == "created", (number, account.error_message)
        found = scim.users_named(number)
        assert [u["id"] for u in found] == [account.external_id]
    assert {"http_503", "http_429", "connection_error"} <= attempt_codes("idaas")
    assert scim.proxy.calls_to("/Users", "POST") == 0
    # The 503, then the request whose answer was lost: it had created them, and the next search linked them.
    assert scim.proxy.calls_to("/Bulk", "POST") == 2
    assert TaskAttempt.objects.filter(task__system="idaas", outcome="linked").count() == 10


def test_hr_persons_get_accounts_in_all_three_real_systems_and_logs_stay_clean(
        hr_sim, welink_sim, exmail_sim, scim, backend_settings, caplog):
    caplog.set_level(logging.DEBUG)
    backend_settings.HR_DEFAULT_SYSTEMS = ["idaas", "welink", "email"]
    stamp = time.time_ns() % 10**8
    phones = [f"1360000{i:04d}" for i in range(6)]
    for i, phone in enumerate(phones):
        hr_sim.upsert_person(person_id=5000 + i, employee_number=f"HRE{stamp}-{i}", full_name=f"欧阳娜{i}",
                             telephone_number1=phone,
                             last_update_date=dt.datetime(2025, 4, 1, tzinfo=dt.UTC) + dt.timedelta(i))
    exmail_sim.expire_tokens()
    welink_sim.faults.fail(1, status=500, path=BULK_PATH)

    run_stages()

    persons = HrPerson.objects.filter(created_by="hr_sync")
    assert persons.count() == 6
    for person in persons:
        by_system = {a.system: a for a in person.accounts.all()}
        assert {a.status for a in by_system.values()} == {"created"}
        assert by_system["email"].external_id == person.email
        assert by_system["welink"].external_id == person.employee_number
        assert [u["id"] for u in scim.users_named(person.employee_number)] == [by_system["idaas"].external_id]
    secrets = [WELINK_SECRET, EXMAIL_SECRET, SCIM_TOKEN, HR_TOKEN, *list(welink_sim.tokens._tokens),
               *list(exmail_sim.tokens._tokens), *phones]
    lines = [record.getMessage() for record in caplog.records]
    assert any("/cgi-bin/user/create" in line for line in lines)   # the calls were logged, ours…
    assert any(r.name.startswith("urllib3") and "access_token" not in r.getMessage() and "?…" in r.getMessage()
               for r in caplog.records)                            # …and urllib3's, query strings cut…
    leaks = [(s, line) for line in lines for s in secrets if s in line]
    assert leaks == []                                                # …without a secret, token or phone


def test_an_address_taken_at_the_mail_system_moves_the_person_to_the_next_one(hr_caller, exmail_sim):
    # Someone outside this service already owns zhangsan@ and zhangsan2@ at Exmail.
    exmail_sim.add_user("zhangsan@example.com", name="张三", mobile="13900000001")
    exmail_sim.add_user("zhangsan2@example.com", name="张三", mobile="13900000002", extid="OTHER")
    request = submit(hr_caller, [{"employeeNumber": "Z1", "employeeName": "张三", "departmentCode": "D1",
                                  "phoneNumber": "13800138001"}], ["email"], key="TAKEN")

    run_stages()

    person = HrPerson.objects.get(employee_number="Z1")
    assert person.email == "zhangsan3@example.com"
    assert exmail_sim.users["zhangsan3@example.com"]["mobile"] == "13800138001"
    account = Account.objects.get(person=person, system="email")
    assert (account.status, account.external_id) == ("created", "zhangsan3@example.com")
    request.refresh_from_db()
    assert request.status == "completed"
    task = AccountCreationTask.objects.get(person=person)
    assert task.attempts == 1  # the refused addresses did not use up attempts
    assert list(task.attempt_log.order_by("id").values_list("code", flat=True))[:2] == ["email_taken", "email_taken"]


def test_every_target_holds_the_address_the_mail_system_confirmed(hr_caller, exmail_sim, welink_sim, scim):
    # A stranger holds wangweiwei@ at Exmail: the person gets wangweiwei2@, and IDaaS and WeLink, which
    # answer at once, must not be created under the stranger's address before the mail system has said so.
    exmail_sim.add_user("wangweiwei@example.com", name="王伟伟", mobile="13900000009", extid="STRANGER")
    number = f"WW{time.time_ns() % 10**8}"
    request = submit(hr_caller, [{"employeeNumber": number, "employeeName": "王伟伟", "departmentCode": "D1",
                                  "phoneNumber": "13800138009"}], ["idaas", "welink", "email"], key="ONE-ADDRESS")

    run_stages()

    person = HrPerson.objects.get(employee_number=number)
    assert person.email == "wangweiwei2@example.com"
    assert exmail_sim.users["wangweiwei2@example.com"]["extid"] == number
    assert exmail_sim.users["wangweiwei@example.com"]["extid"] == "STRANGER"  # untouched
    [user] = scim.users_named(number)
    assert [e["value"] for e in user["emails"] if e.get("primary")] == ["wangweiwei2@example.com"]
    assert welink_sim.users[number]["userEmail"] == "wangweiwei2@example.com"
    request.refresh_from_db()
    assert request.status == "completed"
    waited = AccountCreationTask.objects.filter(person=person).exclude(system="email")
    mailbox = AccountCreationTask.objects.get(person=person, system="email")
    assert all(task.attempt_log.earliest("started_at").started_at >= mailbox.finished_at for task in waited)


def test_when_the_mailbox_fails_for_good_the_other_accounts_fail_with_its_reason(hr_caller, exmail_sim, scim):
    exmail_sim.faults.fail(1, status=200, path="/cgi-bin/user/create",
                           body={"errcode": 60104, "errmsg": "手机号码已存在"})  # a permanent refusal
    number = f"MF{time.time_ns() % 10**8}"
    request = submit(hr_caller, [{"employeeNumber": number, "employeeName": "李四", "departmentCode": "D1",
                                  "phoneNumber": "13800138010"}], ["idaas", "email"], key="MAILBOX-FAILS")

    run_stages()

    by_system = {a.system: a for a in Account.objects.filter(person__employee_number=number)}
    assert by_system["email"].status == "failed"
    assert by_system["idaas"].status == "failed"
    assert by_system["idaas"].error_message.startswith("[mailbox_failed] 邮箱账号未能开通")
    assert scim.users_named(number) == []  # never created under an address nobody holds
    idaas_task = AccountCreationTask.objects.get(person__employee_number=number, system="idaas")
    assert (idaas_task.last_error_code, idaas_task.attempts, idaas_task.attempt_log.count()) == (
        "mailbox_failed", 0, 0)
    request.refresh_from_db()
    assert request.status == "failed"
    reasons = {r["system"] for r in request.error_summary["reasons"]}
    assert reasons == {"email", "idaas"}


def deactivate(caller, key: str, numbers: list[str]):
    return caller.post_json("/account-creation/deactivate_accounts/", {
        "originSystem": "HR_SYSTEM", "businessKey": key, "userList": [{"employeeNumber": n} for n in numbers]})


def test_movers_leavers_and_returners_reach_all_three_real_targets(hr_caller, exmail_sim, welink_sim, scim):
    # After a reallocation (a stranger holds the first address), a department, name and mobile change by a
    # resubmission, a leaver through the API and a returner: every target holds the person's current values
    # and active state, one account each.
    exmail_sim.add_user("lixiaolong@example.com", name="李小龙", mobile="13900000010", extid="STRANGER")
    number = f"LC{time.time_ns() % 10**8}"
    first = {"employeeNumber": number, "employeeName": "李小龙", "departmentCode": "D1", "phoneNumber": "13800138010"}
    submit(hr_caller, [first], ["idaas", "welink", "email"], key="LC-1")
    run_stages()
    address = HrPerson.objects.get(employee_number=number).email
    assert address == "lixiaolong2@example.com"

    moved = {**first, "employeeName": "李小龍", "departmentCode": "D7", "phoneNumber": "13800138011"}
    submit(hr_caller, [moved], ["idaas", "welink", "email"], key="LC-2")
    run_stages()

    [user] = scim.users_named(number)
    assert user["displayName"] == "李小龍" and user["active"] is True
    assert [e["value"] for e in user["emails"] if e.get("primary")] == [address]
    assert [p["value"] for p in user["phoneNumbers"]] == ["13800138011"]
    assert user["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"] == "D7"
    record = welink_sim.users[number]
    assert (record["userNameCn"], record["mobileNumber"], record["corpDeptCode"], record["userEmail"]) == \
        ("李小龍", "+86-13800138011", "D7", address)
    mailbox = exmail_sim.users[address]
    assert (mailbox["name"], mailbox["mobile"], mailbox["enable"]) == ("李小龍", "13800138011", 1)

    assert deactivate(hr_caller, "LC-OUT", [number]).status_code == 202
    run_stages()
    assert scim.get_user(user["id"])["active"] is False
    assert welink_sim.users[number]["valid"] == "0"
    assert exmail_sim.users[address]["enable"] == 0

    calls_before = len(welink_sim.calls) + len(exmail_sim.calls)
    run_stages()  # nothing changed: no call to any target
    assert len(welink_sim.calls) + len(exmail_sim.calls) == calls_before

    submit(hr_caller, [moved], ["idaas", "welink", "email"], key="LC-BACK")
    run_stages()
    assert scim.get_user(user["id"])["active"] is True
    assert welink_sim.users[number]["valid"] == "1"
    assert exmail_sim.users[address]["enable"] == 1
    assert len(scim.users_named(number)) == 1
    assert [u for u in exmail_sim.users.values() if u["extid"] == number] == [exmail_sim.users[address]]
    assert set(Account.objects.filter(person__employee_number=number).values_list("status", "change_status")) == {
        ("created", "")}


def test_reconciliation_finds_exactly_what_was_changed_at_the_targets_and_repairs_it(
        hr_caller, exmail_sim, welink_sim, scim, settings):
    # The SCIM server lives for the session: our key space is this test's own prefix and mail domain.
    prefix = f"RC{time.time_ns() % 10**7}"
    settings.EMAIL_DOMAIN = f"{prefix.lower()}.example.com"
    settings.RECONCILE_EMPLOYEE_NUMBER_PATTERN = f"^{prefix}"
    settings.RECONCILE_PAGE_SIZE = 2
    users = [{"employeeNumber": f"{prefix}{i}", "employeeName": name, "departmentCode": "D1",
              "phoneNumber": f"1380013{i:04d}"} for i, name in enumerate(["赵一", "钱二", "孙三", "李四", "周五"])]
    submit(hr_caller, users, ["idaas", "welink", "email"], key=prefix)
    run_stages()
    numbers = [u["employeeNumber"] for u in users]
    persons = {p.employee_number: p for p in HrPerson.objects.all()}

    # Changed directly in the targets: a SCIM user deleted, a WeLink name edited, a mailbox disabled, a
    # stranger in our key space, and a second mailbox for one person.
    [gone] = scim.users_named(numbers[0])
    assert requests.delete(f"{scim.url}/Users/{gone['id']}", headers=scim.headers, timeout=5).status_code == 204
    welink_sim.users[numbers[1]]["userNameCn"] = "钱二改"
    exmail_sim.users[persons[numbers[2]].email]["enable"] = 0
    scim.create_user(userName=f"{prefix}X", displayName="陌生人", active=True)
    exmail_sim.add_user(f"zhouwu9@{settings.EMAIL_DOMAIN}", name="周五", mobile="13800130004", extid=numbers[4])

    call_command("reconcile_accounts", "--dry-run", stdout=StringIO())
    run = ReconciliationRun.objects.latest("id")
    found = set(ReconciliationFinding.objects.filter(run=run).values_list("system", "employee_number", "kind",
                                                                          "field"))
    assert found == {
        ("idaas", numbers[0], "missing", ""),
        ("welink", numbers[1], "drift", "full_name"),
        ("email", numbers[2], "drift", "active"),
        ("idaas", f"{prefix}X", "orphan", ""),
        ("email", numbers[4], "duplicate", ""),
    }
    assert run.compared["welink"]["orphansCheckable"] is False

    settings.RECONCILE_MAX_REPAIRS = "40%"
    call_command("reconcile_accounts", "--repair", stdout=StringIO())
    run_stages()

    [back] = scim.users_named(numbers[0])
    assert back["id"] != gone["id"] and back["displayName"] == "赵一"
    assert Account.objects.get(system="idaas", person__employee_number=numbers[0]).external_id == back["id"]
    assert welink_sim.users[numbers[1]]["userNameCn"] == "钱二"
    assert exmail_sim.users[persons[numbers[2]].email]["enable"] == 1
    assert len(scim.users_named(f"{prefix}X")) == 1                       # the orphan is left alone
    assert f"zhouwu9@{settings.EMAIL_DOMAIN}" in exmail_sim.users         # and so is the duplicate
    call_command("reconcile_accounts", "--dry-run", stdout=StringIO())
    again = ReconciliationRun.objects.latest("id")
    assert set(ReconciliationFinding.objects.filter(run=again).values_list("kind", flat=True)) == {
        "orphan", "duplicate"}


def test_the_guard_refuses_a_repair_of_40_percent_without_force(hr_caller, scim, settings):
    prefix = f"RG{time.time_ns() % 10**7}"
    settings.EMAIL_DOMAIN = f"{prefix.lower()}.example.com"
    settings.RECONCILE_EMPLOYEE_NUMBER_PATTERN = f"^{prefix}"
    users = [{"employeeNumber": f"{prefix}{i}", "employeeName": "吴六", "departmentCode": "D1",
              "phoneNumber": f"1390013{i:04d}"} for i in range(5)]
    submit(hr_caller, users, ["idaas"], key=prefix)
    run_stages()
    for user in users[:2]:
        [found] = scim.users_named(user["employeeNumber"])
        requests.delete(f"{scim.url}/Users/{found['id']}", headers=scim.headers, timeout=5)

    out = StringIO()
    call_command("reconcile_accounts", "--repair", "--system", "idaas", stdout=out)
    assert "held back" in out.getvalue()
    assert not AccountCreationTask.objects.filter(status="pending").exists()
    call_command("reconcile_accounts", "--repair", "--force", "--system", "idaas", stdout=StringIO())
    run_stages()
    assert all(scim.users_named(u["employeeNumber"]) for u in users)
