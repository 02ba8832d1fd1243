"""The task-management endpoints: operators and staff run stages; everyone else is refused."""

import pytest
from django.contrib.auth import get_user_model

from syncservice.models import AccountCreationRequest
from syncservice.tests.fixtures import note_example
from taskmanagement.models import TaskRun

pytestmark = pytest.mark.django_db(transaction=True)

ENDPOINTS = {
    "sync_hr_persons": "sync_hr_persons",
    "create_account_tasks": "create_account_tasks",
    "process_account_tasks": "process_account_creation_tasks",
}


def test_operator_runs_the_three_stages_through_the_api(hr_caller, operator_caller):
    request_id = hr_caller.submit(note_example()).json()["requestId"]
    for path, stage in ENDPOINTS.items():
        response = operator_caller.post_json(f"/task-management/{path}/", {"mode": "run"})
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["stage"] == stage
        assert body["trigger"] == "api" and body["outcome"] == "succeeded" and body["dryRun"] is False
        assert body["triggeredBy"] == "ops-ops"
        assert body["summary"]
    assert AccountCreationRequest.objects.get(request_id=request_id).status == "completed"


def test_dry_run_mode_changes_nothing(hr_caller, operator_caller):
    hr_caller.submit(note_example())
    body = operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "dry_run"}).json()
    assert body["dryRun"] is True
    assert body["counts"]["requests_claimed"] == 1
    assert AccountCreationRequest.objects.get().status == "pending"


@pytest.mark.parametrize("payload,field", [({}, "mode"), ({"mode": "go"}, "mode"), ({"mode": "run", "x": 1}, "x"),
                                           ([], None)])
def test_invalid_mode_is_400(operator_caller, payload, field):
    response = operator_caller.post_json("/task-management/sync_hr_persons/", payload)
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    if field:
        assert field in {e["field"] for e in body["errors"]}
    assert not TaskRun.objects.exists()


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_origin_clients_may_not_run_stages(hr_caller, path):
    response = hr_caller.post_json(f"/task-management/{path}/", {"mode": "run"})
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert not TaskRun.objects.exists()


@pytest.mark.parametrize("path", [*ENDPOINTS, "runs"])
def test_anonymous_callers_are_refused(client, path):
    response = client.post(f"/task-management/{path}/", {"mode": "run"}, content_type="application/json") \
        if path != "runs" else client.get("/task-management/runs/")
    assert response.status_code == 401


def test_staff_may_run_stages_from_a_session_but_not_other_users(client):
    user_model = get_user_model()
    user_model.objects.create_user("clerk", password="pw-for-tests-only")
    client.login(username="clerk", password="pw-for-tests-only")
    assert client.post("/task-management/sync_hr_persons/", {"mode": "run"},
                       content_type="application/json").status_code == 403
    user_model.objects.create_user("op", password="pw-for-tests-only", is_staff=True)
    client.login(username="op", password="pw-for-tests-only")
    response = client.post("/task-management/sync_hr_persons/", {"mode": "run"}, content_type="application/json")
    assert response.status_code == 200
    assert response.json()["triggeredBy"] == "op"


def test_a_failing_stage_answers_500_in_the_error_shape_and_is_recorded(operator_caller, settings):
    settings.HR_BACKEND = "nonsense"
    response = operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "run"})
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "stage_failed" and "HR_BACKEND" in body["message"]
    run = TaskRun.objects.get(pk=body["runId"])
    assert run.outcome == "failed"


def test_runs_are_listed_newest_first_and_filtered_by_stage(operator_caller):
    for path in ENDPOINTS:
        operator_caller.post_json(f"/task-management/{path}/", {"mode": "run"})
    page = operator_caller.get("/task-management/runs/").json()
    assert [r["stage"] for r in page["results"]] == list(reversed(list(ENDPOINTS.values())))
    only = operator_caller.get("/task-management/runs/?stage=create_account_tasks").json()
    assert only["count"] == 1
    assert operator_caller.get("/task-management/runs/?stage=nope").status_code == 400
