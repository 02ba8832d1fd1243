"""The queue's contract, run against each engine (PostgreSQL's set-based SQL and the ORM), and a third
kind of job (tests/queue_kind.py) taken through claim, retry, lease expiry and a worker killed with kill -9.
"""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from syncservice.queue import engines, executor, jobs
from syncservice.queue.outcomes import Decision

from .fixtures import requires_postgres
from .queue_kind import ECHO_JOBS, EchoHandler, EchoJob
from .test_concurrency import PROJECT, subprocess_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ENGINES = ["orm"] + (["postgresql"] if connection.vendor == "postgresql" else [])


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch):
    """Every contract test runs on each engine this database offers (PostgreSQL runs both)."""
    chosen = {"orm": engines.OrmEngine(), "postgresql": engines.PostgresEngine()}[request.param]
    monkeypatch.setattr(engines, "engine", lambda: chosen)
    return chosen


@pytest.fixture
def echo_table(django_db_blocker):
    with django_db_blocker.unblock(), connection.schema_editor() as editor:
        editor.create_model(EchoJob)
    yield
    with django_db_blocker.unblock(), connection.schema_editor() as editor:
        editor.delete_model(EchoJob)


class EchoService:
    """An HTTP echo service on loopback: answers each payload of a call from its script (default 200)."""

    def __init__(self):
        self.script: dict[str, list] = defaultdict(list)
        self.calls: list[list[str]] = []
        self.hang = threading.Event()  # set: payloads scripted "hang" wait until it is cleared or 30 s pass
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payloads = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.calls.append(payloads)
                answers = []
                for payload in payloads:
                    step = service.script[payload].pop(0) if service.script[payload] else 200
                    if step == "hang":
                        time.sleep(30)
                        step = 200
                    answers.append({"status": step, "text": f"echo {payload}"})
                body = json.dumps(answers).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/echo"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def called(self) -> Counter:
        return Counter(payload for call in self.calls for payload in call)


@pytest.fixture
def echo(echo_table, settings):
    settings.TASK_RETRY_BASE_SECONDS = 0
    service = EchoService()
    yield service
    service.server.shutdown()


def make_jobs(*payloads, **fields) -> list[EchoJob]:
    return [EchoJob.objects.create(payload=payload, **fields) for payload in payloads]


def drain(handler: EchoHandler, **options) -> executor.Tally:
    return executor.run([handler], worker="test", deadline=time.monotonic() + 30, **options)[handler.name]


def claim(limit=10, worker="w", lane="a"):
    return jobs.claim_due(ECHO_JOBS, lane=lane, limit=limit, worker=worker)


def results_of(handler, claimed):
    return executor.call_jobs(handler, "a", claimed)


# --- The contract, on each engine ------------------------------------------------------------------------

def test_a_claim_takes_due_jobs_of_its_lane_in_priority_order_under_one_lease(echo, engine):
    make_jobs("low", priority=-1)
    make_jobs("high", priority=5)
    make_jobs("other-lane", lane="b")
    make_jobs("later", next_attempt_at=timezone.now() + dt.timedelta(hours=1))

    first, second = claim(limit=2)
    assert [first.job.payload, second.job.payload] == ["high", "low"]
    assert first.token == second.token and first.counted
    row = EchoJob.objects.get(payload="high")
    assert (row.status, row.attempts, row.locked_by, row.lease_token) == ("running", 1, "w", first.token)
    assert row.lease_expires_at > timezone.now()
    assert claim() == []  # held under the lease; the other lane's and the later job are not due here


@requires_postgres
def test_a_claim_skips_rows_another_transaction_holds(echo, engine):
    make_jobs("held", priority=1)
    make_jobs("free")
    locked, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic():
            list(EchoJob.objects.select_for_update().filter(payload="held"))
            locked.set()
            release.wait(10)
        connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    try:
        assert [c.job.payload for c in claim()] == ["free"]
    finally:
        release.set()
        holder.join()


def test_a_late_result_of_an_expired_lease_is_fenced_off(echo, engine):
    handler = EchoHandler(echo.url)
    make_jobs("x")
    [stale] = claim(worker="slow")
    EchoJob.objects.update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    [fresh] = claim(worker="fast")
    assert fresh.job.attempts == 2 and fresh.token != stale.token

    assert jobs.record(handler, results_of(handler, [stale]), worker="slow") == (Counter(), 1)
    assert EchoJob.objects.get().status == "running"
    verdicts, fenced = jobs.record(handler, results_of(handler, [fresh]), worker="fast")
    assert verdicts == {"succeeded": 1} and fenced == 0
    row = EchoJob.objects.get()
    assert (row.status, row.answer, row.lease_token, row.locked_by) == ("done", "echo x", "", "")


def test_released_jobs_give_their_attempt_back_and_accepted_work_goes_back_to_polling(echo, engine):
    make_jobs("fresh")
    make_jobs("accepted", status="waiting", accepted=True, attempts=1)
    claimed = claim()
    assert {c.job.payload: (c.job.attempts, c.counted) for c in claimed} == {"fresh": (1, True),
                                                                           "accepted": (1, False)}

    assert jobs.release(ECHO_JOBS, claimed) == 2
    rows = {row.payload: (row.status, row.attempts, row.lease_token) for row in EchoJob.objects.all()}
    assert rows == {"fresh": ("pending", 0, ""), "accepted": ("waiting", 1, "")}


def test_outcomes_move_attempts_in_one_place(echo, engine, settings):
    settings.TASK_RETRY_BASE_SECONDS = 60
    handler = EchoHandler(echo.url)
    echo.script.update({"flaky": [503], "slow-down": [429], "accepted": [202], "bad": [400]})
    make_jobs("flaky", "slow-down", "accepted", "bad", "ok")
    before = timezone.now()

    verdicts, _ = jobs.record(handler, results_of(handler, claim()), worker="w")

    assert verdicts == {"retried": 2, "waiting": 1, "failed": 1, "succeeded": 1}
    rows = {row.payload: row for row in EchoJob.objects.all()}
    assert (rows["flaky"].status, rows["flaky"].attempts) == ("pending", 1)
    assert rows["flaky"].next_attempt_at >= before + dt.timedelta(seconds=30)  # backoff with jitter: 30–60 s
    assert (rows["slow-down"].status, rows["slow-down"].attempts) == ("pending", 0)  # a deferral uses none
    assert rows["slow-down"].next_attempt_at <= timezone.now()
    assert (rows["accepted"].status, rows["accepted"].accepted) == ("waiting", True)
    assert (rows["bad"].status, rows["bad"].last_error) == ("failed", "echo bad")
    assert (rows["ok"].status, rows["ok"].last_error) == ("done", "")

    [poll] = [c for c in claim() if c.job.payload == "accepted"]  # due at once: a poll is not an attempt
    assert not poll.counted and poll.job.attempts == 1


def test_a_poll_told_to_slow_down_stays_a_poll_and_uses_no_attempt(echo, engine):
    handler = EchoHandler(echo.url)
    echo.script["accepted"] = [429, 429]
    make_jobs("accepted", status="waiting", accepted=True, attempts=1)

    for _ in range(2):
        jobs.record(handler, results_of(handler, claim()), worker="w")
        row = EchoJob.objects.get()
        assert (row.status, row.attempts, row.last_error) == ("waiting", 1, "echo accepted")
    drain(handler)
    assert EchoJob.objects.get().status == "done" and EchoJob.objects.get().attempts == 1


def test_a_retry_waits_at_least_what_the_other_side_asked_for_and_at_most_the_cap(echo, engine, settings):
    settings.TASK_RETRY_BASE_SECONDS, settings.TASK_RETRY_MAX_SECONDS = 1, 120
    handler = EchoHandler(echo.url)
    make_jobs("asks-60", "asks-999")
    before = timezone.now()
    claimed = claim()
    results = results_of(handler, claimed)
    for result in results:
        result.outcome = (503, f"Retry-After {result.job.payload[5:]}")
    handler.decide = lambda result, now: Decision.retry("503", result.outcome[1],
                                                         retry_after=float(result.job.payload[5:]))

    jobs.record(handler, results, worker="w")

    rows = {row.payload: row.next_attempt_at - before for row in EchoJob.objects.all()}
    assert dt.timedelta(seconds=60) <= rows["asks-60"] < dt.timedelta(seconds=62)
    assert dt.timedelta(seconds=120) <= rows["asks-999"] < dt.timedelta(seconds=122)  # the cap


def test_a_handler_that_fails_to_report_its_own_crash_fails_the_run_instead_of_hanging(echo, engine):
    handler = EchoHandler(echo.url)
    make_jobs("x", "y")

    def broken(*args):
        raise RuntimeError("handler bug")

    handler.call = handler.crashed = broken
    with pytest.raises(RuntimeError, match="handler bug"):
        drain(handler)
    # Nothing was lost: the jobs wait out their lease (or were released) and the next run does them.
    assert set(EchoJob.objects.values_list("status", flat=True)) <= {"running", "pending"}
    EchoJob.objects.update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    drain(EchoHandler(echo.url))
    assert set(EchoJob.objects.values_list("status", flat=True)) == {"done"}


def test_a_job_whose_attempts_are_used_up_fails_for_good_with_the_reason(echo, engine):
    handler = EchoHandler(echo.url)
    echo.script["down"] = [503, 503, 503, 503]
    make_jobs("down")

    tally = drain(handler)

    row = EchoJob.objects.get()
    assert (row.status, row.attempts) == ("failed", 3)
    assert row.last_error == "gave up after 3 attempts: echo down"
    assert tally.verdicts == {"retried": 2, "failed": 1} and echo.called()["down"] == 3


# --- The third kind through the executor -----------------------------------------------------------------

def test_the_executor_runs_a_new_kind_in_batches_with_retries_in_the_same_run(echo, engine):
    handler = EchoHandler(echo.url, lanes=("a", "b"), threads=2, batch=3)
    echo.script.update({"a2": [503], "b1": [202]})
    make_jobs(*[f"a{i}" for i in range(7)])
    make_jobs(*[f"b{i}" for i in range(3)], lane="b")

    tally = drain(handler)

    assert set(EchoJob.objects.values_list("status", flat=True)) == {"done"}
    assert tally.claimed == 12 and tally.by_lane == {"a": 8, "b": 4}  # a2 twice, b1 polled once more
    assert tally.verdicts == {"succeeded": 10, "retried": 1, "waiting": 1}
    assert max(len(call) for call in echo.calls) > 1  # several jobs went in one call
    assert EchoJob.objects.get(payload="a2").attempts == 2 and EchoJob.objects.get(payload="b1").attempts == 1


@requires_postgres  # threads beside the main thread: the ORM engine calls inline
def test_stopping_releases_claimed_jobs_that_did_not_start(echo, settings):
    settings.PROCESS_QUEUE_SECONDS = 10  # once calls are known to be quick, many jobs are claimed ahead
    handler = EchoHandler(echo.url, threads=1, batch=1)
    make_jobs(*[f"j{i}" for i in range(20)])
    stop = threading.Event()
    original, calls = handler.call, []

    def stopped_in_the_second_call(lane, claimed):
        calls.append(claimed)
        if len(calls) == 2:
            stop.set()  # SIGTERM arrives while the second call runs and the rest wait in the queue
            time.sleep(0.3)
        return original(lane, claimed)

    handler.call = stopped_in_the_second_call
    tally = drain(handler, stop=stop)

    done = EchoJob.objects.filter(status="done").count()
    assert done == len(calls) and tally.released >= 1 and tally.released == tally.claimed - done
    assert EchoJob.objects.filter(status="pending", attempts=0).count() == 20 - done
    assert not EchoJob.objects.filter(status="running").exists()


@requires_postgres
@pytest.mark.slow
def test_a_worker_killed_mid_call_delays_its_jobs_and_loses_none(echo):
    for n in range(4):
        echo.script[f"k{n}"] = ["hang"]  # the first call of each job hangs until the worker is killed
    make_jobs(*[f"k{n}" for n in range(4)])
    script = ("import django, os, time; django.setup()\n"
              "from syncservice.queue import executor\n"
              "from syncservice.tests.queue_kind import EchoHandler\n"
              "executor.run([EchoHandler(os.environ['ECHO_URL'], threads=4, batch=1)], worker='doomed',"
              " deadline=time.monotonic() + 60)\n")
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT,
                              env=subprocess_env(ECHO_URL=echo.url, TASK_LEASE_SECONDS=2,
                                                 DJANGO_SETTINGS_MODULE="config.settings"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(echo.calls) == 4, timeout=60), worker.stderr.read() if worker.poll() else ""
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert EchoJob.objects.filter(status="running", locked_by="doomed").count() == 4

    wait_until(lambda: EchoJob.objects.filter(lease_expires_at__lt=timezone.now()).count() == 4, timeout=10)
    tally = drain(EchoHandler(echo.url))

    assert tally.claimed == 4 and tally.verdicts == {"succeeded": 4}
    rows = list(EchoJob.objects.values_list("status", "attempts", "locked_by", "answer"))
    assert sorted(rows) == [("done", 2, "", f"echo k{n}") for n in range(4)]
    assert echo.called() == {f"k{n}": 2 for n in range(4)}
