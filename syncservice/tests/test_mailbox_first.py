"""A person's IDaaS and WeLink tasks wait for their mailbox: opened blocked, released when it exists."""

import pytest
from django.utils import timezone

from syncservice.models import Account, AccountCreationRequest, AccountCreationTask, TaskAttempt
from syncservice.services.provisioning import run_process_stage

from .fixtures import make_users, note_example, stage
from .test_operations import cancel

pytestmark = pytest.mark.django_db(transaction=True)


def submit_and_open_tasks(caller, **overrides) -> str:
    response = caller.submit(note_example(**overrides))
    assert response.status_code == 202, response.content
    stage("sync_hr_persons")
    stage("create_account_tasks")
    return response.json()["requestId"]


def statuses() -> dict[tuple[str, str], str]:
    return {(t.person.employee_number, t.system): t.status
            for t in AccountCreationTask.objects.select_related("person")}


def test_other_tasks_are_opened_blocked_and_run_after_the_mailbox_exists(hr_caller):
    submit_and_open_tasks(hr_caller, userList=make_users(3, "M"))
    opened = statuses()
    assert {s for (_, system), s in opened.items() if system == "email"} == {"pending"}
    assert {s for (_, system), s in opened.items() if system != "email"} == {"blocked"}

    totals = run_process_stage(worker="w")

    assert totals.succeeded == 9 and set(statuses().values()) == {"succeeded"}
    assert AccountCreationRequest.objects.get().status == "completed"
    for task in AccountCreationTask.objects.exclude(system="email"):
        mailbox = AccountCreationTask.objects.get(person=task.person, system="email")
        first_call = TaskAttempt.objects.filter(task=task).earliest("started_at").started_at
        assert first_call >= mailbox.finished_at


def test_a_request_without_a_mailbox_does_not_wait(hr_caller):
    submit_and_open_tasks(hr_caller, systemList=["idaas", "welink"], userList=make_users(2, "N"))
    assert set(statuses().values()) == {"pending"}


def test_a_mailbox_failing_for_good_fails_the_tasks_waiting_for_it(hr_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = "0$"  # F000000's mailbox is refused for good
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["email"]
    submit_and_open_tasks(hr_caller, userList=make_users(2, "F"))

    run_process_stage(worker="w")

    tasks = {(t.person.employee_number, t.system): t for t in AccountCreationTask.objects.select_related("person")}
    assert tasks["F000000", "email"].status == "failed"
    for system in ("idaas", "welink"):
        task = tasks["F000000", system]
        assert (task.status, task.last_error_code, task.attempts) == ("failed", "mailbox_failed", 0)
        assert task.last_error.startswith("邮箱账号未能开通，未创建此账号：")
        assert not TaskAttempt.objects.filter(task=task).exists()  # never called
        account = Account.objects.get(person=task.person, system=system)
        assert account.status == "failed" and account.error_message.startswith("[mailbox_failed]")
    assert {tasks["F000001", s].status for s in ("idaas", "welink", "email")} == {"succeeded"}
    assert AccountCreationRequest.objects.get().status == "partial_failed"


def test_blocked_tasks_whose_mailbox_ended_unseen_are_released_by_the_upkeep(hr_caller):
    # The mailbox's result was written while create_account_tasks was opening the others (its commit came
    # later): nothing released them then; the process stage's upkeep does.
    submit_and_open_tasks(hr_caller, userList=make_users(1, "S"))
    now = timezone.now()
    AccountCreationTask.objects.filter(system="email").update(status="succeeded", finished_at=now)
    Account.objects.filter(system="email").update(status="created", external_id="mailbox")

    totals = run_process_stage(worker="w")

    assert totals.succeeded == 2
    assert set(statuses().values()) == {"succeeded"}
    assert AccountCreationRequest.objects.get().status == "completed"


def test_cancelling_a_request_cancels_its_blocked_tasks(hr_caller):
    request_id = submit_and_open_tasks(hr_caller, userList=make_users(2, "C"))

    assert cancel(hr_caller, request_id).status_code == 200

    assert set(statuses().values()) == {"cancelled"}
    assert AccountCreationRequest.objects.get().status == "cancelled"
    assert run_process_stage(worker="w").claimed == 0
