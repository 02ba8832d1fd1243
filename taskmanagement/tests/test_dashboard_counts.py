"""The dashboard's counts agree with one another: tasks and accounts tell the same story, retries included."""

import pytest

from syncservice.models import Account, AccountCreationTask
from syncservice.tests.fixtures import make_users, run_pipeline, stage, submit
from taskmanagement.selectors import dashboard

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]

OPEN = [s.value for s in AccountCreationTask.OPEN_STATUSES]


def table(rows: list[dict], statuses: list[str]) -> dict[str, dict[str, int]]:
    """The dashboard's per-system rows as {system label: {status: count}}."""
    return {row["system"]: dict(zip(statuses, row["counts"])) for row in rows}


def test_failed_tasks_and_failed_accounts_agree_after_retries(hr_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^(TEST002|M)"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink", "email"]
    retried = submit(hr_caller, businessKey="RETRIED")
    left_failed = submit(hr_caller, businessKey="LEFT", userList=make_users(3, "M"))  # mailbox fails: all fail
    run_pipeline()
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^M"
    assert hr_caller.client.post(f"/account-creation/requests/{retried}/retry/",
                                 HTTP_AUTHORIZATION=f"Bearer {hr_caller.token}").status_code == 200
    run_pipeline()
    submit(hr_caller, businessKey="OPEN", userList=make_users(2, "N"))
    stage("sync_hr_persons")
    stage("create_account_tasks")  # open tasks, not processed yet

    board = dashboard()

    tasks = table(board["tasks_by_system"], AccountCreationTask.Status.values)
    accounts = table(board["accounts_by_system"], Account.Status.values)
    assert tasks.keys() == accounts.keys()
    for system in tasks:
        assert tasks[system]["failed"] == accounts[system]["failed"], system
        assert tasks[system]["succeeded"] == accounts[system]["created"], system
        assert sum(tasks[system][s] for s in OPEN) == accounts[system]["creating"], system
    assert sum(row["failed"] for row in tasks.values()) == 3 * 3  # LEFT's three persons, every system
    # TEST002's three: the mailbox that failed, and the two accounts that failed with it.
    assert sum(row["retried"] for row in tasks.values()) == 3
    items = {row["key"]: row["count"] for row in board["items"]}
    requests = {row["key"]: row["count"] for row in board["requests"]}
    assert items == {"completed": 2, "failed": 3, "task_created": 2}
    assert requests == {"completed": 1, "failed": 1, "processing": 1}
    assert left_failed  # submitted, and counted above


def test_the_dashboard_page_has_a_column_for_retried_tasks(staff_client):
    page = staff_client.get("/admin/dashboard/").content.decode()
    assert "已重试" in page
