"""purge_account_requests: finished requests past the retention period go, everything else stays."""

import datetime as dt

import pytest
from django.core.management import CommandError
from django.utils import timezone

from syncservice.models import AccountCreationRequest, AccountCreationRequestItem, AccountCreationTask, HrPerson
from taskmanagement.models import TaskRun

from .fixtures import make_users, note_example, run_pipeline, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]


def age(request_id: str, days: int) -> None:
    when = timezone.now() - dt.timedelta(days=days)
    AccountCreationRequest.objects.filter(request_id=request_id).update(created_at=when, completed_at=when)


def submit(caller, key: str, **overrides) -> str:
    response = caller.submit(note_example(businessKey=key, userList=make_users(3, key), **overrides))
    assert response.status_code == 202
    return response.json()["requestId"]


@pytest.fixture
def mixed_requests(hr_caller, settings):
    """Old and new, finished and unfinished requests."""
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^FAIL"
    ids = {key: submit(hr_caller, key) for key in ("OLDDONE", "NEWDONE", "FAILOLD")}
    run_pipeline()
    ids["OLDPENDING"] = submit(hr_caller, "OLDPENDING")
    ids["OLDPROCESSING"] = submit(hr_caller, "OLDPROCESSING")
    stage("sync_hr_persons")
    AccountCreationRequest.objects.filter(request_id=ids["OLDPENDING"]).update(status="pending")
    for key, days in {"OLDDONE": 45, "NEWDONE": 3, "FAILOLD": 31, "OLDPENDING": 90, "OLDPROCESSING": 90}.items():
        age(ids[key], days)
    return ids


def test_purge_deletes_only_finished_requests_past_the_retention(mixed_requests):
    tasks_before = AccountCreationTask.objects.count()

    line = stage("purge_account_requests", "--older-than-days", "30")

    assert line == ("purge_account_requests: deleted 2 finished request(s) and 6 item(s) "
                    "older than 30 day(s)")
    left = set(AccountCreationRequest.objects.values_list("business_key", flat=True))
    assert left == {"NEWDONE", "OLDPENDING", "OLDPROCESSING"}
    assert not AccountCreationRequestItem.objects.filter(request__business_key__in=["OLDDONE", "FAILOLD"]).exists()
    # Persons and tasks describe accounts that exist: they stay, unlinked from the deleted items.
    assert AccountCreationTask.objects.count() == tasks_before
    assert HrPerson.objects.filter(employee_number__startswith="OLDDONE").count() == 3
    assert AccountCreationTask.objects.filter(person__employee_number__startswith="OLDDONE",
                                              request_item__isnull=True).count() == 9


def test_dry_run_reports_and_deletes_nothing(mixed_requests):
    line = stage("purge_account_requests", "--dry-run", "--older-than-days", "30")
    assert line == ("[dry run] purge_account_requests: would delete 2 finished request(s) and 6 item(s) "
                    "older than 30 day(s)")
    assert AccountCreationRequest.objects.count() == 5


def test_default_retention_comes_from_settings_and_runs_are_recorded(mixed_requests, settings):
    settings.REQUEST_RETENTION_DAYS = 40
    assert "deleted 1 finished request(s)" in stage("purge_account_requests")
    run = TaskRun.objects.filter(stage="purge_account_requests").get()
    assert run.outcome == "succeeded" and run.counts["older_than_days"] == 40


def test_purge_works_in_batches(hr_caller):
    ids = [submit(hr_caller, f"B{i}") for i in range(5)]
    run_pipeline()
    for request_id in ids:
        age(request_id, 60)
    from syncservice.services.retention import purge_finished_requests

    result = purge_finished_requests(older_than_days=30, batch_size=2)
    assert (result.requests, result.items) == (5, 15)
    assert not AccountCreationRequest.objects.exists()


def test_negative_age_is_refused():
    with pytest.raises(CommandError, match="must not be negative"):
        stage("purge_account_requests", "--older-than-days", "-1")
