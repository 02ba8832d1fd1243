"""Changes of existing accounts (update, disable, enable) against scim2-server, the simulators and the local rows."""

import dataclasses
import threading
import time

import pytest
import requests

from syncservice.backends import get_backend
from syncservice.backends.base import AccountChange, Operation, OutcomeKind, TargetAccount
from syncservice.backends.local import LocalIdaasBackend, LocalWelinkBackend
from syncservice.backends.scim import ENTERPRISE_SCHEMA
from syncservice.models import LocalTargetAccount
from syncservice.simulators.welink import BULK_PATH, STATUS_PATH

from .conftest import make_person

EXMAIL_UPDATE = "/cgi-bin/user/update"

# A new value for each field a change may carry, in the form every target accepts.
NEW_VALUES = {"full_name": "李四四", "phone_number": "13911112222", "department_code": "D777"}


def changed(person, **values):
    return dataclasses.replace(person, **values)


def update(external_id, *fields):
    return AccountChange(Operation.UPDATE, external_id, fields=tuple(fields), active=True)


def disable(external_id):
    return AccountChange(Operation.DISABLE, external_id, active=False)


def enable(external_id):
    return AccountChange(Operation.ENABLE, external_id, active=True)


def drive(call, state=None, max_calls=10):
    """Call the way the process stage does, feeding the state back, until the outcome is final."""
    state = dict(state or {})
    outcomes = []
    for _ in range(max_calls):
        outcome = call(state)
        outcomes.append(outcome)
        if outcome.state is not None:
            state = outcome.state
        if outcome.kind not in (OutcomeKind.IN_PROGRESS, OutcomeKind.TRANSIENT):
            break
    return outcomes


# --- Local -----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_local_change_sets_every_value_and_the_active_state():
    backend = LocalIdaasBackend()
    person = make_person(phone_number="13800000001", department_code="D001")
    external_id = backend.ensure_account(person, {}).external_id
    row = LocalTargetAccount.objects.get(external_id=external_id)
    assert (row.mobile, row.department_code, row.active) == ("13800000001", "D001", True)

    now = changed(person, full_name="王五", phone_number="13900000009", department_code="D002")
    outcome = backend.apply_change(now, update(external_id, "full_name", "phone_number", "department_code"), {})
    disabled = backend.apply_change(now, disable(external_id), {})

    assert outcome.kind == OutcomeKind.APPLIED and outcome.external_id == external_id
    assert disabled.kind == OutcomeKind.APPLIED
    row.refresh_from_db()
    assert (row.full_name, row.mobile, row.department_code, row.active) == ("王五", "13900000009", "D002", False)


@pytest.mark.django_db
def test_local_change_of_a_missing_account_is_account_missing_and_injection_applies(settings):
    backend = LocalIdaasBackend()
    person = make_person()

    missing = backend.apply_change(person, update("idaas-nope", "full_name"), {})
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = person.employee_number
    injected = backend.apply_change(person, update("idaas-nope", "full_name"), {})

    assert (missing.kind, missing.code) == (OutcomeKind.PERMANENT, "account_missing")
    assert (injected.kind, injected.code) == (OutcomeKind.PERMANENT, "LOCAL-422")


@pytest.mark.django_db
def test_local_welink_change_is_asynchronous_like_a_create(settings):
    settings.LOCAL_WELINK_ASYNC = True
    settings.LOCAL_WELINK_ASYNC_POLLS = 2
    backend = LocalWelinkBackend()
    person = make_person()
    external_id = drive(lambda state: backend.ensure_account(person, state))[-1].external_id

    outcomes = drive(lambda state: backend.apply_change(person, disable(external_id), state))

    assert [o.kind for o in outcomes] == ["in_progress", "in_progress", "applied"]
    assert LocalTargetAccount.objects.get(external_id=external_id).active is False


# --- IDaaS over SCIM -------------------------------------------------------------------------------

def scim_user(scim, person) -> tuple[str, dict]:
    outcome = get_backend("idaas").ensure_account(person, {})
    assert outcome.kind == OutcomeKind.CREATED, outcome
    return outcome.external_id, scim.get_user(outcome.external_id)


def test_scim_create_puts_the_department_in_the_enterprise_extension(scim):
    _, user = scim_user(scim, make_person(department_code="D042"))

    assert ENTERPRISE_SCHEMA in user["schemas"]
    assert user[ENTERPRISE_SCHEMA] == {"department": "D042"}


@pytest.mark.parametrize("field", ["full_name", "phone_number", "department_code", "email"])
def test_scim_update_of_each_field_reaches_the_user(scim, field):
    person = make_person()
    external_id, before = scim_user(scim, person)
    value = f"new{person.person_id}@example.com" if field == "email" else NEW_VALUES[field]
    now = changed(person, **{field: value})

    outcome = get_backend("idaas").apply_change(now, update(external_id, field), {})

    assert outcome.kind == OutcomeKind.APPLIED
    assert outcome.external_id == external_id
    assert outcome.code == "204"   # scim2-server answers a PATCH with no content
    user = scim.get_user(external_id)
    expected = {**before, "meta": user["meta"]}
    if field == "full_name":
        expected.update(displayName=value, name={"formatted": value})
    elif field == "phone_number":
        expected["phoneNumbers"] = [{"value": value, "type": "mobile"}]
    elif field == "email":
        expected["emails"] = [{"value": value, "type": "work", "primary": True}]
    else:
        expected[ENTERPRISE_SCHEMA] = {"department": value}
    assert user == expected   # the other attributes are untouched
    assert scim.proxy.calls_to(f"/Users/{external_id}", "PATCH") == 1


def test_scim_cleared_department_removes_the_attribute(scim):
    person = make_person(department_code="D001")
    external_id, _ = scim_user(scim, person)

    outcome = get_backend("idaas").apply_change(changed(person, department_code=""),
                                                update(external_id, "department_code"), {})

    assert outcome.kind == OutcomeKind.APPLIED
    assert "department" not in scim.get_user(external_id).get(ENTERPRISE_SCHEMA, {})


def test_scim_disable_then_enable_with_the_current_values(scim):
    person = make_person()
    external_id, _ = scim_user(scim, person)
    backend = get_backend("idaas")

    disabled = backend.apply_change(person, disable(external_id), {})
    assert disabled.kind == OutcomeKind.APPLIED
    assert scim.get_user(external_id)["active"] is False

    now = changed(person, full_name="回来了", phone_number="13700000007")
    enabled = backend.apply_change(now, enable(external_id), {})

    assert enabled.kind == OutcomeKind.APPLIED
    user = scim.get_user(external_id)
    assert user["active"] is True
    assert user["displayName"] == user["name"]["formatted"] == "回来了"
    assert user["phoneNumbers"] == [{"value": "13700000007", "type": "mobile"}]
    assert user["emails"] == [{"value": person.email, "type": "work", "primary": True}]


def test_scim_replay_after_a_lost_answer_applies_the_values_once(scim):
    person = make_person()
    external_id, _ = scim_user(scim, person)
    now = changed(person, email=f"moved{person.person_id}@example.com")
    scim.proxy.faults.drop(1, method="PATCH")
    backend = get_backend("idaas")

    outcomes = drive(lambda state: backend.apply_change(now, update(external_id, "email"), state))

    assert [o.kind for o in outcomes] == ["transient", "applied"]
    assert outcomes[0].code == "connection_error"
    # Both PATCHes reached the server; replacing the whole attribute leaves one address, not two.
    assert scim.proxy.calls_to(f"/Users/{external_id}", "PATCH") == 2
    assert scim.get_user(external_id)["emails"] == [{"value": now.email, "type": "work", "primary": True}]


@pytest.mark.parametrize("status", [500, 503])
def test_scim_server_error_on_a_change_is_transient(scim, status):
    person = make_person()
    external_id, _ = scim_user(scim, person)
    scim.proxy.faults.fail(1, status=status, method="PATCH")

    outcome = get_backend("idaas").apply_change(person, disable(external_id), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == f"http_{status}"
    assert scim.get_user(external_id)["active"] is True


def test_scim_rate_limit_on_a_change_is_transient_with_retry_after(scim):
    person = make_person()
    external_id, _ = scim_user(scim, person)
    scim.proxy.faults.fail(1, status=429, method="PATCH", retry_after=7)

    outcome = get_backend("idaas").apply_change(person, disable(external_id), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.rate_limited is True
    assert outcome.retry_after == 7


def test_scim_change_of_a_deleted_user_is_account_missing(scim):
    outcome = get_backend("idaas").apply_change(make_person(), update("no-such-id", "full_name"), {})

    assert outcome.kind == OutcomeKind.PERMANENT
    assert outcome.code == "account_missing"
    assert "not found" in outcome.message   # scim2-server's detail, verbatim


def test_scim_invalid_value_is_permanent_with_the_scim_type(scim):
    person = make_person()
    external_id, _ = scim_user(scim, person)
    scim.proxy.faults.fail(1, status=400, method="PATCH",
                           body={"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "400",
                                 "scimType": "invalidValue", "detail": "phoneNumbers: bad value"})

    outcome = get_backend("idaas").apply_change(person, update(external_id, "phone_number"), {})

    assert (outcome.kind, outcome.code, outcome.message) == (OutcomeKind.PERMANENT, "invalidValue",
                                                             "phoneNumbers: bad value")


def test_scim_server_without_patch_gets_the_whole_user_put_back(scim_without_patch):
    scim = scim_without_patch
    person = make_person(department_code="D001")
    external_id, before = scim_user(scim, person)
    backend = get_backend("idaas")
    now = changed(person, full_name="赵七", department_code="D002")

    first = backend.apply_change(now, update(external_id, "full_name", "department_code"), {})
    second = backend.apply_change(now, disable(external_id), {})

    assert (first.kind, first.code) == (OutcomeKind.APPLIED, "200")
    assert second.kind == OutcomeKind.APPLIED
    path = f"/Users/{external_id}"
    assert scim.proxy.calls_to(path, "PATCH") == 1   # the 501 is remembered: the second change only PUTs
    assert scim.proxy.calls_to(path, "PUT") == 2
    user = scim.get_user(external_id)
    assert user["displayName"] == user["name"]["formatted"] == "赵七"
    assert user[ENTERPRISE_SCHEMA] == {"department": "D002"}
    assert user["active"] is False
    assert user["emails"] == before["emails"] and user["phoneNumbers"] == before["phoneNumbers"]


def test_scim_put_fallback_does_not_overwrite_a_write_made_after_its_read(scim_without_patch):
    """Someone edits the user between the GET and the PUT: If-Match makes the PUT fail (412), retried."""
    scim = scim_without_patch
    person = make_person()
    external_id, _ = scim_user(scim, person)
    backend = get_backend("idaas")
    backend.patch_supported = False
    scim.proxy.faults.delay(0.5, method="PUT")
    result = {}
    caller = threading.Thread(target=lambda: result.update(
        outcome=backend.apply_change(person, disable(external_id), {})))
    caller.start()
    deadline = time.monotonic() + 5
    while scim.proxy.calls_to(f"/Users/{external_id}", "PUT") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    edited = {**scim.get_user(external_id), "title": "set by an administrator"}
    response = requests.put(f"{scim.url}/Users/{external_id}", json=edited, headers=scim.headers, timeout=5)
    assert response.status_code == 200, response.text
    caller.join()

    assert (result["outcome"].kind, result["outcome"].code) == (OutcomeKind.TRANSIENT, "http_412")
    again = backend.apply_change(person, disable(external_id), {})
    assert again.kind == OutcomeKind.APPLIED
    user = scim.get_user(external_id)
    assert (user["active"], user["title"]) == (False, "set by an administrator")


def test_scim_put_fallback_of_a_deleted_user_is_account_missing(scim_without_patch):
    backend = get_backend("idaas")
    backend.patch_supported = False

    outcome = backend.apply_change(make_person(), update("no-such-id", "full_name"), {})

    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "account_missing")


# --- WeLink ----------------------------------------------------------------------------------------

def welink_account(person) -> str:
    backend = get_backend("welink")
    outcome = drive(lambda state: backend.ensure_account(person, state))[-1]
    assert outcome.kind == OutcomeKind.CREATED, outcome
    return outcome.external_id


def welink_change(person, change, state=None):
    backend = get_backend("welink")
    return drive(lambda s: backend.apply_change(person, change, s), state)


@pytest.mark.parametrize("field", ["full_name", "phone_number", "department_code", "email"])
def test_welink_update_of_each_field_reaches_the_directory(welink_sim, field):
    person = make_person()
    external_id = welink_account(person)
    value = f"new{person.person_id}@example.com" if field == "email" else NEW_VALUES[field]
    now = changed(person, **{field: value})

    outcomes = welink_change(now, update(external_id, field))

    assert outcomes[-1].kind == OutcomeKind.APPLIED
    assert (outcomes[-1].external_id, outcomes[-1].code) == (external_id, "47109")
    record = welink_sim.users[person.employee_number]
    assert record == {**record, "userNameCn": now.full_name, "mobileNumber": f"+86-{now.phone_number}",
                      "corpDeptCode": now.department_code, "userEmail": now.email, "userStatus": "3",
                      "valid": "1"}
    assert welink_sim.submissions[person.employee_number] == 2   # the create and the change
    assert welink_sim.opened[person.employee_number] == 1


def test_welink_disable_closes_the_account_and_enable_opens_it_again(welink_sim):
    person = make_person()
    external_id = welink_account(person)

    disabled = welink_change(person, disable(external_id))

    assert [o.kind for o in disabled] == ["in_progress", "in_progress", "in_progress", "applied"]
    assert [o.code for o in disabled] == ["47100", "47104", "47104", "47107"]
    record = welink_sim.users[person.employee_number]
    assert (record["valid"], record["userStatus"]) == ("0", "1")

    now = changed(person, full_name="回来了")
    enabled = welink_change(now, enable(external_id))

    assert enabled[-1].kind == OutcomeKind.APPLIED
    assert enabled[-1].code == "47109"
    record = welink_sim.users[person.employee_number]
    assert (record["valid"], record["userStatus"], record["userNameCn"]) == ("1", "3", "回来了")
    assert external_id == person.employee_number   # the account is known by its corpUserId
    assert (welink_sim.opened[person.employee_number], welink_sim.closed[person.employee_number],
            welink_sim.reopened[person.employee_number]) == (1, 1, 1)


@pytest.mark.parametrize("operation", ["update", "disable"])
def test_welink_change_whose_answer_was_lost_is_polled_not_submitted_again(welink_sim, operation):
    person = make_person()
    external_id = welink_account(person)
    now = changed(person, full_name="新名字")
    change = update(external_id, "full_name") if operation == "update" else disable(external_id)
    welink_sim.faults.drop(1, path=BULK_PATH)

    outcomes = welink_change(now, change)

    assert outcomes[0].kind == OutcomeKind.TRANSIENT
    assert outcomes[0].state == {"submit_sent": True}
    assert outcomes[-1].kind == OutcomeKind.APPLIED
    assert welink_sim.submissions[person.employee_number] == 2   # the create and one change
    record = welink_sim.users[person.employee_number]
    assert record["userNameCn"] == "新名字"
    assert record["valid"] == ("1" if operation == "update" else "0")


def test_welink_change_that_never_arrived_is_submitted_again(welink_sim):
    """A 503 before WeLink handled the bulk: the status still says 47109, but the lookup shows old values."""
    person = make_person()
    external_id = welink_account(person)
    now = changed(person, phone_number="13911112222")
    welink_sim.faults.fail(1, status=503, path=BULK_PATH)

    outcomes = welink_change(now, update(external_id, "phone_number"))

    assert [o.kind for o in outcomes] == ["transient", "applied"]
    assert outcomes[0].code == "http_503"
    assert welink_sim.users[person.employee_number]["mobileNumber"] == "+86-13911112222"
    assert welink_sim.submissions[person.employee_number] == 2


def test_welink_rate_limit_on_a_change_is_transient(welink_sim):
    person = make_person()
    external_id = welink_account(person)
    welink_sim.faults.fail(1, status=200, path=BULK_PATH, retry_after=3,
                           body={"code": "48503", "message": "Too many requests", "data": []})

    outcome = get_backend("welink").apply_change(person, disable(external_id), {})

    assert (outcome.kind, outcome.code, outcome.rate_limited) == (OutcomeKind.TRANSIENT, "48503", True)
    assert outcome.retry_after == 3


def test_welink_server_error_on_a_change_is_transient(welink_sim):
    person = make_person()
    external_id = welink_account(person)
    welink_sim.faults.fail(1, status=502, path=STATUS_PATH)

    outcome = get_backend("welink").apply_change(person, disable(external_id), {"submitted": True})

    assert (outcome.kind, outcome.code) == (OutcomeKind.TRANSIENT, "http_502")


def test_welink_change_of_an_unknown_user_is_account_missing_without_submitting(welink_sim):
    outcome = get_backend("welink").apply_change(make_person(), update("wl_gone", "full_name"), {})

    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "account_missing")
    assert welink_sim.calls_to(BULK_PATH) == 0


def test_welink_user_deleted_while_a_change_was_polled_is_account_missing(welink_sim):
    person = make_person()
    external_id = welink_account(person)
    welink_sim.faults.drop(1, path=BULK_PATH)
    lost = get_backend("welink").apply_change(person, disable(external_id), {})
    with welink_sim.lock:
        del welink_sim.users[person.employee_number]

    outcome = get_backend("welink").apply_change(person, disable(external_id), lost.state)

    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "account_missing")


def test_welink_invalid_value_is_permanent_with_the_vendor_code(welink_sim):
    person = make_person()
    external_id = welink_account(person)

    outcomes = welink_change(changed(person, full_name=""), update(external_id, "full_name"))

    assert (outcomes[-1].kind, outcomes[-1].code) == (OutcomeKind.PERMANENT, "47008")
    assert outcomes[-1].message == "userNameCn is empty"


# --- Exmail ----------------------------------------------------------------------------------------

def mailbox(person) -> str:
    outcome = get_backend("email").ensure_account(person, {})
    assert outcome.kind == OutcomeKind.CREATED, outcome
    return outcome.external_id


def test_exmail_update_sets_name_and_mobile(exmail_sim):
    person = make_person()
    address = mailbox(person)
    now = changed(person, full_name="李四四", phone_number="+86 139 1111 2222")

    outcome = get_backend("email").apply_change(now, update(address, "full_name", "phone_number"), {})

    assert (outcome.kind, outcome.external_id, outcome.code) == (OutcomeKind.APPLIED, address, "0")
    user = exmail_sim.users[address.lower()]
    assert (user["name"], user["mobile"], user["enable"], user["department"]) == ("李四四", "13911112222", 1, [1])


def test_exmail_department_change_leaves_the_mailbox_where_it_is(exmail_sim):
    person = make_person()
    address = mailbox(person)

    outcome = get_backend("email").apply_change(changed(person, department_code="D999"),
                                                update(address, "department_code"), {})

    assert outcome.kind == OutcomeKind.APPLIED
    assert exmail_sim.users[address.lower()]["department"] == [1]


def test_exmail_disable_then_enable(exmail_sim):
    person = make_person()
    address = mailbox(person)
    backend = get_backend("email")

    disabled = backend.apply_change(person, disable(address), {})
    assert disabled.kind == OutcomeKind.APPLIED
    assert exmail_sim.users[address.lower()]["enable"] == 0

    enabled = backend.apply_change(changed(person, full_name="回来了"), enable(address), {})

    assert enabled.kind == OutcomeKind.APPLIED
    user = exmail_sim.users[address.lower()]
    assert (user["enable"], user["name"]) == (1, "回来了")


def test_exmail_replay_after_a_lost_answer_sets_the_same_values(exmail_sim):
    person = make_person()
    address = mailbox(person)
    exmail_sim.faults.drop(1, path=EXMAIL_UPDATE)
    backend = get_backend("email")

    outcomes = drive(lambda state: backend.apply_change(person, disable(address), state))

    assert [o.kind for o in outcomes] == ["transient", "applied"]
    assert exmail_sim.users[address.lower()]["enable"] == 0
    assert exmail_sim.updated[address.lower()] == 2   # the same "set" twice: one state, one mailbox
    assert len(exmail_sim.users) == 1


def test_exmail_server_error_and_rate_limit_on_a_change_are_transient(exmail_sim):
    person = make_person()
    address = mailbox(person)
    exmail_sim.faults.fail(1, status=503, path=EXMAIL_UPDATE)
    exmail_sim.faults.fail(1, status=200, path=EXMAIL_UPDATE, body={"errcode": 45009, "errmsg": "api freq out"})
    backend = get_backend("email")

    server_error = backend.apply_change(person, disable(address), {})
    rate_limited = backend.apply_change(person, disable(address), {})

    assert (server_error.kind, server_error.code) == (OutcomeKind.TRANSIENT, "http_503")
    assert (rate_limited.kind, rate_limited.code, rate_limited.rate_limited) == (OutcomeKind.TRANSIENT, "45009",
                                                                                  True)
    assert rate_limited.retry_after == 1.0
    assert exmail_sim.users[address.lower()]["enable"] == 1


def test_exmail_expired_token_is_refreshed_once_for_a_change(exmail_sim):
    person = make_person()
    address = mailbox(person)
    exmail_sim.expire_tokens()

    outcome = get_backend("email").apply_change(person, disable(address), {})

    assert outcome.kind == OutcomeKind.APPLIED
    assert exmail_sim.tokens.issued == 2


def test_exmail_change_of_an_unknown_mailbox_is_account_missing(exmail_sim):
    outcome = get_backend("email").apply_change(make_person(), update("gone@example.com", "full_name"), {})

    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "account_missing")
    assert "60111" in outcome.message


def test_exmail_refuses_an_address_change_without_calling(exmail_sim):
    person = make_person()
    address = mailbox(person)

    outcome = get_backend("email").apply_change(changed(person, email=f"other{person.person_id}@example.com"),
                                                update(address, "email", "full_name"), {})

    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "email_change_unsupported")
    assert address in outcome.message
    assert exmail_sim.calls_to(EXMAIL_UPDATE) == 0


def test_exmail_mobile_of_another_mailbox_is_permanent_60104(exmail_sim):
    person = make_person()
    address = mailbox(person)
    exmail_sim.add_user("other@example.com", name="别人", mobile="13966665555")

    outcome = get_backend("email").apply_change(changed(person, phone_number="13966665555"),
                                                update(address, "phone_number"), {})

    assert (outcome.kind, outcome.code, outcome.message) == (OutcomeKind.PERMANENT, "60104", "mobile existed")


# --- An orphan's disable: the active state and nothing else --------------------------------------------

def orphan(external_id, key=""):
    return TargetAccount(external_id=external_id, key=key)


def test_scim_orphan_disable_changes_only_active(scim):
    person = make_person()
    external_id, before = scim_user(scim, person)

    outcome = get_backend("idaas").disable_account(orphan(external_id, person.employee_number))

    assert outcome.kind == OutcomeKind.APPLIED
    after = scim.get_user(external_id)
    assert after["active"] is False
    assert {k: v for k, v in after.items() if k not in ("active", "meta")} == \
        {k: v for k, v in before.items() if k not in ("active", "meta")}
    assert get_backend("idaas").disable_account(orphan("no-such-id")).code == "account_missing"


def test_scim_orphan_disable_without_patch_puts_the_user_back_as_it_was(scim_without_patch):
    scim = scim_without_patch
    person = make_person()
    external_id, before = scim_user(scim, person)

    outcome = get_backend("idaas").disable_account(orphan(external_id))

    assert outcome.kind == OutcomeKind.APPLIED
    after = scim.get_user(external_id)
    assert after["active"] is False and after["displayName"] == before["displayName"]
    assert after["phoneNumbers"] == before["phoneNumbers"]


def test_exmail_orphan_disable_sends_enable_alone(exmail_sim):
    exmail_sim.add_user("hand@example.com", name="手工账号", mobile="13800009999", extid="")

    outcome = get_backend("email").disable_account(orphan("hand@example.com"))

    assert outcome.kind == OutcomeKind.APPLIED
    user = exmail_sim.users["hand@example.com"]
    assert (user["enable"], user["name"], user["mobile"]) == (0, "手工账号", "13800009999")
    assert get_backend("email").disable_account(orphan("gone@example.com")).code == "account_missing"


def test_welink_cannot_disable_an_account_without_its_person(welink_sim):
    backend = get_backend("welink")

    outcome = backend.disable_account(orphan("u-1", "X1"))

    assert backend.can_disable_accounts is False
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "unsupported")
    assert welink_sim.submissions == {}


@pytest.mark.django_db
def test_local_orphan_disable_keeps_the_values():
    row = LocalTargetAccount.objects.create(system="idaas", employee_number="", external_id="idaas-hand",
                                            full_name="手工", email="hand@example.com", mobile="13800000000")

    outcome = LocalIdaasBackend().disable_account(orphan("idaas-hand"))

    row.refresh_from_db()
    assert outcome.kind == OutcomeKind.APPLIED
    assert (row.active, row.full_name, row.mobile) == (False, "手工", "13800000000")
