"""Stage runs that mean something: idle scheduled runs keep no TaskRun, only the stage's heartbeat moves."""

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from syncservice.backends.base import HrPage, HrSourceBackend
from syncservice.tests.fixtures import note_example
from taskmanagement import cron
from taskmanagement.models import StageHeartbeat, TaskRun
from taskmanagement.services import STAGES, stage_run

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = ["sync_hr_persons", "create_account_tasks", "process_account_creation_tasks"]
RUN_DOCUMENT_KEYS = {"id", "stage", "trigger", "dryRun", "outcome", "outcome_display", "counts", "summary",
                     "startedAt", "finishedAt", "host", "pid", "triggeredBy"}


def scheduler_round() -> str:
    out = StringIO()
    call_command("run_scheduler", "--once", stdout=out)
    return out.getvalue()


def heartbeats() -> dict[str, StageHeartbeat]:
    return {beat.stage: beat for beat in StageHeartbeat.objects.all()}


def age_everything(by: dt.timedelta) -> None:
    """Move every recorded run and heartbeat into the past, as if the last of them had happened `by` ago."""
    for run in TaskRun.objects.all():
        TaskRun.objects.filter(pk=run.pk).update(started_at=run.started_at - by,
                                                 finished_at=run.finished_at and run.finished_at - by)
    for beat in StageHeartbeat.objects.all():
        StageHeartbeat.objects.filter(pk=beat.pk).update(
            last_checked_at=beat.last_checked_at - by,
            last_succeeded_at=beat.last_succeeded_at and beat.last_succeeded_at - by)


class RunningRunsSeen(HrSourceBackend):
    """An empty HR source that notes, while the stage runs, which runs of it are recorded as running."""

    seen: list[list[tuple[str, str]]] = []

    def fetch_changed_persons(self, *, updated_after, after_id, limit):
        self.seen.append(list(TaskRun.objects.filter(outcome="running").values_list("stage", "trigger")))
        return HrPage(persons=[], next_cursor=None)


class UnreachableHrSource(HrSourceBackend):
    def fetch_changed_persons(self, *, updated_after, after_id, limit):
        raise ConnectionError("hr.example.com refused the connection")


def test_idle_scheduler_runs_add_no_row_but_move_each_stage_last_check():
    scheduler_round()
    first = heartbeats()
    scheduler_round()

    assert not TaskRun.objects.exists()
    second = heartbeats()
    assert set(second) == set(PIPELINE)
    for stage in PIPELINE:
        assert second[stage].last_checked_at > first[stage].last_checked_at
        assert second[stage].last_outcome == "succeeded"
        assert second[stage].last_succeeded_at == second[stage].last_checked_at


def test_idle_cron_runs_add_no_row_either_the_purge_included():
    cron.sync_hr_persons()
    cron.purge_account_requests()  # its counts carry older_than_days, an argument and not work done

    assert not TaskRun.objects.exists()
    assert set(heartbeats()) == {"sync_hr_persons", "purge_account_requests"}


def test_an_idle_run_is_recorded_while_it_runs_so_that_a_crash_leaves_its_row(settings):
    settings.HR_BACKEND = f"{__name__}.RunningRunsSeen"
    RunningRunsSeen.seen.clear()

    run = stage_run(stage="sync_hr_persons", trigger=TaskRun.Trigger.SCHEDULER)

    assert RunningRunsSeen.seen == [[("sync_hr_persons", "scheduler")]]
    assert run.pk is None and run.outcome == "succeeded"  # given up once it had finished idle
    assert not TaskRun.objects.exists()


def test_a_busy_scheduler_run_adds_one_row(hr_caller):
    hr_caller.submit(note_example())
    scheduler_round()
    scheduler_round()  # nothing left to do

    runs = list(TaskRun.objects.order_by("id"))
    assert [(run.stage, run.trigger, run.outcome) for run in runs] == [
        (stage, "scheduler", "succeeded") for stage in PIPELINE]
    assert runs[2].counts["claimed"] == 6
    beats = heartbeats()
    assert all(beats[run.stage].last_checked_at > run.finished_at for run in runs)


def test_a_failed_scheduled_run_keeps_its_row_and_its_last_success(settings):
    cron.sync_hr_persons()
    succeeded_at = StageHeartbeat.objects.get(stage="sync_hr_persons").last_succeeded_at
    settings.HR_BACKEND = f"{__name__}.UnreachableHrSource"

    with pytest.raises(CommandError, match="1 stage"):
        call_command("run_scheduler", "--once", stdout=StringIO(), stderr=StringIO())
    cron.sync_hr_persons()

    runs = TaskRun.objects.filter(stage="sync_hr_persons").order_by("id")
    assert [(run.trigger, run.outcome) for run in runs] == [("scheduler", "failed"), ("cron", "failed")]
    assert "ConnectionError" in runs[0].summary
    beat = StageHeartbeat.objects.get(stage="sync_hr_persons")
    assert beat.last_outcome == "failed" and beat.last_checked_at >= runs[1].finished_at
    assert beat.last_succeeded_at == succeeded_at


def test_readyz_stays_ready_while_idle_runs_go_on_after_the_last_busy_one(client, hr_caller, settings):
    settings.READYZ_STAGE_OVERDUE_SECONDS = 600
    hr_caller.submit(note_example())
    scheduler_round()
    age_everything(by=dt.timedelta(hours=1))  # the last busy runs were an hour ago

    scheduler_round()  # idle

    assert TaskRun.objects.count() == 3
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["overdueStages"] == []


def test_readyz_is_unavailable_when_even_idle_runs_stop(client, settings):
    settings.READYZ_STAGE_OVERDUE_SECONDS = 600
    scheduler_round()
    age_everything(by=dt.timedelta(hours=1))

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["overdueStages"] == PIPELINE


def test_an_idle_run_through_the_api_answers_a_run_it_keeps(operator_caller):
    response = operator_caller.post_json("/task-management/process_account_tasks/", {"mode": "run"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == RUN_DOCUMENT_KEYS
    assert body["trigger"] == "api" and body["outcome"] == "succeeded" and body["dryRun"] is False
    assert body["counts"]["claimed"] == 0
    run = TaskRun.objects.get()  # a person asked for it: it stays, and its id leads to it
    assert body["id"] == run.pk
    assert operator_caller.get("/task-management/runs/").json()["results"][0]["id"] == run.pk
    assert StageHeartbeat.objects.get(stage="process_account_creation_tasks").last_checked_at == run.finished_at


def test_an_idle_command_run_keeps_its_row():
    call_command("create_account_tasks", stdout=StringIO())
    assert TaskRun.objects.get().trigger == "command"


def test_a_dry_run_keeps_its_row_and_leaves_the_heartbeat_alone(operator_caller):
    body = operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "dry_run"}).json()

    assert TaskRun.objects.get().pk == body["id"]
    assert not StageHeartbeat.objects.exists()


@pytest.mark.parametrize("stage,counts,idle", [
    ("sync_hr_persons", {"requests_claimed": 0, "items_synced": 0, "hr_persons_synced": 0, "hr_note": "x"}, True),
    ("sync_hr_persons", {"requests_claimed": 0, "hr_persons_synced": 3, "hr_note": ""}, False),
    ("process_account_creation_tasks", {"claimed": 0, "by_system": {"idaas": 0}}, True),
    ("process_account_creation_tasks", {"claimed": 0, "notifications_delivered": 1, "by_system": {}}, False),
    ("purge_account_requests", {"requests": 0, "items": 0, "older_than_days": 30}, True),
    ("purge_account_requests", {"requests": 1, "items": 2, "older_than_days": 30}, False),
])
def test_a_run_is_idle_when_no_count_of_work_is_positive(stage, counts, idle):
    assert STAGES[stage].is_idle(counts) is idle


def test_the_dashboard_shows_when_each_stage_last_checked(staff_client):
    scheduler_round()

    page = staff_client.get("/admin/dashboard/").content.decode()

    assert "最近检查" in page
    assert page.count("前（成功）") == 3  # the three pipeline stages; the purge never ran


def test_the_run_list_marks_dry_runs_in_words_and_real_runs_without_a_red_cross(staff_client, operator_caller):
    operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "dry_run"})
    operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "run"})

    page = staff_client.get("/admin/taskmanagement/taskrun/").content.decode()

    assert "icon-no.svg" not in page and "icon-yes.svg" not in page
    assert '<td class="field-dry_run_mark">是</td>' in page
    assert staff_client.get("/admin/taskmanagement/stageheartbeat/").status_code == 200


def test_a_run_older_than_the_heartbeat_migration_still_counts_for_readiness(client, settings):
    """The migration starts the heartbeats from the recorded runs (here: its function, run by hand)."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("taskmanagement.migrations.0003_stage_heartbeat")
    settings.READYZ_STAGE_OVERDUE_SECONDS = 600
    old = timezone.now() - dt.timedelta(hours=1)
    for stage in PIPELINE:
        run = TaskRun.objects.create(stage=stage, trigger="cron", outcome="succeeded")
        TaskRun.objects.filter(pk=run.pk).update(started_at=old, finished_at=old)
    TaskRun.objects.create(stage="sync_hr_persons", trigger="cron", outcome="succeeded", finished_at=timezone.now())
    TaskRun.objects.create(stage="create_account_tasks", trigger="cron", outcome="failed", finished_at=timezone.now())

    migration.heartbeats_from_runs(apps, None)

    assert client.get("/readyz").json()["overdueStages"] == ["create_account_tasks", "process_account_creation_tasks"]
    assert StageHeartbeat.objects.get(stage="create_account_tasks").last_outcome == "failed"
