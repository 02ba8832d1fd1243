"""Faults in the service's own processes: PostgreSQL restarted under a running stage, and workers of a
multi-process drain killed with kill -9 at random moments, run after run.

The restart test starts a private PostgreSQL 15 cluster of its own (the machine's shared server is never
touched), migrates it and runs the real stage commands against it. The kill -9 test runs real worker
processes against the pytest database, like test_concurrency.py.
"""

import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
from django.conf import settings
from django.db.models import Count, Q

from syncservice.models import (
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    HrPerson,
    LocalTargetAccount,
    TaskAttempt,
)

from .fixtures import _on_postgres, make_users, note_example
from .test_concurrency import manage, subprocess_env, wait_until

pytestmark = [
    pytest.mark.skipif(not _on_postgres(), reason="faults of PostgreSQL and of worker processes sharing it: "
                                                  "set DATABASE_URL=postgres://..."),
    pytest.mark.slow,
]

PROJECT = Path(settings.BASE_DIR)
PG_BIN = Path(os.environ.get("PRIVATE_PG_BIN", "/usr/lib/postgresql/15/bin"))


# --- A private PostgreSQL cluster -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """A throwaway PostgreSQL cluster in a temporary folder, on a free loopback port, trust auth."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.database = "aps_faults"
        # initdb refuses to run as root: run the server tools as the postgres OS user then.
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    def tool(self, name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.as_owner, str(PG_BIN / name), *args], capture_output=True, text=True,
                                timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise AssertionError(f"{name} failed: {result.stdout}{result.stderr}{self.server_log()}")
        return result

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""

    def init(self) -> None:
        self.tool("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def pg_ctl(self, action: str, *extra: str) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off")
        self.tool("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", *extra)

    def create_database(self) -> None:
        self.tool("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)

    def query(self, sql: str, params=()) -> list[tuple]:
        with psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=self.database,
                              connect_timeout=5) as conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall() if cursor.description else []
        conn.close()
        return rows

    def scalar(self, sql: str, params=()):
        return self.query(sql, params)[0][0]


@pytest.fixture
def private_postgres():
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"initdb not found in {PG_BIN} (set PRIVATE_PG_BIN): cannot start a private PostgreSQL")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb cannot run as root")
    root = Path(tempfile.mkdtemp(prefix="aps-private-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PrivateCluster(root)
    try:
        cluster.init()
        cluster.pg_ctl("start")
        cluster.create_database()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            subprocess.run([*cluster.as_owner, str(PG_BIN / "pg_ctl"), "stop", "-D", str(cluster.data), "-m",
                            "immediate", "-w"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def private_env(cluster: PrivateCluster, **extra) -> dict:
    env = {**os.environ, "DATABASE_URL": cluster.url, "TASK_RETRY_BASE_SECONDS": "0",
           "TASK_ASYNC_POLL_SECONDS": "0", "LOG_LEVEL": "WARNING"}
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_manage(*args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=timeout)


SUBMIT_SCRIPT = """
import json, sys
from syncservice.services.clients import api_client_create
from syncservice.services.intake import request_submit
from syncservice.validation import validate_create_accounts

payload = json.loads(sys.stdin.read())
client, _ = api_client_create(name="HR_SYSTEM", origin_system="HR_SYSTEM")
request, created = request_submit(client=client, batch=validate_create_accounts(payload))
print(request.request_id)
"""


def plain_lines(text: str) -> list[str]:
    """The lines of a stage's stderr that are not JSON log entries."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    return lines


def test_postgresql_restarted_during_a_stage_fails_it_cleanly_and_the_next_run_finishes(private_postgres):
    cluster = private_postgres
    users = 150
    env = private_env(cluster)
    migrated = run_manage("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr

    payload = note_example(businessKey="RESTART", systemList=["idaas", "email"], userList=make_users(users, "R"))
    submitted = subprocess.run([sys.executable, "manage.py", "shell", "-c", SUBMIT_SCRIPT], cwd=PROJECT, env=env,
                               input=json.dumps(payload), capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.strip().splitlines()[-1]
    for stage in ("sync_hr_persons", "create_account_tasks"):
        result = run_manage(stage, env=env)
        assert result.returncode == 0, result.stderr
    assert cluster.scalar("SELECT count(*) FROM syncservice_accountcreationtask") == 2 * users

    slow = private_env(cluster, LOCAL_BACKEND_LATENCY_MS=300, IDAAS_CONCURRENCY=4, MAILBOX_CONCURRENCY=4,
                       TASK_LEASE_SECONDS=4)
    stage = subprocess.Popen([sys.executable, "manage.py", "process_account_creation_tasks"], cwd=PROJECT,
                             env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: cluster.scalar("SELECT count(*) FROM syncservice_taskattempt") >= 10,
                          timeout=60), "the stage made no progress"
        cluster.pg_ctl("restart", "-m", "fast")
        out, err = stage.communicate(timeout=120)
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.communicate()

    # The stage failed, saying so in one line, without a traceback.
    assert stage.returncode != 0, (out, err)
    assert "Traceback" not in out, out
    message = plain_lines(err)
    assert len(message) == 1, err[-5000:]
    assert message[0].startswith("CommandError: process_account_creation_tasks failed: database error"), message
    done_before = cluster.scalar("SELECT count(*) FROM syncservice_accountcreationtask WHERE status = 'succeeded'")
    assert done_before < 2 * users, "the restart came too late to interrupt anything"

    # The failed run is recorded as failed once the database answers again.
    outcomes = dict(cluster.query("SELECT outcome, count(*) FROM taskmanagement_taskrun "
                                  "WHERE stage = 'process_account_creation_tasks' GROUP BY outcome"))
    assert outcomes == {"failed": 1}, outcomes

    # Later runs finish the work: what was in flight waits for its lease, nothing is lost or doubled.
    def finished() -> bool:
        result = run_manage("process_account_creation_tasks", env=private_env(cluster, TASK_LEASE_SECONDS=4))
        assert result.returncode == 0, result.stderr
        return cluster.scalar("SELECT count(*) FROM syncservice_accountcreationtask "
                              "WHERE status <> 'succeeded'") == 0

    assert wait_until(finished, timeout=120, interval=1)
    assert cluster.scalar("SELECT count(*) FROM syncservice_localtargetaccount") == 2 * users
    assert cluster.scalar("SELECT count(DISTINCT (system, employee_number)) "
                          "FROM syncservice_localtargetaccount") == 2 * users
    assert cluster.query(
        "SELECT t.id FROM syncservice_accountcreationtask t LEFT JOIN syncservice_taskattempt a "
        "ON a.task_id = t.id AND a.outcome IN ('created', 'linked') GROUP BY t.id HAVING count(a.id) <> 1") == []
    assert cluster.scalar("SELECT status FROM syncservice_accountcreationrequest WHERE request_id = %s",
                          [request_id]) == "completed"
    assert cluster.scalar("SELECT count(*) FROM syncservice_account WHERE status = 'created'") == 2 * users


# --- kill -9 at random moments across many runs of a multi-process drain ----------------------------------

USERS = 300
SYSTEMS = ["idaas", "welink", "email"]
WORKERS = 3
KILLS = 20
KILL_SEED = 20250121


def open_work() -> int:
    return AccountCreationTask.objects.filter(status__in=["pending", "running", "waiting"]).count()


@pytest.mark.django_db(transaction=True)
def test_workers_killed_at_random_moments_lose_and_duplicate_nothing(hr_caller):
    response = hr_caller.submit(note_example(businessKey="KILL-9", systemList=SYSTEMS,
                                             userList=make_users(USERS, "K")))
    assert response.status_code == 202, response.content
    request_id = response.json()["requestId"]
    # Slow targets, WeLink answering "in progress" first and every mailbox failing once, small batches:
    # every stage, claim, poll and retry is a moment a kill can land in.
    env = subprocess_env(LOCAL_BACKEND_LATENCY_MS=500, IDAAS_CONCURRENCY=3, WELINK_CONCURRENCY=3,
                         MAILBOX_CONCURRENCY=3, LOCAL_WELINK_ASYNC=1, LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT=1,
                         LOCAL_BACKEND_FAILURE_SYSTEMS="email", STAGE_BATCH_SIZE=40, TASK_LEASE_SECONDS=3)
    rng = random.Random(KILL_SEED)
    slots: list[tuple[subprocess.Popen, float] | None] = [None] * WORKERS
    kills, kills_in_flight = 0, 0
    deadline = time.monotonic() + 240
    try:
        while kills < KILLS and time.monotonic() < deadline:
            for index, slot in enumerate(slots):
                if slot is None:
                    worker = manage("run_scheduler", "--interval", "0.2", env=env)
                    slots[index] = (worker, time.monotonic() + rng.uniform(1.5, 5.0))
                    continue
                worker, kill_at = slot
                if worker.poll() is not None:  # a worker must never end by itself
                    out, err = worker.communicate()
                    pytest.fail(f"a worker exited with {worker.returncode}: {out[-2000:]} {err[-3000:]}")
                if time.monotonic() >= kill_at:
                    worker.send_signal(signal.SIGKILL)
                    worker.communicate()
                    kills += 1
                    kills_in_flight += AccountCreationTask.objects.filter(
                        status="running", locked_by=f"{socket.gethostname()}:{worker.pid}").exists()
                    slots[index] = None
            time.sleep(0.05)
    finally:
        for slot in slots:
            if slot is not None:
                slot[0].kill()
                slot[0].communicate()
    assert kills == KILLS
    # Most kills caught a worker with claimed tasks (the rest, one starting up or between stages).
    assert kills_in_flight >= KILLS // 2, f"only {kills_in_flight} of {KILLS} kills caught tasks in flight"

    # Clean workers finish the rest, the killed workers' tasks once their leases expire.
    finishers = [manage("run_scheduler", "--interval", "0.2", env=env) for _ in range(2)]
    try:
        finished = wait_until(lambda: open_work() == 0 and not AccountCreationRequest.objects.filter(
            status__in=["pending", "processing"]).exists(), timeout=180, interval=0.5)
    finally:
        for worker in finishers:
            worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=60) for worker in finishers]
    assert finished, outputs
    assert [worker.returncode for worker in finishers] == [0, 0], outputs

    # Nothing lost: every person, address and account is there; the request completed.
    request = AccountCreationRequest.objects.get(request_id=request_id)
    assert request.status == "completed", request.error_summary
    assert not AccountCreationRequestItem.objects.exclude(status="completed").exists()
    assert HrPerson.objects.count() == USERS
    assert HrPerson.objects.values("email").distinct().count() == USERS
    ours = LocalTargetAccount.objects.filter(employee_number__in=HrPerson.objects.values("employee_number"))
    assert ours.count() == USERS * len(SYSTEMS)
    # Nothing duplicated: one account per (system, person), one open-or-succeeded task per (person, system),
    # and exactly one successful call (created, or linked after a lost result) per task.
    assert not ours.values("system", "employee_number").annotate(n=Count("id")).filter(n__gt=1).exists()
    live = AccountCreationTask.objects.filter(status__in=["pending", "running", "waiting", "succeeded"])
    per_pair = live.values("person_id", "system").annotate(n=Count("id"))
    assert per_pair.count() == USERS * len(SYSTEMS)
    assert not per_pair.filter(n__gt=1).exists()
    successes = AccountCreationTask.objects.annotate(
        ok=Count("attempt_log", filter=Q(attempt_log__outcome__in=["created", "linked"])))
    assert set(successes.values_list("ok", flat=True)) == {1}
    assert TaskAttempt.objects.filter(outcome="created").count() <= USERS * len(SYSTEMS)
    from django.db.models import Max
    print(f"{kills} kills ({kills_in_flight} with tasks in flight); most attempts of one task: "
          f"{AccountCreationTask.objects.aggregate(m=Max('attempts'))['m']}; accounts found already created "
          f"after a lost result: {TaskAttempt.objects.filter(outcome='linked').count()}")
    # Nothing left running once the leases are over.
    assert not AccountCreationTask.objects.filter(status="running").exists()
    assert not AccountCreationTask.objects.exclude(status="succeeded").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("lost_claims,ends", [(4, "succeeded"), (7, "failed")])
def test_claims_lost_with_their_worker_do_not_use_up_attempts(hr_caller, settings, lost_claims, ends):
    """Workers that died holding a task leave claims without results: those are given back (at most
    max_attempts of them) before a transient failure at the limit is judged final."""
    from django.core.management import call_command
    from django.utils import timezone

    from syncservice.backends import reset_backends
    from syncservice.services.provisioning import claim_due_tasks, run_process_stage

    settings.TASK_MAX_ATTEMPTS = 3
    settings.TASK_RETRY_BASE_SECONDS = 0
    settings.LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT = 1
    reset_backends()
    try:
        hr_caller.submit(note_example(systemList=["idaas"], userList=make_users(1, "L")))
        call_command("sync_hr_persons", stdout=io.StringIO())
        call_command("create_account_tasks", stdout=io.StringIO())
        for n in range(lost_claims):  # workers that claimed the task and died before recording anything
            _, claimed = claim_due_tasks(system="idaas", limit=1, worker=f"dead:{n}")
            assert len(claimed) == 1
            AccountCreationTask.objects.update(lease_expires_at=timezone.now() - timezone.timedelta(seconds=1))
        run_process_stage(max_seconds=30)  # an injected transient failure at attempt lost_claims + 1, retried
        task = AccountCreationTask.objects.get()
        outcomes = list(task.attempt_log.order_by("id").values_list("outcome", flat=True))
        numbers = list(task.attempt_log.order_by("id").values_list("attempt_number", flat=True))
        assert numbers == sorted(set(numbers)), numbers  # every call logged under an attempt of its own
        if ends == "succeeded":
            assert (task.status, outcomes) == ("succeeded", ["transient", "created"]), task.last_error
        else:  # more lost claims than max_attempts: a task that keeps killing its workers still ends
            assert (task.status, outcomes) == ("failed", ["transient"])
            assert "gave up after" in task.last_error
    finally:
        reset_backends()
