"""The audit trail: who did what to which object, from the API, the admin and the commands; read only."""

import datetime as dt
import json
from io import StringIO
from urllib.parse import urlencode

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.utils import timezone

from config.logging import request_id_var
from syncservice.audit import Action, audit_record
from syncservice.models import (
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    ApiClient,
    AuditEntry,
    Notification,
)
from syncservice.tests.fixtures import Caller, admin_action, run_pipeline, submit
from taskmanagement.models import TaskRun

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]

PHONES = ("13800138001", "13800138002")  # the note example's users


def api_action(caller, request_id: str, action: str, **headers):
    return caller.client.post(f"/account-creation/requests/{request_id}/{action}/",
                              HTTP_AUTHORIZATION=f"Bearer {caller.token}", **headers)


def create_api_client(*args) -> list[str]:
    out = StringIO()
    call_command("create_api_client", *args, stdout=out)
    return out.getvalue().strip().splitlines()


def fail_welink_for_test002(settings) -> None:
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"002$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]


def entries() -> list[tuple[str, str, str, str]]:
    return list(AuditEntry.objects.order_by("id").values_list("actor_type", "actor", "action", "object_repr"))


# --- The API ----------------------------------------------------------------------------------------

def test_an_api_cancel_records_the_client_the_request_and_the_request_id(hr_caller):
    request_id = submit(hr_caller)

    response = api_action(hr_caller, request_id, "cancel", HTTP_X_REQUEST_ID="trace-cancel-1")

    assert response.status_code == 200
    entry = AuditEntry.objects.get()
    assert (entry.actor_type, entry.actor, entry.actor_client, entry.actor_user) == (
        "client", "HR_SYSTEM", hr_caller.api_client, None)
    assert (entry.action, entry.get_action_display()) == ("request.cancel", "取消请求")
    request = AccountCreationRequest.objects.get(request_id=request_id)
    assert (entry.object_type, entry.object_id, entry.object_repr) == (
        "syncservice.accountcreationrequest", str(request.pk), request_id)
    assert entry.request_id == response["X-Request-ID"] == "trace-cancel-1"
    assert entry.created_at <= timezone.now()


def test_an_api_retry_records_the_client_and_the_request(hr_caller, operator_caller, settings):
    fail_welink_for_test002(settings)
    request_id = submit(hr_caller)
    run_pipeline()

    response = api_action(operator_caller, request_id, "retry")

    assert response.status_code == 200
    assert entries() == [("client", "ops-ops", "request.retry", request_id)]
    assert AuditEntry.objects.get().actor_client == operator_caller.api_client


# --- The admin --------------------------------------------------------------------------------------

def test_an_admin_retry_records_an_audit_entry_and_a_log_entry_per_item_naming_the_staff_user(
        hr_caller, staff_client, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["email"]
    submit(hr_caller)
    run_pipeline()
    items = list(AccountCreationRequestItem.objects.filter(status="failed").order_by("id"))
    assert len(items) == 2
    staff = get_user_model().objects.get(username="ops")

    admin_action(staff_client, "accountcreationrequestitem", "retry_items", [i.pk for i in items])

    assert entries() == [("user", "ops", "item.retry", str(item)) for item in items]
    assert {e.actor_user for e in AuditEntry.objects.all()} == {staff}
    logged = LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(AccountCreationRequestItem))
    # object_id is text: both sides sorted as text ("10" before "9").
    assert sorted(logged.values_list("object_id", "user__username", "action_flag", "change_message")) == sorted(
        (str(i.pk), "ops", CHANGE, "重试用户") for i in items)
    history = staff_client.get(f"/admin/syncservice/accountcreationrequestitem/{items[0].pk}/history/")
    assert "重试用户" in history.content.decode()

    # Selected again, the items are no longer failed: the action changes nothing and records nothing.
    admin_action(staff_client, "accountcreationrequestitem", "retry_items", [i.pk for i in items])
    assert AuditEntry.objects.count() == 2 and logged.count() == 2


def test_admin_bulk_actions_record_one_entry_per_object_they_change(hr_caller, staff_client, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST001$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["idaas"]
    done_id = submit(hr_caller, businessKey="DONE", systemList=["idaas"])
    run_pipeline()
    first_id, second_id = submit(hr_caller, businessKey="A"), submit(hr_caller, businessKey="B")
    pks = dict(AccountCreationRequest.objects.values_list("request_id", "pk"))

    admin_action(staff_client, "accountcreationrequest", "cancel_requests",
                 [pks[done_id], pks[first_id], pks[second_id]])
    failed_task = AccountCreationTask.objects.get(status="failed")
    admin_action(staff_client, "accountcreationtask", "retry_tasks", [failed_task.pk])
    notification = Notification.objects.create(request_id=pks[done_id], channel="email", target="ops@example.com",
                                               message_id="audit-test-1", payload={}, status="failed")
    admin_action(staff_client, "notification", "resend", [notification.pk])

    # The partially failed request cannot be cancelled: no entry for it.
    assert sorted(entries()) == sorted([
        ("user", "ops", "request.cancel", first_id), ("user", "ops", "request.cancel", second_id),
        ("user", "ops", "task.retry", str(failed_task)), ("user", "ops", "notification.resend", str(notification))])
    assert sorted(LogEntry.objects.values_list("object_repr", "change_message")) == sorted([
        (first_id, "取消请求"), (second_id, "取消请求"), (str(failed_task), "重试任务"),
        (str(notification), "重新发送通知")])


def test_disabling_a_client_in_the_admin_records_it_once_and_the_change_form_records_field_names(
        staff_client, hr_caller):
    client = hr_caller.api_client
    for _ in range(2):  # the second time the client is already disabled
        response = staff_client.post("/admin/syncservice/apiclient/",
                                     {"action": "disable_clients", "_selected_action": [client.pk]})
        assert response.status_code == 302
    assert entries() == [("user", "ops", "client.disable", "HR_SYSTEM")]
    assert list(LogEntry.objects.values_list("object_repr", "change_message")) == [("HR_SYSTEM", "停用客户端")]

    response = staff_client.post(f"/admin/syncservice/apiclient/{client.pk}/change/", {
        "name": "HR_SYSTEM", "origin_system": "HR_SYSTEM", "is_active": "on", "default_priority": "3",
        "notify_email": "hr@example.com"})
    assert response.status_code == 302, response.content[:2000]

    entry = AuditEntry.objects.latest("id")
    assert (entry.action, entry.actor) == ("client.enable", "ops")
    assert entry.details == {"fields": ["is_active", "default_priority", "notify_email"]}
    assert ApiClient.objects.get(pk=client.pk).is_active


# --- Stages and commands ----------------------------------------------------------------------------

def test_running_a_stage_through_the_api_records_the_operator_and_the_run(hr_caller, operator_caller):
    submit(hr_caller)

    response = operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "run"})
    dry = operator_caller.post_json("/task-management/create_account_tasks/", {"mode": "dry_run"})

    assert response.status_code == dry.status_code == 200
    run, dry_run = AuditEntry.objects.order_by("id")
    assert (run.actor_type, run.actor, run.action) == ("client", "ops-ops", "stage.run")
    assert (run.object_type, run.object_id) == ("taskmanagement.taskrun", str(response.json()["id"]))
    assert run.request_id == response["X-Request-ID"]
    assert run.details == {"dryRun": False} and dry_run.details == {"dryRun": True}
    assert TaskRun.objects.get(pk=dry_run.object_id).stage == "create_account_tasks"


def test_a_staff_user_running_a_stage_is_recorded_as_the_user(staff_client):
    response = staff_client.post("/task-management/sync_hr_persons/", {"mode": "run"},
                                 content_type="application/json")
    assert response.status_code == 200
    assert entries()[0][:3] == ("user", "ops", "stage.run")


def test_creating_and_rotating_a_client_through_the_command_records_each_step():
    create_api_client("HR_SYSTEM", "--webhook-secret")
    create_api_client("HR_SYSTEM", "--rotate")
    create_api_client("HR_SYSTEM", "--rotate-webhook-secret")
    create_api_client("HR_SYSTEM", "--notify-email", "hr@example.com")

    assert entries() == [
        ("system", "create_api_client", "client.create", "HR_SYSTEM"),
        ("system", "create_api_client", "client.rotate_token", "HR_SYSTEM"),
        ("system", "create_api_client", "client.rotate_webhook_secret", "HR_SYSTEM"),
        ("system", "create_api_client", "client.change", "HR_SYSTEM"),
    ]
    created = AuditEntry.objects.get(action="client.create")
    assert created.details == {"operator": False, "webhookSecret": True}
    assert created.actor_client is None and created.request_id == ""


# --- What is not recorded ---------------------------------------------------------------------------

def test_a_failed_action_records_nothing(hr_caller, operator_caller, staff_client, settings):
    request_id = submit(hr_caller)
    assert api_action(hr_caller, request_id, "retry").status_code == 409  # nothing failed
    assert AuditEntry.objects.count() == 0
    assert api_action(hr_caller, request_id, "cancel").status_code == 200
    assert api_action(hr_caller, request_id, "cancel").status_code == 409  # already cancelled
    admin_action(staff_client, "accountcreationrequest", "cancel_requests",
                 [AccountCreationRequest.objects.get().pk])
    with pytest.raises(CommandError, match="exists"):
        create_api_client("HR_SYSTEM")
    settings.HR_BACKEND = "nonsense"
    assert operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "run"}).status_code == 500

    assert entries() == [("client", "HR_SYSTEM", "request.cancel", request_id)]
    assert not LogEntry.objects.exists()


def test_an_entry_that_cannot_be_written_undoes_the_action(hr_caller, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("the audit table is gone")
    monkeypatch.setattr("syncservice.api.views.audit_record", broken)
    request_id = submit(hr_caller)
    hr_caller.client.raise_request_exception = False

    assert api_action(hr_caller, request_id, "cancel").status_code == 500

    request = AccountCreationRequest.objects.get()
    assert request.status == "pending" and request.cancel_requested_at is None


def test_no_entry_holds_a_token_a_webhook_secret_or_a_full_phone_number(client, staff_client, settings):
    lines = create_api_client("HR_SYSTEM", "--webhook-secret")
    secrets = [lines[-1], lines[-3].rsplit(" ", 1)[-1]]
    lines = create_api_client("HR_SYSTEM", "--rotate", "--rotate-webhook-secret")
    secrets += [lines[-1], lines[-3].rsplit(" ", 1)[-1]]
    assert all(s.startswith(("aps_", "whsec_")) for s in secrets), secrets
    caller = Caller(client, secrets[2])
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST"
    request_id = submit(caller)
    run_pipeline()
    admin_action(staff_client, "accountcreationrequestitem", "retry_items",
                 list(AccountCreationRequestItem.objects.values_list("pk", flat=True)))
    run_pipeline()
    assert api_action(caller, request_id, "retry").status_code == 200
    # The last guard: a caller's mistake in the details is masked before it is stored.
    audit_record(actor="test", action=Action.CLIENT_CHANGE, target=ApiClient.objects.get(),
                 details={"note": f"{PHONES[0]} {secrets[2]}", "list": [secrets[3]]})

    stored = json.dumps([list(AuditEntry.objects.values()), list(LogEntry.objects.values())], default=str,
                        ensure_ascii=False)
    assert AuditEntry.objects.count() == 7
    for value in (*secrets, *PHONES):
        assert value not in stored
    assert "138****8001" in stored


# --- The admin list ---------------------------------------------------------------------------------

@pytest.fixture
def some_entries(hr_caller):
    client = hr_caller.api_client
    token = request_id_var.set("trace-filter-1")
    try:
        audit_record(actor=client, action=Action.CLIENT_CHANGE, target=client)
    finally:
        request_id_var.reset(token)
    audit_record(actor="create_api_client", action=Action.CLIENT_CREATE, target=client)
    run = TaskRun.objects.create(stage="sync_hr_persons", trigger="api")
    audit_record(actor=client, action=Action.STAGE_RUN, target=run)
    return {e.action: e for e in AuditEntry.objects.all()}


def listed(staff_client, query: str = "") -> set[str]:
    response = staff_client.get(f"/admin/syncservice/auditentry/{query}")
    assert response.status_code == 200
    return {entry.action for entry in response.context["cl"].result_list}


def test_the_admin_audit_list_filters_by_action_actor_type_and_date_and_searches_ids(staff_client, some_entries):
    assert listed(staff_client) == {"client.change", "client.create", "stage.run"}
    assert listed(staff_client, "?action__exact=stage.run") == {"stage.run"}
    assert listed(staff_client, "?actor_type__exact=system") == {"client.create"}
    # The links of the date filter: midnights in the current time zone.
    tomorrow = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    assert listed(staff_client, "?" + urlencode({"created_at__gte": str(tomorrow)})) == set()
    assert listed(staff_client, "?" + urlencode({"created_at__lt": str(tomorrow)})) == {
        "client.change", "client.create", "stage.run"}
    assert listed(staff_client, "?q=trace-filter-1") == {"client.change"}
    assert listed(staff_client, f"?q={some_entries['stage.run'].object_id}") >= {"stage.run"}
    page = staff_client.get("/admin/syncservice/auditentry/").content.decode()
    assert "操作审计记录" in page and "修改客户端" in page


def test_the_admin_audit_list_is_read_only(staff_client, some_entries):
    entry = some_entries["client.change"]
    base = "/admin/syncservice/auditentry/"

    page = staff_client.get(base).content.decode()
    assert f"{base}add/" not in page
    assert 'value="delete_selected"' not in page
    assert staff_client.get(f"{base}add/").status_code == 403
    detail = staff_client.get(f"{base}{entry.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert staff_client.post(f"{base}{entry.pk}/change/", {"actor": "someone else"}).status_code == 403
    assert staff_client.post(f"{base}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.get(pk=entry.pk).actor == "HR_SYSTEM"
    entry.actor = "someone else"
    with pytest.raises(ValueError, match="never changed"):
        entry.save()
