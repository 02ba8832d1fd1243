"""A failed stage is logged once, with its traceback and without its secrets, whoever started it."""

import io
import json
import logging
import traceback

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from config.logging import RedactingFilter
from syncservice.backends.base import HrSourceBackend
from taskmanagement import cron
from taskmanagement.models import TaskRun

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "hr-token-Zm9vYmFyYmF6"
PHONE = "13800138001"


class UnreachableHrSource(HrSourceBackend):
    """An HR source that fails the way an HTTP client does: the URL, its token and a phone in the message."""

    def fetch_changed_persons(self, *, updated_after, after_id, limit):
        raise ConnectionError(f"GET https://hr.example.com/persons?access_token={TOKEN}&mobile={PHONE} refused")


@pytest.fixture
def unreachable_hr(settings):
    settings.HR_BACKEND = f"{__name__}.UnreachableHrSource"


@pytest.fixture
def configured_log_lines():
    """Reads what the configured console handler (redacting filter, JSON formatter) has written so far."""
    console = next(handler for handler in logging.getLogger().handlers
                   if any(isinstance(f, RedactingFilter) for f in handler.filters))
    stream = io.StringIO()
    previous = console.setStream(stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    console.setStream(previous)


def failure_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], ConnectionError)]


def assert_logged_once_with_traceback(caplog, run: TaskRun) -> None:
    [record] = failure_records(caplog)  # one record: no starter logs it a second time
    assert record.name == "taskmanagement.services" and record.levelno == logging.ERROR
    assert f"sync_hr_persons run {run.pk} failed" in record.getMessage()
    assert TOKEN in str(record.exc_info[1])  # the original exception, its message untouched
    frames = [frame.name for frame in traceback.extract_tb(record.exc_info[2])]
    assert "fetch_changed_persons" in frames  # and its own traceback


def assert_no_secret_in(lines: list[dict], run: TaskRun) -> None:
    [entry] = [e for e in lines if e["logger"] == "taskmanagement.services" and "exception" in e]
    assert entry["request_id"].endswith(f"sync_hr_persons#{run.pk}")
    assert "fetch_changed_persons" in entry["exception"] and "ConnectionError" in entry["exception"]
    for line in lines:
        assert TOKEN not in json.dumps(line) and PHONE not in json.dumps(line)


def test_a_stage_failing_through_the_api_is_logged_once_with_its_traceback_and_no_secret(
        operator_caller, unreachable_hr, caplog, configured_log_lines):
    response = operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "run"})

    assert response.status_code == 500 and response.json()["code"] == "stage_failed"
    run = TaskRun.objects.get(pk=response.json()["runId"])
    assert run.outcome == "failed" and run.trigger == "api"
    assert_logged_once_with_traceback(caplog, run)
    assert_no_secret_in(configured_log_lines(), run)


def test_a_stage_failing_through_its_command_is_logged_once_with_its_traceback_and_no_secret(
        unreachable_hr, caplog, configured_log_lines):
    with pytest.raises(CommandError, match="sync_hr_persons failed: ConnectionError"):
        call_command("sync_hr_persons")

    run = TaskRun.objects.get()
    assert run.outcome == "failed" and run.trigger == "command"
    assert_logged_once_with_traceback(caplog, run)
    assert_no_secret_in(configured_log_lines(), run)


def test_a_stage_failing_under_cron_or_the_scheduler_is_logged_once_too(unreachable_hr, caplog):
    cron.sync_hr_persons()  # django-crontab would log an escaping exception a second time
    with pytest.raises(CommandError, match="1 stage"):
        call_command("run_scheduler", "--once", stdout=io.StringIO(), stderr=io.StringIO())

    runs = TaskRun.objects.filter(stage="sync_hr_persons").order_by("id")
    assert [(r.trigger, r.outcome) for r in runs] == [("cron", "failed"), ("scheduler", "failed")]
    records = failure_records(caplog)
    assert [r.getMessage().split(":")[0] for r in records] == [f"sync_hr_persons run {r.pk} failed" for r in runs]
