"""The stages' batches: how items are picked and locked, tasks built from them, addresses allocated."""

import threading

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationTask,
    HrPerson,
)
from syncservice.models import AccountCreationRequestItem as Item
from syncservice.services.batches import lock_items_by_request_priority
from syncservice.services.email_address import allocate_email_addresses
from syncservice.services.sync import claim_pending_requests

from .fixtures import make_users, note_example, requires_postgres, stage

# Transactional: the concurrency test locks rows from a second connection, which must see committed data.
pytestmark = pytest.mark.django_db(transaction=True)


def submit(caller, key: str, users: list[dict], **overrides) -> AccountCreationRequest:
    response = caller.submit(note_example(businessKey=key, userList=users, **overrides))
    assert response.status_code == 202, response.content
    return AccountCreationRequest.objects.get(request_id=response.json()["requestId"])


@pytest.fixture
def three_requests(make_caller):
    """Processing requests of priority -5, 5 and 0 (created in that order), of 5, 3 and 4 pending items."""
    low = make_caller("LOW_SYSTEM", priority=-5)
    high = make_caller("HIGH_SYSTEM", priority=5)
    mid = make_caller("MID_SYSTEM", priority=0)
    submit(low, "L", make_users(5, "L"), originSystem="LOW_SYSTEM")
    submit(high, "H", make_users(3, "H"), originSystem="HIGH_SYSTEM")
    submit(mid, "M", make_users(4, "M"), originSystem="MID_SYSTEM")
    assert claim_pending_requests() == 3


def numbers(items) -> list[str]:
    return [item.employee_number for item in items]


def test_a_batch_takes_items_across_requests_in_priority_order_and_stops_at_its_size(three_requests):
    with transaction.atomic():
        batch = lock_items_by_request_priority(Item.Status.PENDING, 6, fields=("employee_number",))
    assert numbers(batch) == ["H000000", "H000001", "H000002", "M000000", "M000001", "M000002"]
    assert all(isinstance(item, Item) for item in batch)

    with transaction.atomic():
        everything = lock_items_by_request_priority(Item.Status.PENDING, 100, fields=("employee_number",))
    assert len(everything) == 12 and numbers(everything)[-5:] == [f"L00000{i}" for i in range(5)]
    # Only pending items of processing requests count.
    Item.objects.filter(employee_number__startswith="H").update(status=Item.Status.SYNCED)
    with transaction.atomic():
        assert numbers(lock_items_by_request_priority(Item.Status.PENDING, 2, fields=("employee_number",))) == [
            "M000000", "M000001"]
        assert numbers(lock_items_by_request_priority(Item.Status.SYNCED, 10, fields=("employee_number",))) == [
            "H000000", "H000001", "H000002"]


@requires_postgres
def test_a_batch_is_one_statement_however_many_requests_it_spans(three_requests):
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        batch = lock_items_by_request_priority(Item.Status.PENDING, 12, fields=("employee_number",))
    assert len(batch) == 12
    assert len(queries) == 1, [q["sql"] for q in queries]


@requires_postgres
def test_two_copies_selecting_at_once_never_get_the_same_item(three_requests):
    first_locked, release = threading.Event(), threading.Event()
    taken: dict[str, list[str]] = {}

    def first_copy():
        try:
            with transaction.atomic():
                taken["first"] = numbers(lock_items_by_request_priority(Item.Status.PENDING, 5,
                                                                        fields=("employee_number",)))
                first_locked.set()
                release.wait(timeout=30)
        finally:
            first_locked.set()
            connection.close()

    thread = threading.Thread(target=first_copy)
    thread.start()
    try:
        assert first_locked.wait(timeout=30)
        with transaction.atomic():
            taken["second"] = numbers(lock_items_by_request_priority(Item.Status.PENDING, 5,
                                                                     fields=("employee_number",)))
    finally:
        release.set()
        thread.join(timeout=30)
    assert taken["first"] == ["H000000", "H000001", "H000002", "M000000", "M000001"]
    # The second copy skips what the first holds and goes on in priority order.
    assert taken["second"] == ["M000002", "M000003", "L000000", "L000001", "L000002"]


@pytest.mark.usefixtures("fast_retries")
def test_tasks_carry_the_first_wanting_item_and_skip_created_accounts_and_open_tasks(make_caller, settings):
    settings.TASK_MAX_ATTEMPTS = 7
    low = make_caller("LOW_SYSTEM", priority=0)
    high = make_caller("HIGH_SYSTEM", priority=5)
    shared = make_users(2, "P")
    first = submit(low, "A", shared, originSystem="LOW_SYSTEM", systemList=["idaas", "welink", "email"])
    second = submit(high, "B", shared[:1], originSystem="HIGH_SYSTEM", systemList=["idaas", "email"])
    stage("sync_hr_persons")
    person, other = HrPerson.objects.get(employee_number="P000000"), HrPerson.objects.get(employee_number="P000001")
    Account.objects.filter(person=person, system="welink").update(status=Account.Status.CREATED)
    open_task = AccountCreationTask.objects.create(person=person, system="email", status="running")

    assert "3 item(s) → 4 task(s)" in stage("create_account_tasks")

    tasks = {(t.person_id, t.system): t for t in AccountCreationTask.objects.exclude(pk=open_task.pk)}
    assert set(tasks) == {(person.pk, "idaas"), (other.pk, "idaas"), (other.pk, "welink"), (other.pk, "email")}
    # The person's idaas task comes from the higher-priority request, whose item is the later one.
    high_item, low_item = second.items.get(), first.items.get(employee_number="P000000")
    assert high_item.pk > low_item.pk
    assert tasks[(person.pk, "idaas")].request_item_id == high_item.pk
    assert tasks[(person.pk, "idaas")].priority == 5
    assert tasks[(other.pk, "email")].request_item_id == first.items.get(employee_number="P000001").pk
    assert tasks[(other.pk, "email")].priority == 0
    for task in tasks.values():
        # The person's idaas task waits for the open mailbox task; the other's for the mailbox opened with it.
        status = "pending" if task.system == "email" else "blocked"
        assert (task.status, task.attempts, task.max_attempts) == (status, 0, 7)
        assert (task.backend_state, task.locked_by, task.lease_token, task.last_error_code, task.last_error) == (
            {}, "", "", "", "")
        assert task.lease_expires_at is None and task.finished_at is None
        assert task.next_attempt_at <= timezone.now() and task.created_at is not None
    statuses = dict(Account.objects.filter(person=person).values_list("system", "status"))
    assert statuses == {"idaas": "creating", "welink": "created", "email": "not_created"}
    assert set(Account.objects.filter(person=other).values_list("status", flat=True)) == {"creating"}
    assert set(Item.objects.values_list("status", flat=True)) == {"task_created"}


@pytest.mark.usefixtures("fast_retries")
def test_a_second_run_opens_no_second_task(hr_caller):
    submit(hr_caller, "A", make_users(3, "A"))
    stage("sync_hr_persons")
    stage("create_account_tasks")
    submit(hr_caller, "B", make_users(3, "A"))
    stage("sync_hr_persons")
    assert "3 item(s) → 0 task(s)" in stage("create_account_tasks")
    assert AccountCreationTask.objects.count() == 9


def _persons(names: list[str], prefix: str) -> list[HrPerson]:
    return [HrPerson(person_id=0, employee_number=f"{prefix}{i}", full_name=name, created_by="hr_sync",
                     last_updated_by="hr_sync") for i, name in enumerate(names)]


def _store(emails: list[str]) -> None:
    HrPerson.objects.bulk_create([
        HrPerson(person_id=900_000 + i, employee_number=f"X{i}", full_name="x", email=email,
                 created_by="hr_sync", last_updated_by="hr_sync")
        for i, email in enumerate(emails)])


def test_allocation_costs_the_same_queries_with_0_or_50_namesakes_in_the_table():
    def allocate(prefix: str) -> tuple[list[str], int]:
        persons = _persons(["张伟", "张伟", "李娜", "张伟"], prefix)
        with CaptureQueriesContext(connection) as queries:
            allocate_email_addresses(persons, domain="example.com")
        return [p.email for p in persons], len(queries)

    emails, none_yet = allocate("A")
    assert emails == ["zhangwei@example.com", "zhangwei2@example.com", "lina@example.com", "zhangwei3@example.com"]
    _store(["zhangwei@example.com"] + [f"zhangwei{n}@example.com" for n in range(2, 51)])
    emails, fifty = allocate("B")
    assert emails == ["zhangwei51@example.com", "zhangwei52@example.com", "lina@example.com",
                      "zhangwei53@example.com"]
    assert fifty == none_yet == 1


def test_allocation_matches_whole_bases_only_and_fills_the_lowest_free_suffix():
    # "lin@" and "li1@"/"li02@" are not li's; "li3@" is; "useremoji12@" is both useremoji1's 12th and
    # useremoji12's first.
    _store(["lin@example.com", "li1@example.com", "li02@example.com", "li3@example.com",
            "useremoji12@example.com", "LI2@example.com"])
    persons = _persons(["李", "李", "李", "🙂", "🙂"], "N")
    persons[3].employee_number, persons[4].employee_number = "emoji1", "emoji12"
    allocate_email_addresses(persons, domain="example.com", avoid={"li2@example.com"})
    assert [p.email for p in persons] == ["li@example.com", "li4@example.com", "li5@example.com",
                                          "useremoji1@example.com", "useremoji122@example.com"]


def test_allocation_keeps_addresses_of_other_domains_apart():
    _store(["wangfang@example.org", "wangfang@mail.example.com"])
    [person] = _persons(["王芳"], "D")
    allocate_email_addresses([person], domain="example.com")
    assert person.email == "wangfang@example.com"


def test_allocation_counts_dense_suffixes_and_reads_addresses_only_for_bases_with_gaps():
    _store(["zhangwei@example.com", "zhangwei2@example.com", "zhangwei3@example.com",  # 1…3: dense
            "lina@example.com", "lina2@example.com", "lina4@example.com"])  # a gap at 3
    persons = _persons(["张伟", "李娜", "李娜", "张伟"], "G")
    with CaptureQueriesContext(connection) as queries:
        allocate_email_addresses(persons, domain="example.com")
    assert [p.email for p in persons] == ["zhangwei4@example.com", "lina3@example.com", "lina5@example.com",
                                          "zhangwei5@example.com"]
    if connection.vendor == "postgresql":
        assert len(queries) == 2  # the counts, then lina's addresses
