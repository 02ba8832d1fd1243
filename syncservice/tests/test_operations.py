"""Cancel, retry and priority, through the API and the admin as an operator would use them."""

import pytest

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    LocalTargetAccount,
)
from syncservice.services.provisioning import ProcessResult, call_backend, claim_due_tasks, record_results

from .fixtures import admin_action, document, make_users, run_pipeline, stage, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]


def cancel(caller, request_id):
    return caller.client.post(f"/account-creation/requests/{request_id}/cancel/",
                              HTTP_AUTHORIZATION=f"Bearer {caller.token}")


def retry(caller, request_id):
    return caller.client.post(f"/account-creation/requests/{request_id}/retry/",
                              HTTP_AUTHORIZATION=f"Bearer {caller.token}")


# --- Cancel ------------------------------------------------------------------------------------------

def test_cancelling_a_pending_request_ends_it_at_once(hr_caller):
    request_id = submit(hr_caller)

    response = cancel(hr_caller, request_id)

    assert response.status_code == 200
    assert response.json() == {"success": True, "requestId": request_id, "status": "cancelled",
                               "status_display": "已取消", "message": "请求已取消"}
    body = document(hr_caller, request_id)
    assert body["status"] == "cancelled" and body["progress"] == "100.0%" and body["completedAt"]
    assert {item["status"] for item in body["items"]} == {"cancelled"}
    run_pipeline()
    assert not AccountCreationTask.objects.exists()
    assert document(hr_caller, request_id)["status"] == "cancelled"


def test_cancelling_after_sync_stops_before_any_task(hr_caller):
    request_id = submit(hr_caller)
    stage("sync_hr_persons")
    assert cancel(hr_caller, request_id).json()["status"] == "cancelled"
    run_pipeline()
    assert not AccountCreationTask.objects.exists()


def test_cancelling_keeps_created_accounts_and_cancels_unstarted_tasks(hr_caller):
    request_id = submit(hr_caller, systemList=["idaas", "email"])
    stage("sync_hr_persons")
    stage("create_account_tasks")
    stage("process_account_creation_tasks", "--limit", "2")  # idaas of both persons, by task order

    assert cancel(hr_caller, request_id).json()["status"] == "cancelled"

    body = document(hr_caller, request_id)
    created = {(i["employeeNumber"], a["system"]) for i in body["items"] for a in i["accounts"]
               if a["status"] == "created"}
    assert len(created) == 2
    assert AccountCreationTask.objects.filter(status="cancelled").count() == 2
    assert LocalTargetAccount.objects.count() == 2
    assert {i["status"] for i in body["items"]} <= {"cancelled", "completed"}
    run_pipeline()
    assert LocalTargetAccount.objects.count() == 2


def test_cancelling_with_calls_in_flight_ends_when_they_finish(hr_caller):
    request_id = submit(hr_caller, systemList=["idaas"])
    stage("sync_hr_persons")
    stage("create_account_tasks")
    token, in_flight = claim_due_tasks(system="idaas", limit=1, worker="w1")

    response = cancel(hr_caller, request_id).json()
    assert response["status"] == "processing"
    assert response["message"] == "正在取消：等待执行中的任务结束"
    assert cancel(hr_caller, request_id).status_code == 200  # asking again is harmless

    record_results([call_backend(t) for t in in_flight], worker="w1", totals=ProcessResult())
    body = document(hr_caller, request_id)
    assert body["status"] == "cancelled"
    assert sorted(i["status"] for i in body["items"]) == ["cancelled", "completed"]


def test_an_in_flight_call_that_fails_transiently_is_not_retried_after_a_cancel(hr_caller, settings):
    settings.LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT = 1
    request_id = submit(hr_caller, systemList=["idaas"])
    stage("sync_hr_persons")
    stage("create_account_tasks")
    token, in_flight = claim_due_tasks(system="idaas", limit=2, worker="w1")
    cancel(hr_caller, request_id)

    record_results([call_backend(t) for t in in_flight], worker="w1", totals=ProcessResult())

    assert set(AccountCreationTask.objects.values_list("status", flat=True)) == {"cancelled"}
    assert document(hr_caller, request_id)["status"] == "cancelled"
    assert set(Account.objects.filter(system="idaas").values_list("status", flat=True)) == {"not_created"}


def test_cancelling_one_request_does_not_strand_another_waiting_on_the_same_task(make_caller):
    hr = make_caller("HR_SYSTEM")
    other = make_caller("SUPPLIER_SYSTEM")
    first = submit(hr)
    stage("sync_hr_persons")
    stage("create_account_tasks")
    second = submit(other, originSystem="SUPPLIER_SYSTEM")
    stage("sync_hr_persons")
    stage("create_account_tasks")  # the second request's items share the first one's open tasks

    assert cancel(hr, first).json()["status"] == "cancelled"
    run_pipeline()

    assert document(other, second)["status"] == "completed"
    assert LocalTargetAccount.objects.count() == 6


def test_a_final_request_cannot_be_cancelled(hr_caller):
    request_id = submit(hr_caller)
    run_pipeline()
    response = cancel(hr_caller, request_id)
    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"


def test_only_the_owner_or_an_operator_may_cancel(make_caller, operator_caller):
    hr = make_caller("HR_SYSTEM")
    other = make_caller("SUPPLIER_SYSTEM")
    request_id = submit(hr)
    assert cancel(other, request_id).status_code == 404
    assert AccountCreationRequest.objects.get().status == "pending"
    assert cancel(operator_caller, request_id).status_code == 200


# --- Retry -------------------------------------------------------------------------------------------

def test_retrying_failed_items_gives_them_fresh_tasks_and_keeps_history(hr_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"002$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]
    request_id = submit(hr_caller)
    run_pipeline()
    assert document(hr_caller, request_id)["status"] == "partial_failed"

    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = ""  # the target was fixed
    response = retry(hr_caller, request_id)
    assert response.status_code == 200
    assert response.json()["status"] == "processing"
    body = document(hr_caller, request_id)
    assert body["errorSummary"] is None and body["completedAt"] is None and body["processedUsers"] == 1
    run_pipeline()

    body = document(hr_caller, request_id)
    assert body["status"] == "completed"
    tasks = AccountCreationTask.objects.filter(person__employee_number="TEST002", system="welink").order_by("id")
    assert [(t.status, t.attempts) for t in tasks] == [("retried", 1), ("succeeded", 1)]
    assert tasks[0].attempt_log.count() == 1  # the history stays
    assert AccountCreationTask.objects.count() == 7


@pytest.mark.parametrize("state", ["pending", "completed", "cancelled"])
def test_retry_without_failed_items_is_409(hr_caller, state):
    request_id = submit(hr_caller)
    if state == "completed":
        run_pipeline()
    elif state == "cancelled":
        cancel(hr_caller, request_id)
    response = retry(hr_caller, request_id)
    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"


def test_another_origin_cannot_retry(make_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST"
    hr = make_caller("HR_SYSTEM")
    request_id = submit(hr)
    run_pipeline()
    assert retry(make_caller("SUPPLIER_SYSTEM"), request_id).status_code == 404
    assert AccountCreationRequest.objects.get().status == "failed"


# --- Admin actions -----------------------------------------------------------------------------------

def test_admin_cancels_and_retries_requests_items_and_tasks(hr_caller, staff_client, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["email"]
    failed_id = submit(hr_caller, businessKey="F")
    run_pipeline()
    pending_id = submit(hr_caller, businessKey="P")
    requests = {r.request_id: r.pk for r in AccountCreationRequest.objects.all()}

    admin_action(staff_client, "accountcreationrequest", "cancel_requests", [requests[pending_id]])
    assert AccountCreationRequest.objects.get(request_id=pending_id).status == "cancelled"

    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = ""
    one_item = AccountCreationRequestItem.objects.get(request__request_id=failed_id, employee_number="TEST001")
    admin_action(staff_client, "accountcreationrequestitem", "retry_items", [one_item.pk])
    run_pipeline()
    assert AccountCreationRequest.objects.get(request_id=failed_id).status == "partial_failed"

    # The mailbox failed, and with it the accounts waiting for it: retrying the mailbox brings them back.
    failed = dict(AccountCreationTask.objects.filter(status="failed", person__employee_number="TEST002")
                  .values_list("system", "last_error_code"))
    assert failed == {"email": "LOCAL-422", "idaas": "mailbox_failed", "welink": "mailbox_failed"}
    failed_task = AccountCreationTask.objects.get(status="failed", person__employee_number="TEST002", system="email")
    admin_action(staff_client, "accountcreationtask", "retry_tasks", [failed_task.pk])
    assert dict(AccountCreationTask.objects.filter(person__employee_number="TEST002")
                .exclude(status__in=["failed", "retried"])
                .values_list("system", "status")) == {"email": "pending", "idaas": "blocked", "welink": "blocked"}
    run_pipeline()
    assert AccountCreationRequest.objects.get(request_id=failed_id).status == "completed"


# --- Priority ----------------------------------------------------------------------------------------

def test_a_high_priority_batch_overtakes_a_large_low_priority_one(make_caller, settings):
    settings.STAGE_BATCH_SIZE = 50
    bulk = make_caller("BULK_SYSTEM", priority=-5)
    urgent = make_caller("URGENT_SYSTEM")
    bulk_id = submit(bulk, originSystem="BULK_SYSTEM", systemList=["idaas"], userList=make_users(300, "L"))
    urgent_id = submit(urgent, originSystem="URGENT_SYSTEM", systemList=["idaas"], userList=make_users(5, "H"),
                       priority=8)

    stage("sync_hr_persons", "--limit", "5")
    assert set(AccountCreationRequestItem.objects.filter(status="synced")
               .values_list("request__request_id", flat=True)) == {urgent_id}
    stage("sync_hr_persons")
    stage("create_account_tasks", "--limit", "5")
    stage("create_account_tasks")
    stage("process_account_creation_tasks", "--limit", "5")

    assert document(urgent, urgent_id)["status"] == "completed"
    assert document(bulk, bulk_id)["status"] == "processing"
    assert not LocalTargetAccount.objects.filter(employee_number__startswith="L").exists()


def test_retrying_the_same_failed_task_twice_in_one_action_opens_one_task(hr_caller, staff_client, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST001$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["idaas"]
    submit(hr_caller, systemList=["idaas"])
    run_pipeline()
    first = AccountCreationTask.objects.get(status="failed")
    # A second failed task of the same person and system, from an earlier round.
    second = AccountCreationTask.objects.create(person=first.person, system="idaas", status="failed",
                                                request_item=first.request_item)

    admin_action(staff_client, "accountcreationtask", "retry_tasks", [first.pk, second.pk])

    assert AccountCreationTask.objects.filter(person=first.person, status="pending").count() == 1
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = ""
    run_pipeline()
    assert AccountCreationRequest.objects.get().status == "completed"
