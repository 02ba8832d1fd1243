"""Several copies of every stage as real processes on PostgreSQL; a worker killed with kill -9."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.models import Count

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationTask,
    HrPerson,
    LocalTargetAccount,
    TaskAttempt,
)
from taskmanagement.models import TaskRun

from .fixtures import make_users, note_example, requires_postgres

pytestmark = [requires_postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PROJECT = Path(settings.BASE_DIR)


def subprocess_env(**extra) -> dict:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "TASK_RETRY_BASE_SECONDS": "0", "TASK_ASYNC_POLL_SECONDS": "0",
           "LOG_LEVEL": "WARNING"}
    env.update({key: str(value) for key, value in extra.items()})
    return env


def manage(*args, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(predicate, *, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def all_requests_final() -> bool:
    return not AccountCreationRequest.objects.filter(status__in=["pending", "processing"]).exists()


def submit_batches(caller, count: int, size: int, *, prefix: str = "B", **overrides) -> list[str]:
    ids = []
    for index in range(count):
        users = make_users(size, f"{prefix}{index}-")
        response = caller.submit(note_example(businessKey=f"{prefix}{index}", userList=users, **overrides))
        assert response.status_code == 202, response.content
        ids.append(response.json()["requestId"])
    return ids


def test_three_schedulers_at_once_create_every_account_exactly_once(hr_caller):
    # 2,000 namesakes in eight requests: every copy races for the same email addresses too.
    ids = submit_batches(hr_caller, count=7, size=250)
    failing = hr_caller.submit(note_example(businessKey="F", userList=make_users(250, "F-"))).json()["requestId"]
    env = subprocess_env(LOCAL_BACKEND_LATENCY_MS=2, LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT=1,
                         LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN=r"^F-0000[0-4][0-9]$",
                         LOCAL_BACKEND_FAILURE_SYSTEMS="welink", STAGE_BATCH_SIZE=100)
    workers = [manage("run_scheduler", "--interval", "0.2", env=env) for _ in range(3)]
    try:
        finished = wait_until(all_requests_final, timeout=240)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=60) for worker in workers]
    assert finished, outputs
    assert [worker.returncode for worker in workers] == [0, 0, 0], outputs

    statuses = dict(AccountCreationRequest.objects.values_list("request_id", "status"))
    assert {statuses[i] for i in ids} == {"completed"}
    assert statuses[failing] == "partial_failed"
    failed_request = AccountCreationRequest.objects.get(request_id=failing)
    assert failed_request.processed_users == 250
    assert failed_request.error_summary["failedUsers"] == 50
    [reason] = failed_request.error_summary["reasons"]
    assert reason["system"] == "welink" and reason["count"] == 50

    assert HrPerson.objects.count() == 2000
    assert HrPerson.objects.values("email").distinct().count() == 2000
    assert not HrPerson.objects.filter(email__isnull=True).exists()
    duplicates = (AccountCreationTask.objects.values("person_id", "system").annotate(n=Count("id"))
                  .filter(n__gt=1))
    assert not duplicates.exists()
    assert AccountCreationTask.objects.count() == 6000
    assert LocalTargetAccount.objects.count() == 6000 - 50
    # Every account was created by exactly one call; every WeLink account after one injected transient
    # failure (injection is limited to WeLink, where the 50 permanent failures come first).
    assert TaskAttempt.objects.filter(outcome="created").count() == 6000 - 50
    assert not TaskAttempt.objects.filter(outcome="linked").exists()
    assert TaskAttempt.objects.filter(outcome="transient").count() == 2000 - 50
    assert TaskAttempt.objects.filter(outcome="permanent").count() == 50
    assert not AccountCreationTask.objects.exclude(status__in=["succeeded", "failed"]).exists()
    for account in Account.objects.filter(status="created").select_related("person")[:200]:
        assert account.external_id == LocalTargetAccount.objects.get(
            system=account.system, employee_number=account.person.employee_number).external_id
    assert TaskRun.objects.values("pid").distinct().count() >= 3


def test_a_worker_killed_with_kill_9_only_delays_its_tasks(hr_caller):
    hr_caller.submit(note_example(businessKey="K", systemList=["idaas"], userList=make_users(120, "K")))
    call_command("sync_hr_persons")
    call_command("create_account_tasks")
    env = subprocess_env(LOCAL_BACKEND_LATENCY_MS=400, TASK_LEASE_SECONDS=3, IDAAS_CONCURRENCY=8)

    victim = manage("process_account_creation_tasks", env=env)
    victim_name = f"{os.uname().nodename}:{victim.pid}"
    assert wait_until(lambda: AccountCreationTask.objects.filter(locked_by=victim_name).exists(), timeout=30)
    time.sleep(0.5)
    victim.kill()
    victim.wait()
    orphaned = set(AccountCreationTask.objects.filter(status="running", locked_by=victim_name)
                   .values_list("id", flat=True))
    assert orphaned, "the worker was killed with tasks in flight"

    # Later runs finish the rest at once and the orphans once their lease has expired.
    def drained() -> bool:
        survivor = manage("process_account_creation_tasks", env=env)
        survivor.communicate(timeout=120)
        assert survivor.returncode == 0
        return not AccountCreationTask.objects.exclude(status="succeeded").exists()

    assert wait_until(drained, timeout=90, interval=0.5)
    assert LocalTargetAccount.objects.count() == 120
    for task in AccountCreationTask.objects.filter(id__in=orphaned):
        assert task.attempts >= 2
        assert task.attempt_log.filter(outcome__in=["created", "linked"]).count() == 1
    assert AccountCreationRequest.objects.get().status == "completed"


def test_sigterm_stops_claiming_and_releases_unstarted_work(hr_caller):
    hr_caller.submit(note_example(businessKey="T", systemList=["idaas"], userList=make_users(200, "T")))
    call_command("sync_hr_persons")
    call_command("create_account_tasks")
    env = subprocess_env(LOCAL_BACKEND_LATENCY_MS=300, IDAAS_CONCURRENCY=4)

    worker = manage("process_account_creation_tasks", env=env)
    assert wait_until(lambda: TaskAttempt.objects.exists(), timeout=30)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)

    assert worker.returncode == 0, err
    assert "process_account_creation_tasks: processed" in out
    assert not AccountCreationTask.objects.filter(status="running").exists()
    done = AccountCreationTask.objects.filter(status="succeeded").count()
    assert 0 < done < 200
    assert AccountCreationTask.objects.filter(status="pending").count() == 200 - done
