"""The WeLink backend against the WeLink simulator over loopback."""

import threading

import pytest

from syncservice.backends import get_backend
from syncservice.backends.base import OutcomeKind
from syncservice.simulators.welink import BULK_PATH, STATUS_PATH, TOKEN_PATH, USERS_PATH

from .conftest import make_person, paced_endpoints


def drive(backend, person, state=None, max_calls=10):
    """Call ensure_account the way the process stage does, feeding the state back, until it is final."""
    state = dict(state or {})
    outcomes = []
    for _ in range(max_calls):
        outcome = backend.ensure_account(person, state)
        outcomes.append(outcome)
        if outcome.state is not None:
            state = outcome.state
        if outcome.kind not in (OutcomeKind.IN_PROGRESS, OutcomeKind.TRANSIENT):
            break
    return outcomes


def test_new_person_is_submitted_then_polled_until_opened(welink_sim):
    person = make_person(full_name="李四", phone_number="13800138001", department_code="D042")
    backend = get_backend("welink")

    outcomes = drive(backend, person)

    assert [o.kind for o in outcomes] == ["in_progress", "in_progress", "in_progress", "created"]
    assert [o.code for o in outcomes] == ["47100", "47100", "47108", "47109"]
    assert outcomes[0].state["submitted"] is True
    record = welink_sim.users[person.employee_number]
    # The status answer carries no userId: the account is known by its corpUserId, and no lookup is spent.
    assert outcomes[-1].external_id == person.employee_number
    assert welink_sim.calls_to(USERS_PATH) == 0
    assert record["userStatus"] == "3"
    assert record["mobileNumber"] == "+86-13800138001"
    assert record["userNameCn"] == "李四"
    assert record["corpDeptCode"] == "D042"
    assert record["userEmail"] == person.email
    assert welink_sim.submissions[person.employee_number] == 1
    assert welink_sim.opened[person.employee_number] == 1


def test_open_account_of_the_same_person_is_linked_without_submitting(welink_sim):
    person = make_person()
    existing = welink_sim.add_user(person.employee_number, name=person.full_name,
                                   mobile=f"+86-{person.phone_number}")

    outcome = get_backend("welink").ensure_account(person, {})

    assert outcome.kind == OutcomeKind.LINKED
    assert outcome.external_id == existing["userId"]
    assert welink_sim.calls_to(BULK_PATH) == 0


def test_account_of_someone_else_under_the_same_corp_user_id_is_a_permanent_conflict(welink_sim):
    person = make_person()
    welink_sim.add_user(person.employee_number, name="王五", mobile="+86-13999999999",
                        email="wangwu@example.com")

    outcome = get_backend("welink").ensure_account(person, {})

    assert outcome.kind == OutcomeKind.PERMANENT
    assert outcome.code == "conflict"
    assert welink_sim.calls_to(BULK_PATH) == 0
    assert welink_sim.users[person.employee_number]["userNameCn"] == "王五"


def test_mobile_registered_to_another_user_fails_for_good_with_47120(welink_sim):
    person = make_person(phone_number="13700000001")
    welink_sim.add_user("SOMEONE-ELSE", name="赵六", mobile="+86-13700000001")

    outcomes = drive(get_backend("welink"), person)

    assert outcomes[-1].kind == OutcomeKind.PERMANENT
    assert outcomes[-1].code == "47120"
    assert "registered" in outcomes[-1].message
    assert person.employee_number not in welink_sim.opened


def test_job_failing_with_47110_fails_for_good(welink_sim):
    person = make_person()
    welink_sim.fail_job(person.employee_number)

    outcomes = drive(get_backend("welink"), person)

    assert outcomes[-1].kind == OutcomeKind.PERMANENT
    assert outcomes[-1].code == "47110"
    assert outcomes[-1].message == "Failed to get the company email suffix information."


def test_expired_token_mid_run_is_refreshed_once_and_the_call_succeeds(welink_sim):
    backend = get_backend("welink")
    first = make_person()
    assert backend.ensure_account(first, {}).kind == OutcomeKind.IN_PROGRESS
    welink_sim.expire_tokens()   # the cached token dies while the client still trusts it

    outcome = backend.ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.IN_PROGRESS
    assert welink_sim.tokens.issued == 2
    assert welink_sim.calls_to(TOKEN_PATH) == 2


def test_token_whose_lifetime_runs_out_is_refreshed(welink_sim):
    welink_sim.tokens.lifetime = 0.3
    welink_sim.tokens.announced_expires_in = 7200
    backend = get_backend("welink")
    backend.ensure_account(make_person(), {})
    threading.Event().wait(0.4)

    outcome = backend.ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.IN_PROGRESS
    assert welink_sim.tokens.issued == 2


def test_token_refused_again_after_refresh_is_transient_not_a_loop(welink_sim):
    welink_sim.tokens.lifetime = 0   # every ticket is dead on arrival

    outcome = get_backend("welink").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "47103"
    assert welink_sim.tokens.issued == 2


def test_wrong_client_secret_is_transient_and_names_the_vendor_code(welink_sim, backend_settings):
    backend_settings.WELINK_CLIENT_SECRET = "not-the-secret"

    outcome = get_backend("welink").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "411007"
    assert "not-the-secret" not in outcome.message


@pytest.mark.parametrize("http_status", [200, 429])
def test_rate_limit_48503_is_transient_with_retry_after(welink_sim, http_status):
    welink_sim.rate_limit.limit = 1                # a call per second per API
    welink_sim.rate_limit_status = http_status
    backend = get_backend("welink")
    person = make_person()

    outcome = backend.ensure_account(person, {})   # status and bulk: one call of each API this second
    assert outcome.kind == OutcomeKind.IN_PROGRESS

    outcome = backend.ensure_account(person, outcome.state)
    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "48503"
    assert outcome.retry_after == 1.0
    assert welink_sim.rate_limit.refused == 1


def test_client_side_limit_keeps_one_worker_under_the_vendor_limit(welink_sim, backend_settings):
    welink_sim.rate_limit.limit = 6
    backend_settings.WELINK_MAX_CALLS_PER_SECOND = 4
    backend = get_backend("welink")
    person = make_person()

    outcomes = [backend.ensure_account(person, {"submitted": True}) for _ in range(6)]

    assert all(o.kind == OutcomeKind.IN_PROGRESS or o.succeeded for o in outcomes), outcomes
    assert welink_sim.rate_limit.refused == 0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_is_transient(welink_sim, status):
    welink_sim.faults.fail(1, status=status, path=STATUS_PATH, body=b"<html>gateway error</html>")

    outcome = get_backend("welink").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == f"http_{status}"
    assert "gateway error" in outcome.message


def test_timeout_is_transient(welink_sim, backend_settings):
    backend_settings.TARGET_HTTP_TIMEOUT_SECONDS = 0.3
    welink_sim.faults.delay(1.0, path=STATUS_PATH)

    outcome = get_backend("welink").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "timeout"


def test_connection_refused_is_transient(welink_sim, backend_settings, closed_port_url):
    backend_settings.WELINK_API_URL = closed_port_url

    outcome = get_backend("welink").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "connection_error"


def test_submission_whose_answer_was_lost_is_polled_not_submitted_again(welink_sim):
    person = make_person()
    welink_sim.faults.drop(1, path=BULK_PATH)
    backend = get_backend("welink")

    lost = backend.ensure_account(person, {})
    assert lost.kind == OutcomeKind.TRANSIENT
    assert lost.state == {"submit_sent": True}

    outcomes = drive(backend, person, lost.state)

    assert outcomes[0].kind == OutcomeKind.IN_PROGRESS
    assert outcomes[-1].kind == OutcomeKind.CREATED   # the job that opened it was ours
    assert outcomes[-1].external_id == person.employee_number
    assert welink_sim.submissions[person.employee_number] == 1
    assert welink_sim.opened[person.employee_number] == 1


def test_lost_answer_without_saved_state_is_found_by_the_lookup(welink_sim):
    """A worker killed after submitting kept no state: the lookup finds the job and it is polled."""
    person = make_person()
    welink_sim.faults.drop(1, path=BULK_PATH)
    backend = get_backend("welink")
    backend.ensure_account(person, {})

    outcomes = drive(backend, person, {})

    assert outcomes[0].kind == OutcomeKind.IN_PROGRESS
    assert outcomes[-1].succeeded
    assert welink_sim.submissions[person.employee_number] == 1


def test_job_unknown_to_welink_is_submitted_again(welink_sim):
    person = make_person()

    outcome = get_backend("welink").ensure_account(person, {"submitted": True})

    assert outcome.kind == OutcomeKind.IN_PROGRESS
    assert outcome.state["submitted"] is True
    assert welink_sim.calls_to(STATUS_PATH) == 1
    assert welink_sim.submissions[person.employee_number] == 1


def test_concurrent_calls_share_one_token(welink_sim):
    backend = get_backend("welink")
    persons = [make_person() for _ in range(8)]
    outcomes = []
    threads = [threading.Thread(target=lambda p=p: outcomes.append(backend.ensure_account(p, {})))
               for p in persons]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [o.kind for o in outcomes] == [OutcomeKind.IN_PROGRESS] * 8
    assert welink_sim.tokens.issued == 1


# --- Batches: several persons per users/bulk and users/status call -----------------------------------

def drive_batch(backend, persons, states=None, max_rounds=10):
    """Call ensure_accounts for every person not final yet, the way the process stage batches them."""
    states = dict(states or {p.employee_number: {} for p in persons})
    final = {}
    codes = {p.employee_number: [] for p in persons}
    for _ in range(max_rounds):
        open_persons = [p for p in persons if p.employee_number not in final]
        if not open_persons:
            break
        outcomes = backend.ensure_accounts([(p, states[p.employee_number]) for p in open_persons])
        for person, outcome in zip(open_persons, outcomes, strict=True):
            codes[person.employee_number].append(outcome.code)
            if outcome.state is not None:
                states[person.employee_number] = outcome.state
            if outcome.kind not in (OutcomeKind.IN_PROGRESS, OutcomeKind.TRANSIENT):
                final[person.employee_number] = outcome
    return final, codes


def test_ten_new_persons_cost_one_status_one_bulk_and_the_polls(welink_sim):
    persons = [make_person() for _ in range(10)]
    backend = get_backend("welink")

    final, _ = drive_batch(backend, persons)

    assert {o.kind for o in final.values()} == {OutcomeKind.CREATED}
    assert welink_sim.calls_to(BULK_PATH) == 1
    # One status call before the submission (no job yet), then polls_before_open + 1 polls for all ten.
    assert welink_sim.calls_to(STATUS_PATH) == 1 + welink_sim.polls_before_open + 1
    assert welink_sim.calls_to(USERS_PATH) == 0
    assert all(welink_sim.opened[p.employee_number] == 1 for p in persons)


def test_bulk_size_setting_splits_the_submissions_and_one_status_call_covers_the_batch(welink_sim, backend_settings):
    backend_settings.WELINK_BULK_SIZE = 4
    persons = [make_person() for _ in range(10)]

    outcomes = get_backend("welink").ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in outcomes] == [OutcomeKind.IN_PROGRESS] * 10
    assert welink_sim.calls_to(BULK_PATH) == 3   # 4 + 4 + 2
    assert welink_sim.calls_to(STATUS_PATH) == 1


def test_fifty_persons_are_polled_in_one_status_call_and_submitted_ten_at_a_time(welink_sim):
    persons = [make_person() for _ in range(50)]
    backend = get_backend("welink")
    assert backend.batch_size() == 50

    final, _ = drive_batch(backend, persons)

    assert {o.kind for o in final.values()} == {OutcomeKind.CREATED}
    assert welink_sim.calls_to(BULK_PATH) == 5
    assert welink_sim.calls_to(STATUS_PATH) == 1 + welink_sim.polls_before_open + 1
    assert max(welink_sim.bulk_sizes) == 10


def test_dropped_answer_to_a_ten_person_bulk_call_is_retried_without_a_duplicate(welink_sim):
    persons = [make_person() for _ in range(10)]
    welink_sim.faults.drop(1, path=BULK_PATH)
    backend = get_backend("welink")

    lost = backend.ensure_accounts([(p, {}) for p in persons])
    assert [(o.kind, o.state) for o in lost] == [(OutcomeKind.TRANSIENT, {"submit_sent": True})] * 10

    final, _ = drive_batch(backend, persons, {p.employee_number: o.state for p, o in zip(persons, lost)})

    assert {o.kind for o in final.values()} == {OutcomeKind.CREATED}
    assert welink_sim.calls_to(BULK_PATH) == 1    # the lost call had arrived: polled, never sent again
    assert all(welink_sim.submissions[p.employee_number] == 1 for p in persons)
    assert all(welink_sim.opened[p.employee_number] == 1 for p in persons)


def test_a_failed_status_call_retries_every_person_of_the_batch(welink_sim):
    persons = [make_person() for _ in range(5)]
    welink_sim.faults.fail(1, status=503, path=STATUS_PATH)
    backend = get_backend("welink")

    failed = backend.ensure_accounts([(p, {"submitted": True}) for p in persons])

    assert [(o.kind, o.code, o.state) for o in failed] == [(OutcomeKind.TRANSIENT, "http_503", None)] * 5
    assert welink_sim.calls_to(BULK_PATH) == 0


def test_one_persons_47120_fails_that_person_only(welink_sim):
    persons = [make_person() for _ in range(10)]
    welink_sim.add_user("SOMEONE-ELSE", name="赵六", mobile=f"+86-{persons[3].phone_number}")
    backend = get_backend("welink")

    final, codes = drive_batch(backend, persons)

    assert (final[persons[3].employee_number].kind, final[persons[3].employee_number].code) == \
        (OutcomeKind.PERMANENT, "47120")
    others = [p for i, p in enumerate(persons) if i != 3]
    assert {final[p.employee_number].kind for p in others} == {OutcomeKind.CREATED}
    assert all(codes[p.employee_number][-1] == "47109" for p in others)
    assert welink_sim.calls_to(BULK_PATH) == 1


def test_one_invalid_person_in_a_bulk_call_fails_alone_with_the_vendor_code(welink_sim):
    persons = [make_person() for _ in range(3)] + [make_person(full_name="")]

    outcomes = get_backend("welink").ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in outcomes] == [OutcomeKind.IN_PROGRESS] * 3 + [OutcomeKind.PERMANENT]
    assert outcomes[-1].code == "47008"
    assert welink_sim.calls_to(BULK_PATH) == 1


def test_a_known_corp_user_id_in_a_batch_is_looked_up_and_the_others_are_not(welink_sim):
    persons = [make_person() for _ in range(4)]
    welink_sim.add_user(persons[0].employee_number, name="王五", mobile="+86-13999999999",
                        email="wangwu@example.com")
    welink_sim.add_user(persons[1].employee_number, name=persons[1].full_name,
                        mobile=f"+86-{persons[1].phone_number}")

    outcomes = get_backend("welink").ensure_accounts([(p, {}) for p in persons])

    assert [(o.kind, o.code) for o in outcomes[:2]] == [(OutcomeKind.PERMANENT, "conflict"), (OutcomeKind.LINKED, "")]
    assert [o.kind for o in outcomes[2:]] == [OutcomeKind.IN_PROGRESS] * 2
    assert welink_sim.calls_to(USERS_PATH) == 2
    assert welink_sim.submissions == {p.employee_number: 1 for p in persons[2:]}
    assert welink_sim.users[persons[0].employee_number]["userNameCn"] == "王五"


def test_each_welink_api_has_its_own_40_calls_a_second(welink_sim, backend_settings):
    # 3 calls a second per API at the simulator and in the client's setting: a batch that needs a status
    # and a bulk call is never refused, though together they exceed 3 a second.
    welink_sim.rate_limit.limit = 3
    backend_settings.WELINK_MAX_CALLS_PER_SECOND_PER_API = 3
    backend = get_backend("welink")

    outcomes = [backend.ensure_account(make_person(), {}) for _ in range(6)]

    assert [o.kind for o in outcomes] == [OutcomeKind.IN_PROGRESS] * 6
    assert welink_sim.rate_limit.refused == 0
    assert paced_endpoints("welink") >= \
        {STATUS_PATH, BULK_PATH}


def test_a_person_the_status_answer_leaves_out_is_looked_up_before_a_submission(welink_sim):
    """Nothing known of a person is not "no job": a user of someone else's under that corpUserId must be
    seen by the lookup, never overwritten by a blind upsert."""
    persons = [make_person() for _ in range(4)]
    stranger = persons[3]
    welink_sim.add_user(stranger.employee_number, name="别人", mobile="+86-13999999999", email="other@corp.cn")
    welink_sim.status_answers_first = 2

    outcomes = get_backend("welink").ensure_accounts([(p, {}) for p in persons])

    assert outcomes[3].kind == OutcomeKind.PERMANENT and outcomes[3].code == "conflict"
    assert welink_sim.users[stranger.employee_number]["userNameCn"] == "别人"
    assert stranger.employee_number not in welink_sim.submissions
    assert welink_sim.calls_to(USERS_PATH) == 2           # the two left out, looked up
    assert [o.kind for o in outcomes[:3]] == [OutcomeKind.IN_PROGRESS] * 3


def test_a_submitted_person_the_status_answer_leaves_out_tries_again(welink_sim):
    persons = [make_person() for _ in range(3)]
    backend = get_backend("welink")
    submitted = backend.ensure_accounts([(p, {}) for p in persons])
    welink_sim.status_answers_first = 1

    polled = backend.ensure_accounts([(p, o.state) for p, o in zip(persons, submitted)])

    assert [(o.kind, o.code) for o in polled[1:]] == [(OutcomeKind.TRANSIENT, "no_status")] * 2
    assert welink_sim.calls_to(BULK_PATH) == 1


def test_a_code_for_the_whole_status_call_fails_no_one_for_good(welink_sim):
    persons = [make_person() for _ in range(3)]
    welink_sim.status_list_limit = 2

    outcomes = get_backend("welink").ensure_accounts([(p, {}) for p in persons])

    assert [(o.kind, o.code) for o in outcomes] == [(OutcomeKind.TRANSIENT, "47013")] * 3
    assert welink_sim.calls_to(BULK_PATH) == 0
    welink_sim.status_list_limit = 0
    again = get_backend("welink").ensure_accounts([(p, {}) for p in persons])
    assert [o.kind for o in again] == [OutcomeKind.IN_PROGRESS] * 3
