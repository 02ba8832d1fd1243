"""CRONJOBS for django-crontab, the cron entry points, and the foreground scheduler loop."""

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils.module_loading import import_string

from syncservice.models import AccountCreationRequest
from syncservice.tests.fixtures import note_example
from taskmanagement.models import TaskRun

pytestmark = pytest.mark.django_db(transaction=True)


def test_cronjobs_run_each_stage_every_interval_and_purge_daily():
    assert [job[1] for job in settings.CRONJOBS] == [
        "taskmanagement.cron.sync_hr_persons",
        "taskmanagement.cron.create_account_tasks",
        "taskmanagement.cron.process_account_creation_tasks",
        "taskmanagement.cron.purge_account_requests",
        "taskmanagement.cron.reconcile_accounts",
    ]
    assert {job[0] for job in settings.CRONJOBS[:3]} == {f"*/{settings.STAGE_INTERVAL_MINUTES} * * * *"}
    assert settings.CRONJOBS[3][0] == "30 3 * * *"
    assert settings.CRONJOBS[4][0] == settings.RECONCILE_SCHEDULE == "0 2 * * *"


def test_cron_entry_points_complete_a_request_and_record_cron_runs(hr_caller):
    hr_caller.submit(note_example())
    for _, path in settings.CRONJOBS[:3]:
        import_string(path)()
    assert AccountCreationRequest.objects.get().status == "completed"
    assert set(TaskRun.objects.values_list("trigger", flat=True)) == {"cron"}


@pytest.fixture
def fake_crontab(tmp_path, settings, monkeypatch):
    """A stand-in for /usr/bin/crontab that keeps the table in a file, so `crontab add` runs for real."""
    table = tmp_path / "crontab.txt"
    script = tmp_path / "crontab"
    script.write_text('#!/bin/sh\nif [ "$1" = "-l" ]; then cat "$CRONTAB_FILE" 2>/dev/null; exit 0; fi\n'
                      'cp "$1" "$CRONTAB_FILE"\n')
    script.chmod(0o755)
    monkeypatch.setenv("CRONTAB_FILE", str(table))
    settings.CRONTAB_EXECUTABLE = str(script)
    return table


def test_crontab_add_installs_the_three_stages_and_run_executes_one(fake_crontab, hr_caller):
    call_command("crontab", "add", stdout=StringIO())
    lines = [line for line in fake_crontab.read_text().splitlines() if line.strip()]
    assert len(lines) == 5
    assert all(line.startswith(f"*/{settings.STAGE_INTERVAL_MINUTES} * * * * ") for line in lines[:3])
    assert lines[3].startswith("30 3 * * * ")
    assert all("manage.py crontab run" in line for line in lines)

    hr_caller.submit(note_example())
    job_hash = lines[0].split("crontab run ")[1].split()[0]
    call_command("crontab", "run", job_hash)
    assert AccountCreationRequest.objects.get().status == "processing"
    assert TaskRun.objects.get().trigger == "cron"

    call_command("crontab", "remove", stdout=StringIO())
    assert not fake_crontab.read_text().strip()


def test_scheduler_once_runs_the_pipeline(hr_caller):
    hr_caller.submit(note_example())
    out = StringIO()
    call_command("run_scheduler", "--once", stdout=out)
    assert AccountCreationRequest.objects.get().status == "completed"
    assert "process_account_creation_tasks: processed 6 task(s)" in out.getvalue()
    assert set(TaskRun.objects.values_list("trigger", flat=True)) == {"scheduler"}
