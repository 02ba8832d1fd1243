"""run_worker as a real process: woken by the database when a request is submitted, stopped by SIGTERM."""

import signal

import pytest

from syncservice.models import AccountCreationRequest, AccountCreationTask, Lease, LocalTargetAccount
from syncservice.tests.fixtures import make_users, note_example, requires_postgres
from syncservice.tests.test_concurrency import manage, subprocess_env, wait_until
from syncservice.tests.test_connections import MOST_CONNECTIONS, ConnectionSampler

pytestmark = [requires_postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def listening(pid: int) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                       [f"aps run_worker listen {pid}"])
        return cursor.fetchone()[0] == 1


def test_a_request_submitted_to_a_running_worker_completes_and_sigterm_stops_it(hr_caller):
    # A poll far longer than the test: only the notification of the submission can start the work.
    worker = manage("run_worker", "--poll", "600", env=subprocess_env(WORKER_POLL_SECONDS=600))
    try:
        assert wait_until(lambda: listening(worker.pid), timeout=30), "the worker never listened"
        with ConnectionSampler(f"aps run_worker {worker.pid}") as sampler:
            response = hr_caller.submit(note_example(businessKey="W1", userList=make_users(1, "W")))
            assert response.status_code == 202, response.content
            request_id = response.json()["requestId"]

            def completed() -> bool:
                return AccountCreationRequest.objects.get(request_id=request_id).status == "completed"

            assert wait_until(completed, timeout=60, interval=0.05)
            # A second one to the same worker, which went back to waiting.
            second = hr_caller.submit(note_example(businessKey="W2", userList=make_users(3, "V"))).json()["requestId"]
            assert wait_until(lambda: AccountCreationRequest.objects.get(request_id=second).status == "completed",
                              timeout=60, interval=0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, (out, err)
    assert "worker: stopped" in out
    assert LocalTargetAccount.objects.count() == 12
    assert not AccountCreationTask.objects.filter(status="running").exists()
    assert not Lease.objects.exclude(holder="").exists()
    busy = [n for n in sampler.samples if n]
    assert busy and max(busy) <= MOST_CONNECTIONS - 1, sorted(set(busy))  # the LISTEN one is named apart


def test_sigterm_during_work_releases_the_claims_and_exits_0(hr_caller):
    hr_caller.submit(note_example(businessKey="S", systemList=["email"], userList=make_users(200, "S")))
    worker = manage("run_worker", env=subprocess_env(LOCAL_BACKEND_LATENCY_MS=200, MAILBOX_CONCURRENCY=4))
    try:
        assert wait_until(lambda: AccountCreationTask.objects.filter(status="running").exists(), timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, (out, err)
    assert not AccountCreationTask.objects.filter(status="running").exists()
    assert AccountCreationTask.objects.filter(status="succeeded").exists()
    assert AccountCreationTask.objects.filter(status="pending").exists()  # handed back unstarted
