"""A retry keeps the history: the failures a request had stay in its errorHistory, and the tasks a retry
replaced read `retried` (已重试), not `failed`, so that failed tasks and failed accounts tell the same story."""

import datetime as dt

import pytest

from syncservice.models import Account, AccountCreationRequest, AccountCreationRequestItem, AccountCreationTask

from .fixtures import admin_action, document, run_pipeline, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]


@pytest.fixture
def welink_refuses_test002(settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"002$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]


def retry_through(how: str, caller, staff_client, request_id: str) -> None:
    if how == "api":
        response = caller.client.post(f"/account-creation/requests/{request_id}/retry/",
                                      HTTP_AUTHORIZATION=f"Bearer {caller.token}")
        assert response.status_code == 200, response.content
    elif how == "admin_requests":
        pk = AccountCreationRequest.objects.get(request_id=request_id).pk
        admin_action(staff_client, "accountcreationrequest", "retry_requests", [pk])
    elif how == "admin_items":
        item = AccountCreationRequestItem.objects.get(request__request_id=request_id, status="failed")
        admin_action(staff_client, "accountcreationrequestitem", "retry_items", [item.pk])
    else:
        task = AccountCreationTask.objects.get(status="failed")
        admin_action(staff_client, "accountcreationtask", "retry_tasks", [task.pk])


@pytest.mark.parametrize("how", ["api", "admin_requests", "admin_items", "admin_tasks"])
def test_after_a_retry_the_earlier_failure_is_in_error_history_and_the_old_task_reads_retried(
        how, hr_caller, staff_client, settings, welink_refuses_test002):
    request_id = submit(hr_caller)
    run_pipeline()
    failed = document(hr_caller, request_id)
    assert failed["status"] == "partial_failed" and failed["errorHistory"] == []
    assert failed["errorSummary"]["failedUsers"] == 1

    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = ""  # the target was fixed
    retry_through(how, hr_caller, staff_client, request_id)

    retried = document(hr_caller, request_id)
    assert retried["status"] == "processing" and retried["errorSummary"] is None
    [entry] = retried["errorHistory"]
    assert entry == {**failed["errorSummary"], "status": "partial_failed", "completedAt": failed["completedAt"],
                     "retriedAt": entry["retriedAt"], "retried": True}
    assert dt.datetime.fromisoformat(entry["retriedAt"].replace("Z", "+00:00")) >= dt.datetime.fromisoformat(
        failed["completedAt"].replace("Z", "+00:00"))
    old = AccountCreationTask.objects.get(person__employee_number="TEST002", system="welink", status="retried")
    assert old.get_status_display() == "已重试" and old.attempt_log.count() == 1  # its calls stay
    assert not AccountCreationTask.objects.filter(status="failed").exists()

    run_pipeline()

    done = document(hr_caller, request_id)
    assert done["status"] == "completed" and done["errorSummary"] is None
    assert done["errorHistory"] == retried["errorHistory"]
    tasks = AccountCreationTask.objects.filter(person__employee_number="TEST002", system="welink").order_by("id")
    assert [t.status for t in tasks] == ["retried", "succeeded"]


def test_every_retry_adds_its_own_entry_to_the_history(hr_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]
    request_id = submit(hr_caller)
    run_pipeline()
    for _ in range(2):
        assert hr_caller.client.post(f"/account-creation/requests/{request_id}/retry/",
                                     HTTP_AUTHORIZATION=f"Bearer {hr_caller.token}").status_code == 200
        run_pipeline()

    body = document(hr_caller, request_id)
    assert body["status"] == "failed" and body["errorSummary"]["failedUsers"] == 2
    assert [(e["status"], e["failedUsers"], e["retried"]) for e in body["errorHistory"]] == [
        ("failed", 2, True), ("failed", 2, True)]
    statuses = AccountCreationTask.objects.filter(system="welink").order_by("id").values_list("status", flat=True)
    assert list(statuses) == ["retried"] * 4 + ["failed"] * 2


def test_a_later_request_for_a_failed_account_replaces_its_failed_task(make_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]
    hr = make_caller("HR_SYSTEM")
    first = submit(hr, businessKey="FIRST", systemList=["welink"])
    run_pipeline()
    assert document(hr, first)["status"] == "failed"

    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = ""
    second = submit(hr, businessKey="SECOND", systemList=["welink"])
    run_pipeline()

    assert document(hr, second)["status"] == "completed"
    statuses = AccountCreationTask.objects.order_by("id").values_list("status", flat=True)
    assert list(statuses) == ["retried", "retried", "succeeded", "succeeded"]
    assert set(Account.objects.filter(system="welink").values_list("status", flat=True)) == {"created"}
    # The first request ended failed and stays as it ended: its summary was never cleared by a retry.
    assert document(hr, first)["errorHistory"] == []
