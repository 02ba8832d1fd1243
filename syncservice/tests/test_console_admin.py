"""The request console in the admin: badges, a progress bar that keeps completed and failed apart, the failed
count, retry and cancel buttons on a request's page, and a request found by the id its caller knows."""

import re

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from syncservice.models import AccountCreationRequest, AccountCreationTask, AuditEntry

from .fixtures import make_users, run_pipeline, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]

CHANGELIST = "/admin/syncservice/accountcreationrequest/"


@pytest.fixture
def welink_refuses_test002(settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"002$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]


def row_of(page: str, request_id: str) -> str:
    """The changelist's table row of one request."""
    match = re.search(r"<tr[^>]*>(?:(?!</tr>).)*?" + re.escape(request_id) + r"(?:(?!</tr>).)*</tr>", page, re.S)
    assert match, f"{request_id} not in the list"
    return match.group(0)


def test_a_partially_failed_request_shows_its_failed_part_and_count_apart_from_a_completed_one(
        hr_caller, staff_client, settings, welink_refuses_test002):
    partial = submit(hr_caller, businessKey="PARTIAL")
    complete = submit(hr_caller, businessKey="COMPLETE", userList=make_users(2, "OK"))
    run_pipeline()

    page = staff_client.get(CHANGELIST).content.decode()

    partial_row, complete_row = row_of(page, partial), row_of(page, complete)
    assert 'data-status="partial_failed"' in partial_row and "aps-tone-warn" in partial_row
    assert 'data-status="completed"' in complete_row and "aps-tone-ok" in complete_row
    assert 'data-completed="1" data-failed="1"' in partial_row
    assert 'data-completed="2" data-failed="0"' in complete_row
    assert 'class="aps-progress-ok" style="width:50.0%"' in partial_row
    assert 'class="aps-progress-bad" style="width:50.0%"' in partial_row
    assert 'class="aps-progress-ok" style="width:100.0%"' in complete_row
    pk = AccountCreationRequest.objects.get(request_id=partial).pk
    failed_link = re.search(r'<a class="aps-failed-count" data-failed="1" href="([^"]+)">1</a>', partial_row)
    assert failed_link, partial_row
    failed_items = staff_client.get(failed_link.group(1).replace("&amp;", "&")).content.decode()
    assert "TEST002" in failed_items and "TEST001" not in failed_items
    assert f"request__id__exact={pk}" in failed_link.group(1)


def test_searching_by_an_employee_number_does_not_inflate_the_counts(hr_caller, staff_client,
                                                                     welink_refuses_test002):
    request_id = submit(hr_caller)
    run_pipeline()
    page = staff_client.get(CHANGELIST, {"q": "TEST00"}).content.decode()
    assert 'data-completed="1" data-failed="1"' in row_of(page, request_id)


def test_the_retry_button_runs_the_list_action_with_its_audit_and_history_entries(
        hr_caller, staff_client, settings, welink_refuses_test002):
    request_id = submit(hr_caller)
    run_pipeline()
    pk = AccountCreationRequest.objects.get(request_id=request_id).pk
    page = staff_client.get(f"{CHANGELIST}{pk}/change/").content.decode()
    assert f'action="{CHANGELIST}{pk}/retry/run/"' in page and 'name="csrfmiddlewaretoken"' in page
    assert f"{CHANGELIST}{pk}/cancel/run/" not in page  # a finished request cannot be cancelled
    assert "错误摘要" in page and "<th>原因</th>" in page and "TEST002" in page

    response = staff_client.post(f"{CHANGELIST}{pk}/retry/run/")

    assert response.status_code == 302 and response["Location"] == f"{CHANGELIST}{pk}/change/"
    assert AccountCreationRequest.objects.get(pk=pk).status == "processing"
    assert list(AuditEntry.objects.values_list("actor", "action", "object_repr")) == [
        ("ops", "request.retry", request_id)]
    assert list(LogEntry.objects.values_list("object_repr", "action_flag", "change_message")) == [
        (request_id, CHANGE, "重试请求")]
    after = staff_client.get(f"{CHANGELIST}{pk}/change/").content.decode()
    assert "错误历史" in after and "TEST002" in after  # the failure the retry replaced stays readable


def test_the_cancel_button_cancels_a_pending_request_and_records_it(hr_caller, staff_client):
    request_id = submit(hr_caller)
    pk = AccountCreationRequest.objects.get(request_id=request_id).pk
    page = staff_client.get(f"{CHANGELIST}{pk}/change/").content.decode()
    assert f"{CHANGELIST}{pk}/cancel/run/" in page and f"{CHANGELIST}{pk}/retry/run/" not in page

    staff_client.post(f"{CHANGELIST}{pk}/cancel/run/")
    staff_client.post(f"{CHANGELIST}{pk}/cancel/run/")  # already cancelled: a warning, no second entry

    assert AccountCreationRequest.objects.get(pk=pk).status == "cancelled"
    assert list(AuditEntry.objects.values_list("action", "object_repr")) == [("request.cancel", request_id)]
    assert LogEntry.objects.count() == 1


def test_the_buttons_answer_only_post_with_a_csrf_token(hr_caller):
    request_id = submit(hr_caller)
    pk = AccountCreationRequest.objects.get(request_id=request_id).pk
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-only"))

    assert browser.get(f"{CHANGELIST}{pk}/cancel/run/").status_code == 405
    assert browser.post(f"{CHANGELIST}{pk}/cancel/run/").status_code == 403
    assert AccountCreationRequest.objects.get(pk=pk).status == "pending" and not AuditEntry.objects.exists()


def test_the_buttons_ask_for_the_permissions_the_list_actions_ask_for(hr_caller, client):
    request_id = submit(hr_caller)
    pk = AccountCreationRequest.objects.get(request_id=request_id).pk
    viewer = get_user_model().objects.create_user("viewer", password="pw-for-tests-only", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_accountcreationrequest"))
    client.force_login(viewer)

    # The list actions need no permission beyond seeing the list: the buttons follow them exactly.
    page = client.get(f"{CHANGELIST}{pk}/change/").content.decode()
    assert f"{CHANGELIST}{pk}/cancel/run/" in page
    other = get_user_model().objects.create_user("stranger", password="pw-for-tests-only", is_staff=True)
    client.force_login(other)
    assert client.post(f"{CHANGELIST}{pk}/cancel/run/").status_code == 403
    assert AccountCreationRequest.objects.get(pk=pk).status == "pending" and not AuditEntry.objects.exists()


def test_a_request_is_found_by_its_request_id(hr_caller, staff_client):
    request_id = submit(hr_caller)
    pk = AccountCreationRequest.objects.get(request_id=request_id).pk

    response = staff_client.get(f"{CHANGELIST}by-request-id/{request_id}/")

    assert response.status_code == 302 and response["Location"] == f"{CHANGELIST}{pk}/change/"
    assert staff_client.get(f"{CHANGELIST}by-request-id/NOPE/").status_code == 404
    assert request_id in staff_client.get(CHANGELIST, {"q": request_id}).content.decode()


def test_item_and_task_pages_show_status_badges(hr_caller, staff_client, welink_refuses_test002):
    submit(hr_caller)
    run_pipeline()
    items = staff_client.get("/admin/syncservice/accountcreationrequestitem/").content.decode()
    tasks = staff_client.get("/admin/syncservice/accountcreationtask/").content.decode()
    assert 'data-status="failed"' in items and 'data-status="completed"' in items
    assert 'data-status="failed"' in tasks and 'data-status="succeeded"' in tasks
    assert "syncservice/console" in tasks  # the stylesheet the badges need


def test_object_titles_and_field_labels_read_in_chinese(hr_caller, staff_client, welink_refuses_test002):
    submit(hr_caller)
    run_pipeline()
    task = AccountCreationTask.objects.get(status="failed")

    page = staff_client.get(f"/admin/syncservice/accountcreationtask/{task.pk}/change/").content.decode()

    assert f"任务 {task.pk}（WeLink创建，人员 {task.person_id}）：失败" in page
    assert "租约令牌" in page and "Lease token" not in page and "Lease expires" not in page
    attempt = staff_client.get("/admin/syncservice/taskattempt/").content.decode()
    assert f"任务 {task.pk} 第 1 次执行：永久失败" in attempt
    for path in ("/admin/syncservice/accountcreationtask/", "/admin/syncservice/account/",
                 "/admin/syncservice/apiclient/", "/admin/taskmanagement/taskrun/"):
        text = staff_client.get(path).content.decode()
        assert not re.search(r"\b(task|person|account) \d+", text), path
