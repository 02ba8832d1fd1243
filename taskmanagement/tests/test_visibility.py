"""What operators see: the dashboard, the health probes and the logs."""

import datetime as dt
import io
import json
import logging
import subprocess
import sys

import pytest
from django.utils import timezone

from config.logging import JsonFormatter, RedactingFilter, redact
from syncservice.tests.fixtures import note_example, requires_postgres, run_pipeline
from taskmanagement.models import StageHeartbeat

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_authentication(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_ready_on_a_fresh_installation(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "overdueStages": []}


def test_readyz_is_unavailable_when_a_stage_is_overdue(client, settings):
    settings.READYZ_STAGE_OVERDUE_SECONDS = 600
    now = timezone.now()
    old = now - dt.timedelta(hours=1)
    StageHeartbeat.objects.create(stage="sync_hr_persons", last_checked_at=now, last_outcome="succeeded",
                                  last_succeeded_at=now)
    # Checked a moment ago, but failing since its last success an hour ago.
    StageHeartbeat.objects.create(stage="create_account_tasks", last_checked_at=now, last_outcome="failed",
                                  last_succeeded_at=old)
    StageHeartbeat.objects.create(stage="process_account_creation_tasks", last_checked_at=old,
                                  last_outcome="succeeded", last_succeeded_at=old)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["overdueStages"] == ["create_account_tasks", "process_account_creation_tasks"]


@pytest.mark.django_db(transaction=True)
def test_dashboard_shows_totals_backlog_and_last_runs(staff_client, hr_caller, settings):
    settings.TASK_RETRY_BASE_SECONDS = 0
    hr_caller.submit(note_example(businessKey="DONE"))
    run_pipeline()
    waiting = hr_caller.submit(note_example(businessKey="WAITING")).json()["requestId"]

    page = staff_client.get("/admin/dashboard/").content.decode()

    assert "运行概览" in page
    assert "已完成" in page and "待处理" in page
    assert waiting in page  # the oldest pending request is linked
    assert "HR 数据同步" in page and "账号任务处理" in page
    assert "处理 6 个任务：成功 6" in page
    assert "/admin/dashboard/" in staff_client.get("/admin/").content.decode()


def test_dashboard_needs_a_staff_login(client):
    response = client.get("/admin/dashboard/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


# --- Logs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    ("phone 13800138001 failed", "phone 138****8001 failed"),
    ("mobile +86-13800138001", "mobile +86-138****8001"),
    ("intl +442079460958 here", "intl +442****958 here"),
    ("Authorization: Bearer aps_abcdefghijklmnop", "Authorization: Bearer ***"),
    ("token aps_AbCdEfGhIjKlMnOp leaked", "token aps_*** leaked"),
    ("GET /cgi-bin/gettoken?corpid=x&corpsecret=s3cr3t", "GET /cgi-bin/gettoken?corpid=x&corpsecret=***"),
    ('{"client_secret": "abc"}', '{"client_secret": "***"}'),
    ("secret whsec_QUJDREVGR0hJSktM", "secret whsec_***"),
    ("employee E000123 ok", "employee E000123 ok"),
])
def test_redaction_masks_secrets_and_phone_numbers(raw, expected):
    assert redact(raw) == expected


def test_log_lines_are_json_objects_with_the_request_id(client, hr_caller):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("syncservice")
    logger.addHandler(handler)
    try:
        response = hr_caller.submit(note_example(), HTTP_X_REQUEST_ID="trace-42")
        logging.getLogger("syncservice.api").warning("phone %s for %s", "13800138001", "TEST001")
    finally:
        logger.removeHandler(handler)
    assert response["X-Request-ID"] == "trace-42"
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert entries[-1]["message"] == "phone 138****8001 for TEST001"
    assert set(entries[-1]) == {"time", "level", "logger", "request_id", "message"}


def test_a_generated_request_id_is_returned(client):
    assert len(client.get("/healthz")["X-Request-ID"]) == 16


@requires_postgres  # the stage runs in a subprocess against the test database
@pytest.mark.django_db(transaction=True)
def test_a_full_run_logs_no_secret_and_no_full_phone_number(hr_caller, settings):
    from syncservice.tests.test_concurrency import PROJECT, subprocess_env

    submitted = hr_caller.submit(note_example())
    assert submitted.status_code == 202
    env = subprocess_env(LOG_LEVEL="DEBUG", LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT=1,
                         LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN="002$")
    result = subprocess.run([sys.executable, "manage.py", "run_scheduler", "--once"], cwd=PROJECT, env=env,
                            capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        for secret in ("13800138001", "13800138002", hr_caller.token):
            assert secret not in line
        assert entry["request_id"] != "-" or entry["logger"].startswith("django")
