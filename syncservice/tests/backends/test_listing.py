"""Reading the targets' accounts for reconciliation: listings page by page, lookups, and failures that say why."""

import math

import pytest
import requests

from syncservice.backends import get_backend, reset_backends
from syncservice.backends.base import ListingFailed, TargetAccount
from syncservice.backends.local import LocalIdaasBackend, LocalMailboxBackend, LocalWelinkBackend
from syncservice.models import LocalTargetAccount
from syncservice.simulators.welink import USERS_PATH

from .conftest import _run, make_person
from .test_welink import drive

LIST = "/cgi-bin/user/list"


def read_all(backend, page_size: int) -> list[list[TargetAccount]]:
    """Every page of a listing, the way reconciliation reads it."""
    pages, cursor = [], None
    for _ in range(1000):
        page = backend.list_accounts(cursor=cursor, page_size=page_size)
        pages.append(page.accounts)
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError("the listing did not end")


def flatten(pages) -> list[TargetAccount]:
    return [account for page in pages for account in page]


# --- Local ------------------------------------------------------------------------------------------

def test_local_listing_returns_every_account_once_across_pages_one_query_each(db, django_assert_num_queries):
    backend = LocalIdaasBackend()
    persons = [make_person(department_code=f"D{n}") for n in range(5)]
    ours = {p.employee_number: backend.ensure_account(p, {}).external_id for p in persons}
    LocalTargetAccount.objects.create(system="idaas", employee_number="", external_id="idaas-by-hand",
                                      full_name="手工账号")
    LocalTargetAccount.objects.create(system="idaas", employee_number="E-LEFT", external_id="idaas-left",
                                      active=False)
    LocalTargetAccount.objects.create(system="welink", employee_number="E-OTHER", external_id="welink-other")

    pages, cursor = [], None
    while True:
        with django_assert_num_queries(1):
            page = backend.list_accounts(cursor=cursor, page_size=2)
        pages.append(page.accounts)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert [len(p) for p in pages] == [2, 2, 2, 1]
    accounts = {a.external_id: a for a in flatten(pages)}
    assert len(accounts) == len(flatten(pages)) == 7
    assert set(accounts) == {*ours.values(), "idaas-by-hand", "idaas-left"}
    first = persons[0]
    assert accounts[ours[first.employee_number]] == TargetAccount(
        external_id=ours[first.employee_number], key=first.employee_number, email=first.email,
        full_name=first.full_name, phone_number=first.phone_number, department_code="D0", active=True)
    assert accounts["idaas-by-hand"].key == ""
    assert accounts["idaas-left"].active is False


def test_local_listing_of_exactly_full_pages_ends_without_an_empty_page(db):
    backend = LocalWelinkBackend()
    for _ in range(4):
        backend.ensure_account(make_person(), {})

    assert [len(p) for p in read_all(backend, 2)] == [2, 2]


def test_local_mailbox_reports_no_department_like_exmail(db):
    backend = LocalMailboxBackend()
    backend.ensure_account(make_person(department_code="D001"), {})

    [account] = flatten(read_all(backend, 10))

    assert account.department_code is None


def test_local_lookup_returns_the_accounts_of_the_keys_only(db):
    backend = LocalWelinkBackend()
    wanted, other = make_person(), make_person()
    external_id = backend.ensure_account(wanted, {}).external_id
    backend.ensure_account(other, {})

    accounts = backend.lookup_accounts([wanted.employee_number, "E-UNKNOWN"])

    assert [(a.key, a.external_id) for a in accounts] == [(wanted.employee_number, external_id)]


# --- SCIM -------------------------------------------------------------------------------------------

def scim_total(scim) -> int:
    response = requests.get(f"{scim.url}/Users", params={"count": 0}, headers=scim.headers, timeout=5)
    return response.json()["totalResults"]


def test_scim_listing_returns_every_user_once_with_the_values(scim):
    backend = get_backend("idaas")
    persons = [make_person(full_name=f"李{n}", department_code=f"D{n}") for n in range(3)]
    persons.append(make_person(phone_number="+442079460958", department_code=""))
    ours = {p.employee_number: backend.ensure_account(p, {}).external_id for p in persons}
    stranger = scim.create_user(userName=f"byhand-{_run}", displayName="手工账号")
    left = scim.create_user(userName=f"left-{_run}", active=False, name={"formatted": "离职者"},
                            emails=[{"value": f"old-{_run}@example.com"},
                                    {"value": f"left-{_run}@example.com", "primary": True}],
                            phoneNumbers=[{"value": "+86-13900001111"}, {"value": "13900002222"}])

    pages = read_all(backend, 3)

    listed = flatten(pages)
    assert all(len(page) <= 3 for page in pages)
    assert len({a.external_id for a in listed}) == len(listed) == scim_total(scim)
    accounts = {a.external_id: a for a in listed}
    for person in persons:
        assert accounts[ours[person.employee_number]] == TargetAccount(
            external_id=ours[person.employee_number], key=person.employee_number, email=person.email,
            full_name=person.full_name, phone_number=person.phone_number,
            department_code=person.department_code, active=True)
    assert accounts[stranger["id"]] == TargetAccount(external_id=stranger["id"], key=f"byhand-{_run}",
                                                     full_name="手工账号", department_code="")
    assert accounts[left["id"]] == TargetAccount(
        external_id=left["id"], key=f"left-{_run}", email=f"left-{_run}@example.com", full_name="离职者",
        phone_number="13900001111", department_code="", active=False)


def test_scim_listing_follows_a_server_that_answers_fewer_users_than_asked(scim_small_pages):
    backend = get_backend("idaas")
    for _ in range(5):
        backend.ensure_account(make_person(), {})
    total = scim_total(scim_small_pages)
    calls_before = scim_small_pages.proxy.calls_to("/Users", "GET")

    pages = read_all(backend, 5)

    assert [len(p) for p in pages[:-1]] == [2] * (len(pages) - 1)
    assert len({a.external_id for a in flatten(pages)}) == len(flatten(pages)) == total
    assert scim_small_pages.proxy.calls_to("/Users", "GET") - calls_before == math.ceil(total / 2)


@pytest.mark.parametrize("status", [500, 503])
def test_scim_server_error_on_a_page_raises_listing_failed_and_the_cursor_reads_it_again(scim, status):
    backend = get_backend("idaas")
    for _ in range(3):
        backend.ensure_account(make_person(), {})
    first = backend.list_accounts(cursor=None, page_size=2)
    scim.proxy.faults.fail(1, status=status, method="GET", path="/Users", retry_after=7)

    with pytest.raises(ListingFailed) as failed:
        backend.list_accounts(cursor=first.next_cursor, page_size=2)

    assert failed.value.code == f"http_{status}"
    assert failed.value.retry_after == 7
    again = backend.list_accounts(cursor=first.next_cursor, page_size=2)
    assert {a.external_id for a in again.accounts}.isdisjoint(a.external_id for a in first.accounts)


def test_scim_refused_token_raises_listing_failed_with_the_servers_detail(scim, settings):
    settings.IDAAS_SCIM_TOKEN = "not-the-token"

    with pytest.raises(ListingFailed) as failed:
        get_backend("idaas").list_accounts(cursor=None, page_size=2)

    assert failed.value.code == "http_401"
    assert "Authorization failure" in failed.value.message


def test_scim_rate_limit_raises_listing_failed_with_retry_after(scim):
    scim.proxy.faults.fail(1, status=429, method="GET", path="/Users", retry_after=2)

    with pytest.raises(ListingFailed) as failed:
        get_backend("idaas").list_accounts(cursor=None, page_size=2)

    assert (failed.value.code, failed.value.retry_after) == ("http_429", 2)


# --- Exmail -----------------------------------------------------------------------------------------

@pytest.fixture
def exmail_departments(exmail_sim, settings):
    """Mailboxes go to department 2; 3 lies below it, 4 beside it (outside what the service manages)."""
    exmail_sim.department_parents.update({2: 1, 3: 2, 4: 1})
    exmail_sim.departments |= {2, 3, 4}
    settings.EXMAIL_DEPARTMENT_ID = "2"
    return exmail_sim


def test_exmail_listing_fetches_the_department_once_and_pages_over_it(exmail_departments):
    sim = exmail_departments
    backend = get_backend("email")
    persons = [make_person(full_name=f"王{n}", phone_number=f"1390000{n:04d}") for n in range(3)]
    for person in persons:
        assert backend.ensure_account(person, {}).succeeded
    sim.add_user(f"byhand-{_run}@example.com", name="手工", mobile="13911110000", department=(3,))
    left = sim.add_user(f"left-{_run}@example.com", name="离职", extid="E-LEFT", department=(2,))
    left["enable"] = 0
    sim.add_user(f"twice-{_run}@example.com", name="两部门", extid="E-TWICE", department=(2, 3))
    sim.add_user(f"outside-{_run}@example.com", name="别处", extid="E-OUT", department=(4,))

    pages = read_all(backend, 2)

    assert [len(p) for p in pages] == [2, 2, 2]
    assert sim.calls_to(LIST) == 1
    accounts = {a.external_id: a for a in flatten(pages)}
    assert len(accounts) == 6
    assert f"outside-{_run}@example.com" not in accounts
    person = persons[1]
    assert accounts[person.email] == TargetAccount(
        external_id=person.email, key=person.employee_number, email=person.email, full_name="王1",
        phone_number=person.phone_number, department_code=None, active=True)
    assert accounts[f"byhand-{_run}@example.com"].key == ""
    assert accounts[f"left-{_run}@example.com"].active is False
    assert accounts[f"twice-{_run}@example.com"].key == "E-TWICE"
    assert backend._listings == {}   # the copy goes with the listing's last page


def test_exmail_listings_side_by_side_keep_their_own_copies(exmail_sim):
    for n in range(3):
        exmail_sim.add_user(f"m{n}-{_run}@example.com", name=f"M{n}", extid=f"E{n}")
    backend = get_backend("email")

    a1 = backend.list_accounts(cursor=None, page_size=2)
    b1 = backend.list_accounts(cursor=None, page_size=2)
    a2 = backend.list_accounts(cursor=a1.next_cursor, page_size=2)
    b2 = backend.list_accounts(cursor=b1.next_cursor, page_size=2)

    assert a1.next_cursor != b1.next_cursor
    assert a1.accounts + a2.accounts == b1.accounts + b2.accounts
    assert len(a1.accounts + a2.accounts) == 3
    assert (a2.next_cursor, b2.next_cursor) == (None, None)
    assert exmail_sim.calls_to(LIST) == 2


def test_exmail_cursor_that_outlived_its_copy_fetches_again_and_goes_on(exmail_sim):
    for n in range(4):
        exmail_sim.add_user(f"m{n}-{_run}@example.com", name=f"M{n}", extid=f"E{n}")
    first = get_backend("email").list_accounts(cursor=None, page_size=2)
    reset_backends()   # a restart: the copy is gone

    rest = get_backend("email").list_accounts(cursor=first.next_cursor, page_size=2)

    assert [a.key for a in first.accounts + rest.accounts] == ["E0", "E1", "E2", "E3"]
    assert rest.next_cursor is None
    assert exmail_sim.calls_to(LIST) == 2


def test_exmail_keeps_a_bounded_number_of_abandoned_listings(exmail_sim):
    exmail_sim.add_user(f"m-{_run}@example.com", name="M", extid="E1")
    exmail_sim.add_user(f"n-{_run}@example.com", name="N", extid="E2")
    backend = get_backend("email")

    for _ in range(10):
        backend.list_accounts(cursor=None, page_size=1)

    assert len(backend._listings) <= 4


@pytest.mark.parametrize(("fault", "code", "retry_after"), [
    ({"status": 502}, "http_502", None),
    ({"status": 200, "body": {"errcode": -1, "errmsg": "system busy"}}, "-1", None),
    ({"status": 200, "body": {"errcode": 45009, "errmsg": "api freq out of limit"}}, "45009", 1.0),
    ({"status": 200, "body": {"errcode": 42001, "errmsg": "access_token expired"}, "count": 2}, "42001", None),
])
def test_exmail_failed_listing_raises_listing_failed_with_the_code(exmail_sim, fault, code, retry_after):
    fault = dict(fault)
    exmail_sim.faults.fail(fault.pop("count", 1), path=LIST, **fault)

    with pytest.raises(ListingFailed) as failed:
        get_backend("email").list_accounts(cursor=None, page_size=2)

    assert (failed.value.code, failed.value.retry_after) == (code, retry_after)


def test_exmail_expired_token_is_refreshed_once_for_a_listing(exmail_sim):
    exmail_sim.add_user(f"m-{_run}@example.com", name="M", extid="E1")
    backend = get_backend("email")
    backend.list_accounts(cursor=None, page_size=5)
    exmail_sim.expire_tokens()

    page = backend.list_accounts(cursor=None, page_size=5)

    assert [a.key for a in page.accounts] == ["E1"]
    assert backend.tokens.fetches == 2


def test_exmail_unknown_department_is_a_listing_failure_with_the_errcode(exmail_sim, settings):
    settings.EXMAIL_DEPARTMENT_ID = "99"

    with pytest.raises(ListingFailed) as failed:
        get_backend("email").list_accounts(cursor=None, page_size=2)

    assert failed.value.code == "60003"


# --- WeLink -----------------------------------------------------------------------------------------

def test_welink_cannot_list_and_looks_each_key_up_once(welink_sim):
    backend = get_backend("welink")
    persons = [make_person(full_name=f"赵{n}", department_code=f"D{n}") for n in range(2)]
    for person in persons:
        assert drive(backend, person)[-1].succeeded
    welink_sim.add_user("E-INTL", name="Smith", mobile="+44-2079460958", email="smith@example.com",
                        department="D9")
    welink_sim.add_user("E-CLOSED", name="离职", mobile="+86-13900001111", status="1", valid="0")
    welink_sim.add_user("E-STRANGER", name="陌生", mobile="+86-13900002222")
    calls_before = welink_sim.calls_to(USERS_PATH)
    keys = [p.employee_number for p in persons] + ["E-INTL", "E-CLOSED", "E-UNKNOWN", "E-INTL", ""]

    accounts = {a.key: a for a in backend.lookup_accounts(keys)}

    assert backend.can_list is False
    assert welink_sim.calls_to(USERS_PATH) - calls_before == 5
    assert set(accounts) == {*(p.employee_number for p in persons), "E-INTL", "E-CLOSED"}
    person = persons[0]
    assert accounts[person.employee_number] == TargetAccount(
        external_id=welink_sim.users[person.employee_number]["userId"], key=person.employee_number,
        email=person.email, full_name="赵0", phone_number=person.phone_number, department_code="D0",
        active=True)
    assert accounts["E-INTL"].phone_number == "+442079460958"
    assert accounts["E-INTL"].department_code == "D9"
    assert accounts["E-CLOSED"].active is False
    assert accounts["E-CLOSED"].phone_number == "13900001111"


def test_welink_closed_but_valid_and_open_but_invalid_accounts_are_not_active(welink_sim):
    welink_sim.add_user("E-SAVED", name="甲", mobile="+86-13900003333", status="1", valid="1")
    welink_sim.add_user("E-INVALID", name="乙", mobile="+86-13900004444", status="3", valid="0")

    accounts = get_backend("welink").lookup_accounts(["E-SAVED", "E-INVALID"])

    assert [(a.key, a.active) for a in accounts] == [("E-SAVED", False), ("E-INVALID", False)]


@pytest.mark.parametrize(("fault", "code", "retry_after"), [
    ({"status": 503}, "http_503", None),
    ({"status": 200, "body": {"code": "48503", "message": "Too many requests"}}, "48503", 1.0),
    ({"status": 200, "body": {"code": "47103", "message": "Authentication failed"}, "count": 2}, "47103", None),
    ({"status": 200, "body": {"code": "47000", "message": "no permission"}}, "47000", None),
])
def test_welink_failed_lookup_raises_listing_failed_with_the_code(welink_sim, fault, code, retry_after):
    welink_sim.add_user("E-1", name="甲", mobile="+86-13900003333")
    fault = dict(fault)
    welink_sim.faults.fail(fault.pop("count", 1), path=USERS_PATH, **fault)

    with pytest.raises(ListingFailed) as failed:
        get_backend("welink").lookup_accounts(["E-1"])

    assert (failed.value.code, failed.value.retry_after) == (code, retry_after)


def test_welink_refused_token_is_refreshed_once_for_a_lookup(welink_sim):
    welink_sim.add_user("E-1", name="甲", mobile="+86-13900003333")
    welink_sim.faults.fail(1, status=200, path=USERS_PATH, body={"code": "47103", "message": "Authentication failed"})

    [account] = get_backend("welink").lookup_accounts(["E-1"])

    assert account.key == "E-1"
