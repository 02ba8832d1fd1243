"""The operator's view of provisioning: where each account stands while it is retried, and every call made
for a person (the item log, in the API and the admin)."""

import datetime as dt

import pytest
from django.utils import timezone

from syncservice.backends import reset_backends
from syncservice.backends.base import Outcome
from syncservice.backends.local import LocalIdaasBackend
from syncservice.models import AccountCreationRequestItem, AccountCreationTask

from .fixtures import document, run_pipeline, stage, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]

PHONE = "13800138001"  # TEST001's, in the note's example
MASKED = "138****8001"


class PhoneQuotingIdaas(LocalIdaasBackend):
    """An IDaaS that is busy at each person's first call, and quotes the person's phone number back."""

    def ensure_account(self, person, state):
        if not state.get("refused"):
            return Outcome.transient("IDAAS-503", f"directory busy, user {person.phone_number} not saved",
                                     state={**state, "refused": True})
        return super().ensure_account(person, state)


@pytest.fixture
def busy_idaas(settings, fast_retries):
    settings.IDAAS_BACKEND = f"{__name__}.PhoneQuotingIdaas"
    reset_backends()
    yield
    reset_backends()


def item_id(request_id: str, employee_number: str = "TEST001") -> int:
    return AccountCreationRequestItem.objects.get(request__request_id=request_id, employee_number=employee_number).pk


def log_url(request_id: str, item: int, query: str = "") -> str:
    return f"/account-creation/requests/{request_id}/items/{item}/log/{query}"


def parse(timestamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


# --- The status document -----------------------------------------------------------------------------

def test_an_account_retried_after_a_transient_failure_shows_attempts_last_error_and_next_attempt(
        hr_caller, busy_idaas, settings):
    settings.TASK_RETRY_BASE_SECONDS = 3600  # the retry waits: the document is read in between
    request_id = submit(hr_caller, systemList=["idaas"])
    run_pipeline()

    [idaas] = document(hr_caller, request_id)["items"][0]["accounts"]

    assert idaas["status"] == "creating" and idaas["error"] is None  # what the document said before
    assert idaas["attempts"] == 1
    assert idaas["lastError"] == {"code": "IDAAS-503", "message": f"directory busy, user {MASKED} not saved"}
    assert parse(idaas["lastAttemptAt"]) <= timezone.now()
    assert parse(idaas["nextAttemptAt"]) > timezone.now() + dt.timedelta(seconds=60)

    AccountCreationTask.objects.update(next_attempt_at=timezone.now())  # due now
    stage("process_account_creation_tasks")

    [idaas] = document(hr_caller, request_id)["items"][0]["accounts"]
    assert idaas["status"] == "created"
    assert idaas["attempts"] == 2 and idaas["lastError"] is None
    assert idaas["nextAttemptAt"] is None  # the task is final


def test_an_account_without_a_task_yet_shows_no_attempts(hr_caller):
    request_id = submit(hr_caller, systemList=["idaas"])
    stage("sync_hr_persons")

    [idaas] = document(hr_caller, request_id)["items"][0]["accounts"]

    assert idaas == {"system": "idaas", "status": "not_created", "status_display": "未创建", "state": "not_created",
                     "state_display": "未创建", "enabled": True, "lastChange": None, "externalId": None,
                     "error": None, "attempts": 0, "lastError": None, "lastAttemptAt": None, "nextAttemptAt": None}


def test_the_status_document_costs_the_same_queries_with_many_retried_tasks(hr_caller, settings,
                                                                             django_assert_max_num_queries):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST"
    request_id = submit(hr_caller)
    run_pipeline()
    for _ in range(3):  # each round leaves another final task per account
        assert hr_caller.client.post(f"/account-creation/requests/{request_id}/retry/",
                                     HTTP_AUTHORIZATION=f"Bearer {hr_caller.token}").status_code == 200
        run_pipeline()
    assert AccountCreationTask.objects.count() == 4 * 2 * 3

    # Authentication, the shared rate-limit counter, then four queries for the document.
    with django_assert_max_num_queries(10):
        body = document(hr_caller, request_id)
    # The latest task of each account: the mailbox's called once; the others failed with it, uncalled.
    assert {(a["system"], a["attempts"], a["lastError"]["code"]) for i in body["items"] for a in i["accounts"]} == {
        ("email", 1, "LOCAL-422"), ("idaas", 0, "mailbox_failed"), ("welink", 0, "mailbox_failed")}


# --- The item log ------------------------------------------------------------------------------------

def test_the_item_log_lists_every_call_newest_first_with_phones_masked(hr_caller, busy_idaas):
    request_id = submit(hr_caller, systemList=["idaas", "email"])
    run_pipeline(rounds=2)
    item = item_id(request_id)

    response = hr_caller.get(log_url(request_id, item))

    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 3 and page["next"] is None and page["previous"] is None
    entries = page["results"]
    # The mailbox first; IDaaS waits for it, is busy once, then creates the account.
    assert [(e["system"], e["outcome"], e["attemptNumber"]) for e in entries] == [
        ("idaas", "created", 2), ("idaas", "transient", 1), ("email", "created", 1)]
    assert [parse(e["startedAt"]) for e in entries] == sorted((parse(e["startedAt"]) for e in entries), reverse=True)
    busy = entries[1]
    assert busy["operation"] == "create" and busy["outcome_display"] == "临时失败"
    assert busy["code"] == "IDAAS-503" and busy["message"] == f"directory busy, user {MASKED} not saved"
    assert busy["worker"] and busy["durationMs"] >= 0
    assert set(busy) == {"startedAt", "system", "operation", "outcome", "outcome_display", "attemptNumber", "code",
                         "message", "durationMs", "worker"}
    assert PHONE not in response.content.decode()


def test_the_item_log_pages_like_the_request_list(hr_caller, busy_idaas):
    request_id = submit(hr_caller, systemList=["idaas", "email"])
    run_pipeline(rounds=2)
    item = item_id(request_id)
    everything = hr_caller.get(log_url(request_id, item)).json()["results"]

    first = hr_caller.get(log_url(request_id, item, "?page_size=2")).json()
    second = hr_caller.get(log_url(request_id, item, "?page_size=2&page=2")).json()

    assert first["count"] == second["count"] == 3
    assert first["next"] and second["previous"] and second["next"] is None
    assert first["results"] + second["results"] == everything
    assert hr_caller.get(log_url(request_id, item, "?page=9")).status_code == 404
    assert hr_caller.get(log_url(request_id, item, "?page_size=0")).status_code == 400


def test_the_item_log_of_a_person_not_synced_yet_is_empty(hr_caller):
    request_id = submit(hr_caller)
    body = hr_caller.get(log_url(request_id, item_id(request_id))).json()
    assert body == {"count": 0, "next": None, "previous": None, "results": []}


def test_the_item_log_lists_only_the_requests_systems(make_caller, busy_idaas):
    hr = make_caller("HR_SYSTEM")
    email_only = submit(hr, businessKey="MAIL", systemList=["email"])
    run_pipeline()
    both = submit(hr, businessKey="BOTH", systemList=["idaas", "email"])
    run_pipeline(rounds=2)

    systems = [e["system"] for e in hr.get(log_url(email_only, item_id(email_only))).json()["results"]]
    assert systems == ["email"]  # the same person's IDaaS calls belong to the other request's systems
    assert len(hr.get(log_url(both, item_id(both))).json()["results"]) == 3


def test_the_item_log_answers_404_for_another_clients_request_and_another_requests_item(make_caller,
                                                                                         operator_caller):
    hr = make_caller("HR_SYSTEM")
    supplier = make_caller("SUPPLIER_SYSTEM")
    mine = submit(hr)
    theirs = submit(supplier, originSystem="SUPPLIER_SYSTEM")
    run_pipeline()

    hidden = hr.get(log_url(theirs, item_id(theirs)))
    assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"
    assert hr.get(log_url(mine, item_id(theirs))).status_code == 404  # an item of another request
    for malformed in ("0", "007", "abc", "-1", "99999999999999999999", str(2**63)):
        response = hr.get(log_url(mine, malformed))
        assert response.status_code == 404 and response.json()["success"] is False, malformed
    assert hr.get(log_url(mine, item_id(mine))).status_code == 200
    assert operator_caller.get(log_url(theirs, item_id(theirs))).json()["count"] == 3
    assert hr.client.get(log_url(mine, item_id(mine))).status_code == 401


def test_the_admin_item_page_shows_every_attempt_with_phones_masked(hr_caller, busy_idaas, staff_client):
    request_id = submit(hr_caller, systemList=["idaas"])
    run_pipeline(rounds=2)

    page = staff_client.get(f"/admin/syncservice/accountcreationrequestitem/{item_id(request_id)}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "执行记录" in html and "目标系统信息" in html
    assert "临时失败" in html and "已创建" in html and "IDAAS-503" in html
    assert f"directory busy, user {MASKED} not saved" in html
    assert PHONE not in html
