"""The Exmail backend against the Exmail simulator over loopback, and the address reallocation it triggers."""

import itertools
import time

import pytest

from syncservice.backends import get_backend
from syncservice.backends.base import OutcomeKind
from syncservice.models import HrPerson
from syncservice.services.email_reallocation import person_reallocate_email

from .conftest import make_person, paced_endpoints

CREATE = "/cgi-bin/user/create"
GET = "/cgi-bin/user/get"


def test_new_mailbox_is_created_with_the_address_as_external_id(exmail_sim):
    person = make_person(full_name="李四", phone_number="+86 138-0013-8001")

    outcome = get_backend("email").ensure_account(person, {})

    assert outcome.kind == OutcomeKind.CREATED
    assert outcome.external_id == person.email
    user = exmail_sim.users[person.email]
    assert user["name"] == "李四"
    assert user["mobile"] == "13800138001"
    assert user["extid"] == person.employee_number
    assert user["department"] == [1]
    assert user["cpwd_login"] == 1
    assert exmail_sim.created[person.email] == 1


@pytest.mark.parametrize("same", ["mobile", "extid"])
def test_existing_mailbox_of_the_same_person_is_linked(exmail_sim, same):
    person = make_person()
    exmail_sim.add_user(person.email, name=person.full_name,
                        mobile=person.phone_number if same == "mobile" else "13911112222",
                        extid=person.employee_number if same == "extid" else "")

    outcome = get_backend("email").ensure_account(person, {})

    assert outcome.kind == OutcomeKind.LINKED
    assert outcome.external_id == person.email
    assert exmail_sim.calls_to(CREATE) == 0


def test_mailbox_of_someone_else_asks_for_the_next_address(exmail_sim):
    person = make_person()
    exmail_sim.add_user(person.email, name="张三", mobile="13911112222", extid="OTHER-1")

    outcome = get_backend("email").ensure_account(person, {"refused_emails": ["older@example.com"]})

    assert outcome.kind == OutcomeKind.PERMANENT
    assert outcome.code == "email_taken"
    assert outcome.state["reallocate_email"] is True
    assert outcome.state["taken_email"] == person.email
    assert outcome.state["refused_emails"] == sorted(["older@example.com", person.email])
    assert exmail_sim.calls_to(CREATE) == 0


@pytest.mark.parametrize("ours", [True, False])
def test_60102_on_create_is_resolved_by_reading_the_mailbox_back(exmail_sim, ours):
    """The mailbox appears between our lookup and our create (another worker, another tool)."""
    person = make_person()
    exmail_sim.add_user(person.email, name=person.full_name,
                        mobile=person.phone_number if ours else "13911112222", extid="")
    exmail_sim.faults.fail(1, status=200, path=GET, body={"errcode": 60111, "errmsg": "userid not found"})

    outcome = get_backend("email").ensure_account(person, {})

    assert exmail_sim.calls_to(CREATE) == 1
    assert exmail_sim.created == {}
    if ours:
        assert outcome.kind == OutcomeKind.LINKED
        assert outcome.external_id == person.email
    else:
        assert outcome.kind == OutcomeKind.PERMANENT
        assert outcome.code == "email_taken"
        assert "60102" in outcome.message


def test_mobile_used_by_another_mailbox_is_permanent(exmail_sim):
    exmail_sim.add_user("someone@example.com", name="王五", mobile="13700000009")

    outcome = get_backend("email").ensure_account(make_person(phone_number="13700000009"), {})

    assert outcome.kind == OutcomeKind.PERMANENT
    assert outcome.code == "60104"
    assert outcome.message == "mobile existed"


def test_person_without_an_address_is_permanent_without_calling(exmail_sim):
    outcome = get_backend("email").ensure_account(make_person(email=""), {})

    assert outcome.kind == OutcomeKind.PERMANENT
    assert outcome.code == "no_email"
    assert exmail_sim.calls == []


@pytest.mark.parametrize("how", ["revoked", "lifetime"])
def test_expired_token_mid_run_is_refreshed(exmail_sim, how):
    backend = get_backend("email")
    if how == "lifetime":
        exmail_sim.tokens.lifetime = 0.3
        exmail_sim.tokens.announced_expires_in = 7200
    assert backend.ensure_account(make_person(), {}).kind == OutcomeKind.CREATED
    if how == "revoked":
        exmail_sim.expire_tokens()
    else:
        time.sleep(0.4)

    outcome = backend.ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.CREATED
    assert exmail_sim.tokens.issued == 2


def test_unknown_token_40014_is_refreshed_once(exmail_sim):
    backend = get_backend("email")
    backend.tokens._token, backend.tokens._valid_until = "forged", float("inf")

    outcome = backend.ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.CREATED
    assert exmail_sim.tokens.issued == 1


def test_wrong_corp_secret_is_transient_without_the_secret_in_the_message(exmail_sim, backend_settings):
    backend_settings.EXMAIL_CORP_SECRET = "wrong-secret-123"

    outcome = get_backend("email").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "40001"
    assert "wrong-secret-123" not in outcome.message


def test_rate_limit_45009_is_transient_with_retry_after(exmail_sim):
    exmail_sim.rate_limit.limit = 1

    outcome = get_backend("email").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "45009"
    assert outcome.retry_after == 1.0


def test_server_error_is_transient(exmail_sim):
    exmail_sim.faults.fail(1, status=503, path=CREATE, retry_after=12)

    outcome = get_backend("email").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "http_503"
    assert outcome.retry_after == 12


def test_timeout_is_transient(exmail_sim, backend_settings):
    backend_settings.TARGET_HTTP_TIMEOUT_SECONDS = 0.3
    exmail_sim.faults.delay(1.0, path=GET)

    outcome = get_backend("email").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "timeout"


def test_connection_refused_is_transient(exmail_sim, backend_settings, closed_port_url):
    backend_settings.EXMAIL_API_URL = closed_port_url

    outcome = get_backend("email").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "connection_error"
    assert "access_token" not in outcome.message and "corpsecret" not in outcome.message


def test_create_whose_answer_was_lost_is_linked_on_the_next_call(exmail_sim):
    person = make_person()
    exmail_sim.faults.drop(1, path=CREATE)
    backend = get_backend("email")

    lost = backend.ensure_account(person, {})
    again = backend.ensure_account(person, {})

    assert lost.kind == OutcomeKind.TRANSIENT
    assert again.kind == OutcomeKind.LINKED
    assert again.external_id == person.email
    assert exmail_sim.created == {person.email: 1}
    assert exmail_sim.calls_to(CREATE) == 1


def test_create_that_timed_out_but_completed_is_linked_on_the_next_call(exmail_sim, backend_settings):
    backend_settings.TARGET_HTTP_TIMEOUT_SECONDS = 0.3
    person = make_person()
    exmail_sim.faults.delay(0.8, path=CREATE)
    backend = get_backend("email")

    slow = backend.ensure_account(person, {})
    assert exmail_sim.wait_idle()
    again = backend.ensure_account(person, {})

    assert slow.code == "timeout"
    assert again.kind == OutcomeKind.LINKED
    assert exmail_sim.created == {person.email: 1}


# --- Reallocation ---------------------------------------------------------------------------------

_person_ids = itertools.count(700_000)


def _hr_person(number: str, name: str, email: str, phone: str = "13800000000") -> HrPerson:
    return HrPerson.objects.create(person_id=next(_person_ids), employee_number=number, full_name=name,
                                   telephone_number1=phone, email=email, created_by="hr_sync",
                                   last_updated_by="hr_sync")


@pytest.mark.django_db
def test_taken_address_is_replaced_by_the_next_free_one_and_the_mailbox_created(exmail_sim, backend_settings):
    backend_settings.EMAIL_DOMAIN = "example.com"
    _hr_person("X-1", "张三", "zhangsan2@example.com")          # our own table has zhangsan2 already
    person = _hr_person("X-2", "张三", "zhangsan@example.com", phone="13800000002")
    exmail_sim.add_user("zhangsan@example.com", name="张三", mobile="13911112222", extid="X-OTHER")
    exmail_sim.add_user("zhangsan3@example.com", name="张三", mobile="13911113333", extid="X-OTHER-2")
    backend = get_backend("email")

    state, addresses = {}, []
    for _ in range(4):
        snapshot = make_person(person_pk=person.pk, employee_number=person.employee_number, email=person.email,
                               phone_number=person.telephone_number1)
        outcome = backend.ensure_account(snapshot, state)
        if outcome.kind != OutcomeKind.PERMANENT:
            break
        assert outcome.state["reallocate_email"] is True
        state = {k: v for k, v in outcome.state.items() if k not in ("reallocate_email", "taken_email")}
        new = person_reallocate_email(person_pk=person.pk, taken_email=outcome.state["taken_email"],
                                      refused=outcome.state["refused_emails"])
        addresses.append(new)
        person.refresh_from_db()

    assert addresses == ["zhangsan3@example.com", "zhangsan4@example.com"]
    assert outcome.kind == OutcomeKind.CREATED
    assert outcome.external_id == "zhangsan4@example.com"
    assert person.email == "zhangsan4@example.com"


@pytest.mark.django_db
def test_reallocation_is_idempotent_when_the_address_already_moved_on(backend_settings):
    person = _hr_person("Y-1", "李四", "lisi2@example.com")

    assert person_reallocate_email(person_pk=person.pk, taken_email="lisi@example.com") == "lisi2@example.com"
    person.refresh_from_db()
    assert person.email == "lisi2@example.com"


# --- Limits per cgi: 500 a minute and 15,000 an hour ------------------------------------------------

@pytest.mark.parametrize("window", ["minute", "hour"])
def test_each_cgi_is_paced_under_its_own_window_and_no_45009_comes_back(exmail_sim, backend_settings, window):
    # The simulator's window is scaled to one second so that the test is short: 10 calls a second per cgi,
    # and the client set to 8 a second, stated in the window under test (the margin for an hour-long
    # window is small, and a second-long one would let the wire's jitter count).
    limit = exmail_sim.cgi_limits[0 if window == "minute" else 1]
    limit.limit, limit.seconds = 10, 1.0
    seconds = 60 if window == "minute" else 3600
    setattr(backend_settings, f"MAILBOX_MAX_CALLS_PER_{window.upper()}_PER_CGI", 8 * seconds)
    backend = get_backend("email")

    outcomes = [backend.ensure_account(make_person(), {}) for _ in range(25)]

    assert {o.kind for o in outcomes} == {OutcomeKind.CREATED}
    assert limit.refused == 0
    # Two cgis, two shared rows: user/get does not use up user/create's calls.
    assert paced_endpoints("email") >= {GET, CREATE}


def test_without_the_per_cgi_pacing_the_same_calls_are_refused_with_45009(exmail_sim, backend_settings):
    # The control for the test above: the simulator does refuse more than its window allows.
    exmail_sim.cgi_limits[1].limit, exmail_sim.cgi_limits[1].seconds = 10, 1.0
    backend = get_backend("email")

    outcomes = [backend.ensure_account(make_person(), {}) for _ in range(25)]

    assert exmail_sim.cgi_limits[1].refused > 0
    assert "45009" in {o.code for o in outcomes}


# --- Lookups in batches: user/batchcheck ------------------------------------------------------------

BATCHCHECK = "/cgi-bin/user/batchcheck"


def test_twenty_new_mailboxes_cost_one_batchcheck_and_a_create_each(exmail_sim):
    persons = [make_person() for _ in range(20)]
    backend = get_backend("email")
    assert backend.batch_size() == 20

    outcomes = backend.ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in outcomes] == [OutcomeKind.CREATED] * 20
    assert exmail_sim.batchcheck_sizes == [20]
    assert exmail_sim.calls_to(GET) == 0
    assert exmail_sim.calls_to(CREATE) == 20
    assert all(exmail_sim.created[p.email] == 1 for p in persons)


def test_a_batch_reads_back_only_the_addresses_that_hold_a_mailbox(exmail_sim):
    ours, strangers, group, new = make_person(), make_person(), make_person(), make_person()
    exmail_sim.add_user(ours.email, name=ours.full_name, mobile=ours.phone_number)
    exmail_sim.add_user(strangers.email, name="王五", mobile="13911112222", extid="OTHER")
    exmail_sim.groups.add(group.email.lower())

    outcomes = get_backend("email").ensure_accounts([(p, {}) for p in (ours, strangers, group, new)])

    assert [o.kind for o in outcomes] == [OutcomeKind.LINKED, OutcomeKind.PERMANENT, OutcomeKind.PERMANENT,
                                          OutcomeKind.CREATED]
    assert [o.code for o in outcomes[1:3]] == ["email_taken", "email_taken"]
    assert outcomes[2].state["taken_email"] == group.email
    assert exmail_sim.calls_to(GET) == 2          # the two mailboxes, not the group nor the new address
    assert exmail_sim.calls_to(CREATE) == 1


def test_a_failed_batchcheck_retries_every_person_and_creates_nothing_twice(exmail_sim):
    persons = [make_person() for _ in range(5)]
    exmail_sim.faults.fail(1, status=503, path=BATCHCHECK)
    exmail_sim.faults.drop(1, path=CREATE)        # the second create arrives; its answer is lost
    backend = get_backend("email")

    failed = backend.ensure_accounts([(p, {}) for p in persons])
    assert [(o.kind, o.code) for o in failed] == [(OutcomeKind.TRANSIENT, "http_503")] * 5
    first = backend.ensure_accounts([(p, {}) for p in persons])
    assert [o.kind for o in first].count(OutcomeKind.TRANSIENT) == 1
    again = backend.ensure_accounts([(p, {}) for p, o in zip(persons, first) if not o.succeeded])

    assert [o.kind for o in again] == [OutcomeKind.LINKED]   # found by the batchcheck, read back: ours
    assert all(exmail_sim.created[p.email] == 1 for p in persons)


@pytest.mark.django_db
def test_a_batch_stops_calling_before_it_outlasts_its_tasks_leases(exmail_sim, backend_settings):
    """The creations are paced: once a quarter of the lease has gone, the rest of the batch waits its turn
    (another worker would otherwise claim and call for them again)."""
    backend_settings.TASK_LEASE_SECONDS = 0.4          # a quarter: 0.1 s
    backend_settings.MAILBOX_MAX_CALLS_PER_MINUTE_PER_CGI = 600   # 10 a second per cgi: 0.1 s apart
    persons = [make_person() for _ in range(5)]

    outcomes = get_backend("email").ensure_accounts([(p, {}) for p in persons])

    deferred = [o for o in outcomes if o.code == "batch_deadline"]
    assert deferred and all(o.kind == OutcomeKind.TRANSIENT and o.rate_limited for o in deferred)
    created = [o for o in outcomes if o.kind == OutcomeKind.CREATED]
    assert len(created) + len(deferred) == 5 and len(exmail_sim.created) == len(created)
