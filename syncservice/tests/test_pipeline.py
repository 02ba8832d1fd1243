"""The three stages against the local backends: a request goes from pending to a final status."""

import json

import pytest
from django.core.management import CommandError
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    HrPerson,
    HrSyncState,
    LocalTargetAccount,
    TaskAttempt,
)
from syncservice.services.provisioning import ProcessResult, call_backend, claim_due_tasks, record_results
from syncservice.services.rollup import rollup_items_for_persons, rollup_requests
from taskmanagement.models import TaskRun

from .fixtures import STAGES, make_users, note_example, requires_postgres, run_pipeline, stage

# Backends run in worker threads with their own connections: their writes commit, so each test must
# start from empty tables rather than from a rolled-back transaction.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]

def submit(caller, **overrides) -> AccountCreationRequest:
    response = caller.submit(note_example(**overrides))
    assert response.status_code == 202, response.content
    return AccountCreationRequest.objects.get(request_id=response.json()["requestId"])


def status_of(caller, request: AccountCreationRequest) -> dict:
    return caller.get(f"/account-creation/requests/{request.request_id}/").json()


def test_note_example_reaches_completed_with_accounts_in_every_system(hr_caller):
    request = submit(hr_caller)

    lines = run_pipeline()

    assert lines[0].startswith("sync_hr_persons: claimed 1 request(s), synced 2 item(s) (2 new person(s)")
    assert lines[1].startswith("create_account_tasks: 2 item(s) → 6 task(s)")
    assert lines[2].startswith("process_account_creation_tasks: processed 6 task(s): 6 succeeded")
    document = status_of(hr_caller, request)
    assert document["status"] == "completed"
    assert document["status_display"] == "已完成"
    assert document["processedUsers"] == 2 and document["progress"] == "100.0%"
    assert document["completedAt"] is not None
    first = document["items"][0]
    assert first["status"] == "completed"
    assert first["hrPersonInfo"] == {"employeeNumber": "TEST001", "fullName": "张三", "email": "zhangsan@example.com"}
    assert {a["status"] for a in first["accounts"]} == {"created"}
    assert LocalTargetAccount.objects.count() == 6
    for account in Account.objects.filter(person__employee_number="TEST001"):
        assert account.external_id == LocalTargetAccount.objects.get(
            system=account.system, employee_number="TEST001").external_id


def test_sync_maps_item_fields_onto_the_person_as_the_note_does(hr_caller, settings):
    request = submit(hr_caller)
    stage("sync_hr_persons")

    person = HrPerson.objects.get(employee_number="TEST001")
    item = request.items.get(employee_number="TEST001")
    assert item.status == "synced" and item.hr_person == person
    assert person.person_id == settings.API_PERSON_ID_OFFSET + item.pk
    assert person.full_name == "张三"
    assert person.telephone_number1 == "13800138001"
    assert person.person_type == "供应商"
    assert person.employee_status == "1"
    assert person.tenant_id == "BATCH_20250121_001"
    assert person.created_by == person.last_updated_by == "account_creation_api"
    assert person.person_dept == [{"department_code": "D001", "partner_company": "测试公司", "country": "中国"}]
    assert set(person.accounts.values_list("system", "status")) == {
        ("idaas", "not_created"), ("welink", "not_created"), ("email", "not_created")}
    assert AccountCreationRequest.objects.get(pk=request.pk).status == "processing"


def test_namesakes_get_numbered_addresses(hr_caller):
    users = [{"employeeNumber": f"N{i}", "employeeName": "张伟", "departmentCode": "D", "phoneNumber": "13900000000"}
             for i in range(3)]
    submit(hr_caller, businessKey="A", userList=users[:2])
    stage("sync_hr_persons")
    submit(hr_caller, businessKey="B", userList=users[2:])
    stage("sync_hr_persons")
    assert sorted(HrPerson.objects.values_list("email", flat=True)) == [
        "zhangwei2@example.com", "zhangwei3@example.com", "zhangwei@example.com"]


def test_only_the_requested_systems_get_tasks(hr_caller):
    request = submit(hr_caller, systemList=["email"])
    run_pipeline()
    assert set(AccountCreationTask.objects.values_list("system", flat=True)) == {"email"}
    assert AccountCreationRequest.objects.get(pk=request.pk).status == "completed"
    assert Account.objects.filter(system="idaas", status="not_created").count() == 2


def test_person_in_two_requests_gets_one_task_per_system_and_both_items_complete(make_caller):
    hr = make_caller("HR_SYSTEM")
    supplier = make_caller("SUPPLIER_SYSTEM")
    first = submit(hr)
    second = submit(supplier, originSystem="SUPPLIER_SYSTEM")

    run_pipeline()

    assert AccountCreationTask.objects.count() == 6
    assert HrPerson.objects.count() == 2
    for request in (first, second):
        assert status_of(hr if request == first else supplier, request)["status"] == "completed"


def test_existing_accounts_get_no_new_task(hr_caller):
    submit(hr_caller, businessKey="FIRST", systemList=["idaas"])
    run_pipeline()
    later = submit(hr_caller, businessKey="LATER", systemList=["idaas", "email"])

    run_pipeline()

    assert AccountCreationTask.objects.filter(system="idaas").count() == 2  # from the first request only
    assert AccountCreationTask.objects.filter(system="email").count() == 2
    assert AccountCreationRequest.objects.get(pk=later.pk).status == "completed"


def test_request_whose_accounts_all_exist_completes_in_the_task_stage(hr_caller):
    submit(hr_caller, businessKey="FIRST")
    run_pipeline()
    again = submit(hr_caller, businessKey="AGAIN")

    stage("sync_hr_persons")
    line = stage("create_account_tasks")

    assert "2 item(s) → 0 task(s) (2 item(s) already done)" in line
    assert AccountCreationRequest.objects.get(pk=again.pk).status == "completed"


def test_permanent_failures_end_partial_failed_with_reasons(hr_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"002$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]
    request = submit(hr_caller)

    run_pipeline()

    document = status_of(hr_caller, request)
    assert document["status"] == "partial_failed"
    assert document["status_display"] == "部分失败"
    assert document["processedUsers"] == 2
    assert document["errorSummary"] == {
        "failedUsers": 1,
        "reasons": [{"system": "welink", "operation": "create",
                     "reason": "[LOCAL-422] welink refused the account (injected)", "count": 1,
                     "employeeNumbers": ["TEST002"]}],
    }
    failed = next(i for i in document["items"] if i["employeeNumber"] == "TEST002")
    assert failed["status"] == "failed"
    assert failed["errorMessage"] == "WeLink: [LOCAL-422] welink refused the account (injected)"
    assert [a["status"] for a in failed["accounts"]] == ["created", "failed", "created"]
    task = AccountCreationTask.objects.get(person__employee_number="TEST002", system="welink")
    assert task.status == "failed" and task.attempts == 1  # permanent: no retry
    assert list(task.attempt_log.values_list("outcome", "code")) == [("permanent", "LOCAL-422")]


def test_all_users_failing_ends_failed(hr_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST"
    request = submit(hr_caller)
    run_pipeline()
    document = status_of(hr_caller, request)
    assert document["status"] == "failed"
    assert document["errorSummary"]["failedUsers"] == 2
    assert {r["system"] for r in document["errorSummary"]["reasons"]} == {"idaas", "welink", "email"}


def test_transient_failures_are_retried_to_success_and_every_attempt_is_logged(hr_caller, settings):
    settings.LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT = 2
    request = submit(hr_caller)

    run_pipeline()

    assert AccountCreationRequest.objects.get(pk=request.pk).status == "completed"
    for task in AccountCreationTask.objects.all():
        assert task.status == "succeeded" and task.attempts == 3
        assert list(task.attempt_log.order_by("attempt_number").values_list("attempt_number", "outcome")) == [
            (1, "transient"), (2, "transient"), (3, "created")]


def test_transient_failures_past_max_attempts_fail_with_the_last_reason(hr_caller, settings):
    settings.LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT = 10
    settings.TASK_MAX_ATTEMPTS = 3
    request = submit(hr_caller, systemList=["idaas"])

    run_pipeline()

    task = AccountCreationTask.objects.filter(system="idaas").first()
    assert task.status == "failed" and task.attempts == 3
    assert task.last_error == "gave up after 3 attempts: idaas unavailable (injected)"
    assert AccountCreationRequest.objects.get(pk=request.pk).status == "failed"


def test_backoff_delays_retries_when_not_due(hr_caller, settings):
    settings.TASK_RETRY_BASE_SECONDS = 60
    settings.LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT = 1
    submit(hr_caller, systemList=["idaas"])
    run_pipeline()
    tasks = list(AccountCreationTask.objects.all())
    assert all(t.status == "pending" and t.attempts == 1 for t in tasks)
    assert all(29 <= (t.next_attempt_at - timezone.now()).total_seconds() <= 61 for t in tasks)
    assert "0 task(s)" in stage("process_account_creation_tasks", "--dry-run")


def test_async_welink_waits_then_completes(hr_caller, settings):
    settings.LOCAL_WELINK_ASYNC = True
    request = submit(hr_caller, systemList=["welink"])
    stage("sync_hr_persons")
    stage("create_account_tasks")
    line = stage("process_account_creation_tasks")
    # The poll is due at once here (TASK_ASYNC_POLL_SECONDS = 0), so one run submits and then polls.
    assert "2 succeeded" in line and "2 waiting" in line
    tasks = AccountCreationTask.objects.all()
    assert all(t.status == "succeeded" and t.attempts == 1 for t in tasks)
    outcomes = list(TaskAttempt.objects.filter(task=tasks[0]).order_by("id").values_list("outcome", flat=True))
    assert outcomes == ["in_progress", "created"]
    assert AccountCreationRequest.objects.get(pk=request.pk).status == "completed"


def test_async_target_that_never_finishes_times_out(hr_caller, settings):
    settings.LOCAL_WELINK_ASYNC = True
    settings.LOCAL_WELINK_ASYNC_POLLS = 1000
    settings.TASK_ASYNC_TIMEOUT_SECONDS = 0
    submit(hr_caller, systemList=["welink"])
    run_pipeline()
    task = AccountCreationTask.objects.first()
    assert task.status == "failed" and task.last_error_code == "async_timeout"


def test_dry_run_reports_and_changes_nothing(hr_caller):
    submit(hr_caller)
    assert stage("sync_hr_persons", "--dry-run") == (
        "[dry run] sync_hr_persons: would claim 1 pending request(s) and sync 2 item(s); HR sync not run")
    assert AccountCreationRequest.objects.get().status == "pending"
    assert not HrPerson.objects.exists()
    stage("sync_hr_persons")
    assert "would create tasks for 2 synced item(s)" in stage("create_account_tasks", "--dry-run")
    assert not AccountCreationTask.objects.exists()
    stage("create_account_tasks")
    # IDaaS and WeLink wait for the mailboxes (blocked): not due yet.
    assert stage("process_account_creation_tasks", "--dry-run") == (
        "[dry run] process_account_creation_tasks: 2 task(s) due (email 2, idaas 0, welink 0)")
    assert set(AccountCreationTask.objects.values_list("system", "status")) == {
        ("email", "pending"), ("idaas", "blocked"), ("welink", "blocked")}
    assert TaskRun.objects.filter(dry_run=True).count() == 3


def test_limit_bounds_the_work_of_each_stage(hr_caller):
    submit(hr_caller, userList=make_users(5))
    assert "synced 2 item(s)" in stage("sync_hr_persons", "--limit", "2")
    assert AccountCreationRequestItem.objects.filter(status="synced").count() == 2
    stage("sync_hr_persons")
    assert "3 item(s) →" in stage("create_account_tasks", "--limit", "3")
    stage("create_account_tasks")
    assert "processed 4 task(s)" in stage("process_account_creation_tasks", "--limit", "4")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_limit_is_a_clear_error(value):
    with pytest.raises(CommandError, match="--limit must be a positive integer"):
        stage("sync_hr_persons", "--limit", value)


def test_a_failing_stage_exits_non_zero_and_records_the_failure(hr_caller, settings):
    settings.IDAAS_BACKEND = "syncservice.backends.does_not_exist.Backend"
    submit(hr_caller, systemList=["idaas"])
    stage("sync_hr_persons")
    stage("create_account_tasks")
    with pytest.raises(CommandError, match="process_account_creation_tasks failed: .*IDAAS_BACKEND="):
        stage("process_account_creation_tasks")
    # Nothing claimed, no attempt spent.
    assert set(AccountCreationTask.objects.values_list("status", "attempts")) == {("pending", 0)}
    run = TaskRun.objects.filter(stage="process_account_creation_tasks").latest("id")
    assert run.outcome == "failed" and "IDAAS_BACKEND" in run.summary

    settings.HR_BACKEND = "nonsense"
    with pytest.raises(CommandError, match="sync_hr_persons failed: .*HR_BACKEND='nonsense'"):
        stage("sync_hr_persons")


def test_every_command_run_is_recorded(hr_caller):
    submit(hr_caller)
    run_pipeline()
    runs = list(TaskRun.objects.order_by("id"))
    assert [r.stage for r in runs] == STAGES
    assert all(r.trigger == "command" and r.outcome == "succeeded" and r.finished_at for r in runs)
    assert runs[2].counts["succeeded"] == 6


# --- Claims, leases and fencing --------------------------------------------------------------------

def prepare_tasks(caller, **overrides):
    submit(caller, **overrides)
    stage("sync_hr_persons")
    stage("create_account_tasks")


def test_a_task_whose_lease_expired_is_claimed_again_and_the_late_result_is_discarded(hr_caller):
    prepare_tasks(hr_caller, systemList=["idaas"])
    first_token, first_claim = claim_due_tasks(system="idaas", limit=10, worker="dead-worker")
    assert len(first_claim) == 2
    assert claim_due_tasks(system="idaas", limit=10, worker="other")[1] == []  # held under lease
    AccountCreationTask.objects.update(lease_expires_at=timezone.now() - timezone.timedelta(seconds=1))

    second_token, second_claim = claim_due_tasks(system="idaas", limit=10, worker="new-worker")
    assert len(second_claim) == 2 and all(c.job.attempts == 2 for c in second_claim)
    totals = ProcessResult()
    record_results([call_backend(t) for t in second_claim], worker="new-worker", totals=totals)
    assert totals.succeeded == 2
    # The first worker wakes up late: its results must not overwrite the newer claim's.
    late = ProcessResult()
    record_results([call_backend(t) for t in first_claim], worker="dead-worker", totals=late)
    assert late.fenced_off == 2 and late.succeeded == 0
    assert TaskAttempt.objects.filter(worker="dead-worker").count() == 0
    assert LocalTargetAccount.objects.count() == 2


def test_claims_follow_priority(make_caller):
    low = make_caller("LOW_SYSTEM", priority=-5)
    high = make_caller("HIGH_SYSTEM", priority=5)
    submit(low, originSystem="LOW_SYSTEM", systemList=["idaas"], userList=make_users(5, "L"))
    submit(high, originSystem="HIGH_SYSTEM", systemList=["idaas"], userList=make_users(2, "H"))
    stage("sync_hr_persons")
    stage("create_account_tasks")
    _, claimed = claim_due_tasks(system="idaas", limit=2, worker="w")
    assert {c.job.person.employee_number[0] for c in claimed} == {"H"}


@requires_postgres
def test_sync_and_task_stage_queries_do_not_grow_with_the_batch(make_caller, settings):
    settings.STAGE_BATCH_SIZE = 1000
    hr = make_caller("HR_SYSTEM")

    def queries_for(count: int, key: str) -> list[int]:
        submit(hr, businessKey=key, userList=make_users(count, key))
        used = []
        for name in STAGES[:2]:
            with CaptureQueriesContext(connection) as ctx:
                stage(name)
            used.append(len(ctx))
        return used

    small = queries_for(5, "S")  # also creates the HR sync state row
    large = queries_for(300, "L")
    assert all(big <= little for big, little in zip(large, small)), (small, large)


@requires_postgres
def test_claim_and_record_queries_do_not_grow_with_the_batch(make_caller, settings):
    hr = make_caller("HR_SYSTEM")

    def queries_for(count: int, key: str) -> tuple[int, int]:
        prepare_tasks(hr, businessKey=key, systemList=["idaas"], userList=make_users(count, key))
        with CaptureQueriesContext(connection) as claim_ctx:
            token, tasks = claim_due_tasks(system="idaas", limit=1000, worker="w")
        assert len(tasks) == count
        results = [call_backend(task) for task in tasks]
        with CaptureQueriesContext(connection) as record_ctx:
            record_results(results, worker="w", totals=ProcessResult())
        return len(claim_ctx), len(record_ctx)

    assert queries_for(5, "S") == queries_for(300, "L")
    assert AccountCreationRequest.objects.filter(status="completed").count() == 2


# --- The incremental HR sync --------------------------------------------------------------------

def hr_file(tmp_path, persons) -> str:
    path = tmp_path / "hr.json"
    path.write_text(json.dumps(persons, ensure_ascii=False))
    return str(path)


def hr_person(person_id: int, number: str, name: str, updated: str, **extra) -> dict:
    return {"person_id": person_id, "employee_number": number, "full_name": name, "last_update_date": updated,
            "telephone_number1": "13700000000", "person_type": "员工", "employee_status": "1",
            "person_dept": [{"department_code": "HR1", "partner_company": "", "country": "中国"}], **extra}


def test_hr_sync_creates_persons_and_tasks_for_default_systems(settings, tmp_path):
    settings.LOCAL_HR_PERSONS_FILE = hr_file(tmp_path, [
        hr_person(1, "H001", "欧阳娜娜", "2026-01-01T00:00:00Z"),
        hr_person(2, "H002", "曾小贤", "2026-01-02T00:00:00Z"),
        {"person_id": "x", "employee_number": "", "full_name": ""},  # invalid: skipped, not fatal
    ])
    settings.HR_DEFAULT_SYSTEMS = ["idaas", "email"]

    line = stage("sync_hr_persons")
    assert "HR sync: 2 person(s), 1 invalid record(s) skipped" in line
    assert sorted(HrPerson.objects.values_list("email", flat=True)) == [
        "ouyangnana@example.com", "zengxiaoxian@example.com"]
    state = HrSyncState.objects.get()
    assert state.watermark_person_id == 2 and state.watermark_updated_at.isoformat().startswith("2026-01-02")

    assert "4 task(s) for HR-synced persons" in stage("create_account_tasks")
    stage("process_account_creation_tasks")
    assert set(Account.objects.filter(status="created").values_list("system", flat=True)) == {"idaas", "email"}
    assert "0 task(s) for HR-synced persons" in stage("create_account_tasks")


def test_hr_sync_rereads_an_overlap_and_hr_data_wins_over_api_data(hr_caller, settings, tmp_path):
    request = submit(hr_caller)
    stage("sync_hr_persons")  # TEST001 created from the API
    settings.LOCAL_HR_PERSONS_FILE = hr_file(tmp_path, [
        hr_person(77, "TEST001", "张三丰", "2026-01-01T00:00:00Z")])
    stage("sync_hr_persons")
    person = HrPerson.objects.get(employee_number="TEST001")
    assert (person.full_name, person.person_id, person.last_updated_by) == ("张三丰", 77, "hr_sync")
    assert person.email == "zhangsan@example.com"  # the address given once is kept

    # The same employee submitted again through the API: HR's data stays.
    submit(hr_caller, businessKey="AGAIN", userList=[{
        "employeeNumber": "TEST001", "employeeName": "别的名字", "departmentCode": "X", "phoneNumber": "13911112222"}])
    stage("sync_hr_persons")
    person.refresh_from_db()
    assert person.full_name == "张三丰"
    assert request.items.get(employee_number="TEST001").hr_person == person


def test_hr_watermark_advances_only_after_a_successful_run(settings, tmp_path):
    settings.LOCAL_HR_PERSONS_FILE = hr_file(tmp_path, [hr_person(1, "H001", "王五", "2026-01-01T00:00:00Z")])
    stage("sync_hr_persons")
    before = HrSyncState.objects.get().watermark_updated_at
    (tmp_path / "hr.json").write_text("{not json")
    with pytest.raises(CommandError):
        stage("sync_hr_persons")
    state = HrSyncState.objects.get()
    assert state.watermark_updated_at == before
    assert state.last_error


def test_progress_is_counted_as_items_end_and_an_unmoved_count_is_not_rewritten(hr_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^U000003$"
    request = submit(hr_caller, userList=make_users(4, "U"), systemList=["idaas"])
    stage("sync_hr_persons")
    stage("create_account_tasks")

    # One task is one item here: it ends, the request counts it and goes on processing.
    stage("process_account_creation_tasks", "--limit", "1")
    request.refresh_from_db()
    assert (request.status, request.processed_users, request.completed_at) == ("processing", 1, None)
    stamp = request.updated_at

    if connection.features.has_select_for_update:
        with pytest.raises(TransactionManagementError):  # its row locks would not outlive the statement
            rollup_requests([request.pk])
        with pytest.raises(TransactionManagementError):  # the items' lock is raw SQL: the same check
            rollup_items_for_persons(set(AccountCreationRequestItem.objects.values_list("hr_person_id", flat=True)))
    with transaction.atomic():
        rollup_requests([request.pk])  # nothing ended since: the row is left as it is
    request.refresh_from_db()
    assert (request.processed_users, request.updated_at) == (1, stamp)

    stage("process_account_creation_tasks")
    request.refresh_from_db()
    assert (request.status, request.processed_users) == ("partial_failed", 4)
    assert request.completed_at is not None and request.updated_at == request.completed_at
    assert request.error_summary["failedUsers"] == 1
    assert request.error_summary["reasons"][0]["employeeNumbers"] == ["U000003"]
