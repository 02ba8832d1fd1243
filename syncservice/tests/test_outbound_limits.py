"""Outbound limits per target system hold across several worker processes (PostgreSQL)."""

import subprocess
import sys
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connections

from syncservice.backends.pacing import concurrency_slot, pause
from syncservice.models import AccountCreationTask, TargetThrottle, TaskAttempt
from syncservice.simulators import welink

from .fixtures import make_users, note_example, requires_postgres
from .test_concurrency import PROJECT, manage, subprocess_env

pytestmark = [requires_postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def python_in_project(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=PROJECT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def welink_server():
    server, url = welink.start(client_secret="welink-secret", polls_before_open=1, rate_limit_per_second=40)
    yield server.app, url
    welink.stop(server)


def drain_with_workers(env: dict, workers: int = 3, rounds: int = 40) -> None:
    """Run `workers` process stages at once, again (as cron would) until no task is left open."""
    for _ in range(rounds):
        processes = [manage("process_account_creation_tasks", env=env) for _ in range(workers)]
        for process in processes:
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err
        if not AccountCreationTask.objects.filter(status__in=AccountCreationTask.OPEN_STATUSES).exists():
            return
        time.sleep(1)


def welink_env(url: str, **extra) -> dict:
    return subprocess_env(WELINK_BACKEND="welink", WELINK_API_URL=url, WELINK_CLIENT_ID="welink-client",
                          WELINK_CLIENT_SECRET="welink-secret", WELINK_CONCURRENCY=16, TASK_MAX_ATTEMPTS=20,
                          **extra)


def prepare(caller, count: int, key: str) -> None:
    response = caller.submit(note_example(businessKey=key, systemList=["welink"], userList=make_users(count, key)))
    assert response.status_code == 202
    call_command("sync_hr_persons")
    call_command("create_account_tasks")


def test_three_workers_together_stay_under_welinks_40_calls_per_second_per_api(hr_caller, welink_server):
    simulator, url = welink_server
    prepare(hr_caller, 120, "W")

    drain_with_workers(welink_env(url))

    assert simulator.rate_limit.refused == 0
    assert set(AccountCreationTask.objects.values_list("status", flat=True)) == {"succeeded"}
    # One account per person, though three workers batched them side by side.
    assert len(simulator.opened) == 120 and set(simulator.opened.values()) == {1}


def test_without_the_shared_limit_the_same_load_is_refused_with_48503(hr_caller, welink_server):
    # The control for the test above: the simulator does enforce 40 calls/s against this load.
    simulator, url = welink_server
    prepare(hr_caller, 120, "X")

    drain_with_workers(welink_env(url, WELINK_MAX_CALLS_PER_SECOND_PER_API=0, WELINK_BULK_SIZE=1,
                                  WELINK_STATUS_BATCH_SIZE=1))

    assert simulator.rate_limit.refused > 0
    # The 48503 answers were retried: nothing was lost, and the system was paused for every worker.
    # "Slow down" answers do not use up a task's attempts: every task still ends created.
    assert set(AccountCreationTask.objects.values_list("status", flat=True)) == {"succeeded"}
    assert TaskAttempt.objects.filter(code="48503").exists()
    assert TargetThrottle.objects.filter(system="welink", pause_reason="WeLink 48503").exists()


def test_a_pause_holds_back_every_process():
    paused_at = time.time()
    pause("welink", 3, "test", endpoint=welink.BULK_PATH)
    waited, done_at = map(float, python_in_project(
        "import time; from syncservice.backends.pacing import pace; "
        f"w = pace('welink', {welink.BULK_PATH!r}); print(w, time.time())",
        subprocess_env()).split())
    assert waited > 0
    assert 2.9 <= done_at - paused_at <= 4.5
    # The pause is the bulk API's: WeLink's other APIs are not held back.
    assert float(python_in_project(
        f"from syncservice.backends.pacing import pace; print(pace('welink', {welink.STATUS_PATH!r}))",
        subprocess_env())) < 1


def test_the_shared_concurrency_limit_holds_across_processes(settings):
    settings.WELINK_MAX_CONCURRENCY = 2
    holding = threading.Event()
    release = threading.Event()
    taken = []

    def hold():
        with concurrency_slot("welink", timeout=1) as acquired:
            taken.append(acquired)
            if len(taken) == 2:
                holding.set()
            release.wait(30)
        connections.close_all()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert holding.wait(10)
    try:
        code = ("from syncservice.backends.pacing import concurrency_slot\n"
                "with concurrency_slot('welink', timeout=0.5) as acquired: print(acquired)")
        assert python_in_project(code, subprocess_env(WELINK_MAX_CONCURRENCY=2)) == "False"
        assert python_in_project(code, subprocess_env(WELINK_MAX_CONCURRENCY=3)) == "True"
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert taken == [True, True]
