"""The process stage's loop: results written from a thread of their own while the main thread claims."""

import threading

import pytest
from django.db import OperationalError, transaction
from django.utils import timezone

from syncservice.models import AccountCreationRequest, AccountCreationTask, LocalTargetAccount, TaskAttempt
from syncservice.queue import executor
from syncservice.queue.executor import Lane, prefetch_capacity
from syncservice.services.provisioning import run_process_stage

from .fixtures import make_users, note_example, requires_postgres, stage

pytestmark = [requires_postgres, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]


def prepare(caller, count: int, key: str = "loop") -> None:
    response = caller.submit(note_example(businessKey=key, userList=make_users(count, key[0].upper())))
    assert response.status_code == 202, response.content
    stage("sync_hr_persons")
    stage("create_account_tasks")


@pytest.fixture
def writers(monkeypatch):
    """The names of the threads record_batch ran in, one per batch."""
    names = []
    original = executor.record_batch

    def spy(*args, **kwargs):
        names.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(executor, "record_batch", spy)
    return names


def test_results_are_written_by_the_recorder_thread_and_retries_come_round_in_the_same_run(
        hr_caller, settings, writers):
    settings.LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT = 1  # every call fails once, then succeeds
    prepare(hr_caller, 40)

    totals = run_process_stage(worker="w")

    assert set(writers) == {"recorder"}
    assert totals.retried == 120 and totals.succeeded == 120
    assert AccountCreationTask.objects.filter(status="succeeded").count() == 120
    assert TaskAttempt.objects.count() == 240
    assert AccountCreationRequest.objects.get().status == "completed"


def test_inside_a_transaction_results_are_written_inline(hr_caller, writers):
    # Another connection could not see the caller's uncommitted rows: the recorder must not use one.
    prepare(hr_caller, 5)
    with transaction.atomic():
        totals = run_process_stage(worker="w")
    assert set(writers) == {"MainThread"}
    assert totals.succeeded == 15


def test_a_failed_write_fails_the_stage_and_the_next_run_finishes_the_work(hr_caller, monkeypatch):
    prepare(hr_caller, 30)
    original = executor.record_batch
    calls = []

    def failing_once(results, *args, **kwargs):
        calls.append(len(results))
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return original(results, *args, **kwargs)

    monkeypatch.setattr(executor, "record_batch", failing_once)
    with pytest.raises(OperationalError, match="server closed"):
        run_process_stage(worker="w1")
    # The batch that was not written stays claimed under its lease; once that runs out it is due again.
    assert AccountCreationTask.objects.filter(status="running").count() >= calls[0]
    AccountCreationTask.objects.filter(status="running").update(lease_expires_at=timezone.now())

    run_process_stage(worker="w2")

    assert AccountCreationTask.objects.filter(status="succeeded").count() == 90
    assert LocalTargetAccount.objects.count() == 90  # created once each: the lost batch's calls were linked
    assert AccountCreationRequest.objects.get().status == "completed"


def test_the_queue_ahead_of_the_threads_holds_little_time_of_work(settings):
    settings.PROCESS_PREFETCH = 32
    settings.PROCESS_QUEUE_SECONDS = 0.5
    settings.TASK_LEASE_SECONDS = 60
    pool = Lane.__new__(Lane)
    pool.name, pool.size, pool.batch = "welink", 8, 1

    def capacity(call_seconds):
        pool.call_seconds = call_seconds
        return prefetch_capacity(pool, settings.TASK_LEASE_SECONDS)

    assert capacity(None) == 8  # no call finished yet: one per thread
    assert capacity(0.0) == 256  # instant calls: PROCESS_PREFETCH per thread
    assert capacity(5e-324) == 256  # the average of thousands of 0 ms calls: no overflow
    assert capacity(0.05) == 80  # 8 threads × 0.5 s ÷ 50 ms
    assert capacity(30.0) == 8  # never fewer than one per thread
    settings.PROCESS_QUEUE_SECONDS = 60  # a quarter of the lease bounds it too
    assert capacity(1.0) == 120


def test_slow_calls_and_a_short_lease_do_not_make_workers_take_each_others_tasks(hr_caller, settings):
    # 10 tasks per system, 2 threads, 0.4 s a call, a 2 s lease: queueing all 10 would keep the last ones
    # waiting 2 s, past their lease, and a second worker would claim them again.
    settings.LOCAL_BACKEND_LATENCY_MS = 400
    settings.BACKEND_CONCURRENCY = {"idaas": 2, "welink": 2, "email": 2}
    settings.TASK_LEASE_SECONDS = 2
    settings.PROCESS_QUEUE_SECONDS = 60  # only the lease bounds the queue here
    prepare(hr_caller, 10)

    totals = run_process_stage(worker="w")

    assert totals.fenced_off == 0 and totals.succeeded == 30
    assert TaskAttempt.objects.count() == 30
