"""The SCIM IDaaS backend against a real scim2-server, through a fault-injecting proxy on loopback."""

import threading
import time

import pytest

from syncservice.backends import get_backend
from syncservice.backends.base import OutcomeKind

from .conftest import make_person


def test_new_user_is_created_with_the_scim_id_as_external_id(scim):
    person = make_person(full_name="李四", phone_number="13800138001")

    outcome = get_backend("idaas").ensure_account(person, {})

    assert outcome.kind == OutcomeKind.CREATED
    user = scim.get_user(outcome.external_id)
    assert user["userName"] == person.employee_number
    assert user["externalId"] == person.employee_number
    assert user["name"]["formatted"] == "李四"
    assert user["displayName"] == "李四"
    assert user["active"] is True
    assert user["emails"] == [{"value": person.email, "type": "work", "primary": True}]
    assert user["phoneNumbers"] == [{"value": "13800138001", "type": "mobile"}]


def test_existing_user_of_the_same_person_is_linked_without_creating(scim):
    person = make_person()
    existing = scim.create_user(userName=person.employee_number, externalId=person.employee_number,
                                emails=[{"value": person.email}])

    outcome = get_backend("idaas").ensure_account(person, {})

    assert outcome.kind == OutcomeKind.LINKED
    assert outcome.external_id == existing["id"]
    assert scim.proxy.calls_to("/Users", "POST") == 0


def test_user_of_someone_else_with_the_same_user_name_is_a_permanent_conflict(scim):
    person = make_person()
    scim.create_user(userName=person.employee_number, externalId="HR-OTHER-7",
                     emails=[{"value": "other@example.com"}], phoneNumbers=[{"value": "13999999999"}])

    outcome = get_backend("idaas").ensure_account(person, {})

    assert outcome.kind == OutcomeKind.PERMANENT
    assert outcome.code == "uniqueness"
    assert "HR-OTHER-7" in outcome.message
    assert len(scim.users_named(person.employee_number)) == 1


@pytest.mark.parametrize("ours", [True, False])
def test_409_uniqueness_is_resolved_by_a_lookup(scim, ours):
    """The user appears between our lookup and our create: the server answers 409 scimType uniqueness."""
    person = make_person()
    scim.proxy.faults.delay(0.5, method="POST", path="/Users")
    result = {}
    caller = threading.Thread(target=lambda: result.update(
        outcome=get_backend("idaas").ensure_account(person, {})))
    caller.start()
    deadline = time.monotonic() + 5
    while scim.proxy.calls_to("/Users", "POST") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    existing = scim.create_user(userName=person.employee_number,
                                externalId=person.employee_number if ours else "SOMEONE-ELSE")
    caller.join()

    outcome = result["outcome"]
    if ours:
        assert outcome.kind == OutcomeKind.LINKED
        assert outcome.external_id == existing["id"]
        assert "already in use" in outcome.message   # scim2-server's 409 detail, verbatim
    else:
        assert outcome.kind == OutcomeKind.PERMANENT
        assert outcome.code == "uniqueness"
    assert len(scim.users_named(person.employee_number)) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_is_transient_and_the_next_call_creates(scim, status):
    person = make_person()
    scim.proxy.faults.fail(1, status=status, method="POST", path="/Users")
    backend = get_backend("idaas")

    failed = backend.ensure_account(person, {})
    again = backend.ensure_account(person, {})

    assert failed.kind == OutcomeKind.TRANSIENT
    assert failed.code == f"http_{status}"
    assert again.kind == OutcomeKind.CREATED


def test_429_is_transient_and_honours_retry_after(scim):
    scim.proxy.faults.fail(1, status=429, path="/Users", retry_after=7,
                           body={"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "429",
                                 "detail": "too many requests"})

    outcome = get_backend("idaas").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.retry_after == 7
    assert outcome.message == "too many requests"


def test_timeout_is_transient(scim, backend_settings):
    backend_settings.TARGET_HTTP_TIMEOUT_SECONDS = 0.3
    scim.proxy.faults.delay(1.0, method="GET", path="/Users")

    outcome = get_backend("idaas").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "timeout"


def test_connection_refused_is_transient(scim, backend_settings, closed_port_url):
    backend_settings.IDAAS_SCIM_URL = closed_port_url

    outcome = get_backend("idaas").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "connection_error"


def test_create_whose_answer_was_lost_is_linked_on_the_next_call(scim):
    person = make_person()
    scim.proxy.faults.drop(1, method="POST", path="/Users")
    backend = get_backend("idaas")

    lost = backend.ensure_account(person, {})
    again = backend.ensure_account(person, {})

    assert lost.kind == OutcomeKind.TRANSIENT
    assert again.kind == OutcomeKind.LINKED
    users = scim.users_named(person.employee_number)
    assert [u["id"] for u in users] == [again.external_id]
    assert scim.proxy.calls_to("/Users", "POST") == 1


def test_rejected_bearer_token_is_transient_with_the_servers_detail(scim, backend_settings):
    backend_settings.IDAAS_SCIM_TOKEN = "wrong-token"

    outcome = get_backend("idaas").ensure_account(make_person(), {})

    assert outcome.kind == OutcomeKind.TRANSIENT
    assert outcome.code == "http_401"
    assert "Authorization" in outcome.message
    assert "wrong-token" not in outcome.message


def test_user_name_with_quotes_is_escaped_in_the_filter(scim):
    person = make_person(employee_number='E"1\\2')

    first = get_backend("idaas").ensure_account(person, {})
    second = get_backend("idaas").ensure_account(person, {})

    assert first.kind == OutcomeKind.CREATED
    assert second.kind == OutcomeKind.LINKED
    assert second.external_id == first.external_id


# --- Batches: POST /Bulk (RFC 7644 §3.7) where /ServiceProviderConfig announces it -------------------

def test_the_real_scim2_server_announces_bulk_and_new_users_go_through_one_bulk_request(scim):
    persons = [make_person() for _ in range(6)]
    backend = get_backend("idaas")
    assert backend.bulk().supported and backend.bulk().max_operations >= 6

    outcomes = backend.ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in outcomes] == [OutcomeKind.CREATED] * 6
    for person, outcome in zip(persons, outcomes):
        [user] = scim.users_named(person.employee_number)
        assert user["id"] == outcome.external_id
        assert user["emails"] == [{"value": person.email, "type": "work", "primary": True}]
    assert scim.proxy.calls_to("/Bulk", "POST") == 1
    assert scim.proxy.calls_to("/Users", "POST") == 0
    assert scim.proxy.calls_to("/Users", "GET") == 1     # one search: userName eq "a" or userName eq "b" …


def test_existing_users_in_a_batch_are_linked_or_refused_and_only_the_others_created(scim):
    ours, strangers, new = make_person(), make_person(), make_person()
    existing = scim.create_user(userName=ours.employee_number, externalId=ours.employee_number)
    scim.create_user(userName=strangers.employee_number, externalId="HR-OTHER-8",
                     emails=[{"value": "other8@example.com"}])

    outcomes = get_backend("idaas").ensure_accounts([(p, {}) for p in (ours, strangers, new)])

    assert [(o.kind, o.code) for o in outcomes[:2]] == [(OutcomeKind.LINKED, ""), (OutcomeKind.PERMANENT, "uniqueness")]
    assert outcomes[0].external_id == existing["id"]
    assert outcomes[2].kind == OutcomeKind.CREATED
    assert len(scim.users_named(new.employee_number)) == 1


def test_a_409_in_one_bulk_operation_links_that_person_and_the_others_are_unaffected(scim):
    persons = [make_person() for _ in range(4)]
    # The user appears between the search and the Bulk request (another worker's create, or ours whose
    # answer was lost): the search still says no user, so its operation meets a 409 uniqueness.
    late = persons[1]
    scim.proxy.faults.fail(1, status=200, method="GET", path="/Users",
                           body={"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                                 "totalResults": 0, "Resources": []})
    existing = scim.create_user(userName=late.employee_number, externalId=late.employee_number)

    outcomes = get_backend("idaas").ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in outcomes] == [OutcomeKind.CREATED, OutcomeKind.LINKED, OutcomeKind.CREATED,
                                          OutcomeKind.CREATED]
    assert outcomes[1].external_id == existing["id"]
    assert all(len(scim.users_named(p.employee_number)) == 1 for p in persons)


def test_a_dropped_bulk_answer_is_retried_without_a_duplicate(scim):
    persons = [make_person() for _ in range(5)]
    scim.proxy.faults.drop(1, path="/Bulk")
    backend = get_backend("idaas")

    lost = backend.ensure_accounts([(p, {}) for p in persons])
    assert {o.kind for o in lost} == {OutcomeKind.TRANSIENT}
    again = backend.ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in again] == [OutcomeKind.LINKED] * 5   # the lost request had created them
    assert all(len(scim.users_named(p.employee_number)) == 1 for p in persons)
    assert scim.proxy.calls_to("/Bulk", "POST") == 1


@pytest.mark.parametrize("status", [400, 413])
def test_a_bulk_request_refused_as_a_whole_goes_one_by_one(scim, status):
    persons = [make_person() for _ in range(3)]
    scim.proxy.faults.fail(1, status=status, method="POST", path="/Bulk")
    backend = get_backend("idaas")

    outcomes = backend.ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in outcomes] == [OutcomeKind.CREATED] * 3   # no one failed for the request's fault
    assert all(len(scim.users_named(p.employee_number)) == 1 for p in persons)
    assert scim.proxy.calls_to("/Users", "POST") == 3
    # Bulk rests until the support is read again: the next batch goes one by one at once.
    more = [make_person() for _ in range(2)]
    assert [o.kind for o in backend.ensure_accounts([(p, {}) for p in more])] == [OutcomeKind.CREATED] * 2
    assert scim.proxy.calls_to("/Bulk", "POST") == 1


def test_a_scim_server_that_does_not_answer_its_config_is_asked_again_later(scim):
    backend = get_backend("idaas")
    scim.proxy.faults.drop(1, path="/ServiceProviderConfig")

    assert backend.batch_size() == 1          # the run starts one by one, without waiting long
    assert backend.batch_size() == 1          # and does not ask again at once
    assert scim.proxy.calls_to("/ServiceProviderConfig", "GET") == 1


def test_bulk_requests_stay_within_the_servers_max_operations(scim_small_bulk):
    persons = [make_person() for _ in range(5)]

    outcomes = get_backend("idaas").ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in outcomes] == [OutcomeKind.CREATED] * 5
    assert scim_small_bulk.proxy.calls_to("/Bulk", "POST") == 3   # 2 + 2 + 1


def test_a_server_without_bulk_gets_one_create_per_person(scim_without_patch):
    # scim_without_patch is the server whose /ServiceProviderConfig says bulk.supported false.
    persons = [make_person() for _ in range(3)]

    outcomes = get_backend("idaas").ensure_accounts([(p, {}) for p in persons])

    assert [o.kind for o in outcomes] == [OutcomeKind.CREATED] * 3
    assert scim_without_patch.proxy.calls_to("/Bulk", "POST") == 0
    assert scim_without_patch.proxy.calls_to("/Users", "POST") == 3
