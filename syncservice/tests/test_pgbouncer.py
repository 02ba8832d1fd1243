"""The stages through Debian's PgBouncer in transaction pooling mode, several copies at once.

PgBouncer runs on a free loopback port with a generated configuration in a temporary folder, in front of
the pytest database. It refuses to run as root: as root it runs as the postgres OS user.
"""

import datetime as dt
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from django.db import connection
from django.db.models import Count

from syncservice.models import AccountCreationRequest, AccountCreationTask, HrPerson, Lease, LocalTargetAccount
from syncservice.simulators import hr as hr_simulator

from .fixtures import make_users, requires_postgres
from .test_concurrency import manage, submit_batches, subprocess_env, wait_until
from .test_process_faults import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

pytestmark = [
    requires_postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(PGBOUNCER), reason="pgbouncer is not installed (apt-get install pgbouncer)"),
]


@pytest.fixture
def pgbouncer():
    """A PgBouncer in transaction mode in front of the test database; yields its DATABASE_URL."""
    db = connection.settings_dict
    # Not under pytest's own temporary folder: that one is private to root, and PgBouncer runs as postgres.
    with tempfile.TemporaryDirectory(prefix="aps-pgbouncer-") as folder:
        yield from _run_pgbouncer(Path(folder), db)


def _run_pgbouncer(root: Path, db: dict):
    port = free_port()
    (root / "userlist.txt").write_text(f'"{db["USER"]}" ""\n')
    (root / "pgbouncer.ini").write_text(f"""
[databases]
{db["NAME"]} = host={db["HOST"] or "127.0.0.1"} port={db["PORT"] or 5432} dbname={db["NAME"]}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root / "userlist.txt"}
pool_mode = transaction
default_pool_size = 4
max_client_conn = 300
logfile = {root / "pgbouncer.log"}
pidfile = {root / "pgbouncer.pid"}
admin_users = {db["USER"]}
""")
    as_owner = {}
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: the child itself becomes postgres (no wrapper
        # process that a signal would not pass through)
        as_owner = {"user": "postgres", "group": "postgres", "extra_groups": []}
        for path in [root, *root.iterdir()]:
            shutil.chown(path, "postgres", "postgres")
    proc = subprocess.Popen([PGBOUNCER, str(root / "pgbouncer.ini")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **as_owner)
    url = f"postgres://{db['USER']}@127.0.0.1:{port}/{db['NAME']}"

    def ready() -> bool:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user=db["USER"], dbname=db["NAME"]).close()
            return True
        except psycopg2.OperationalError:
            return proc.poll() is not None

    assert wait_until(ready, timeout=20, interval=0.1)
    assert proc.poll() is None, proc.stdout.read()
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # PgBouncer's "shut down now", its server connections closed
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pooled_env(url: str, **extra) -> dict:
    return {**subprocess_env(**extra), "DATABASE_URL": url, "DATABASE_DISABLE_SERVER_SIDE_CURSORS": "1",
            "DATABASE_CONN_MAX_AGE": "0"}


def advisory_locks_held() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        return cursor.fetchone()[0]


def test_the_whole_pipeline_through_pgbouncer_with_three_copies_of_each_stage(hr_caller, pgbouncer):
    ids = submit_batches(hr_caller, count=4, size=60, prefix="PB")
    env = pooled_env(pgbouncer, LOCAL_BACKEND_LATENCY_MS=5, STAGE_BATCH_SIZE=40, WELINK_MAX_CONCURRENCY=2,
                     IDAAS_MAX_CONCURRENCY=3)
    stages = ["sync_hr_persons", "create_account_tasks", "process_account_creation_tasks"]

    def one_round() -> bool:
        for name in stages:
            copies = [manage(name, env=env) for _ in range(3)]
            for copy in copies:
                out, err = copy.communicate(timeout=180)
                assert copy.returncode == 0, (name, out, err)
        return not AccountCreationRequest.objects.filter(status__in=["pending", "processing"]).exists()

    assert wait_until(one_round, timeout=300, interval=0)
    statuses = set(AccountCreationRequest.objects.filter(request_id__in=ids).values_list("status", flat=True))
    assert statuses == {"completed"}
    assert HrPerson.objects.count() == 240
    assert HrPerson.objects.values("email").distinct().count() == 240
    assert not (AccountCreationTask.objects.values("person_id", "system").annotate(n=Count("id"))
                .filter(n__gt=1).exists())
    assert LocalTargetAccount.objects.count() == 720
    assert not (LocalTargetAccount.objects.values("system", "employee_number").annotate(n=Count("id"))
                .filter(n__gt=1).exists())
    assert advisory_locks_held() == 0
    assert not Lease.objects.exclude(holder="").exists()
    assert Lease.objects.filter(scope="target-slot:welink").count() == 2


class SlowHr(hr_simulator.HrSimulator):
    """Answers every page slowly and remembers how many pages it was serving at once."""

    def __init__(self, **options):
        super().__init__(**options)
        self.serving = 0
        self.most_at_once = 0
        self.count_lock = threading.Lock()

    def handle(self, request):
        with self.count_lock:
            self.serving += 1
            self.most_at_once = max(self.most_at_once, self.serving)
        try:
            time.sleep(0.4)
            return super().handle(request)
        finally:
            with self.count_lock:
                self.serving -= 1


def test_hr_syncs_through_pgbouncer_never_run_at_once(pgbouncer):
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    app = SlowHr(token="hr-token")
    for index, user in enumerate(make_users(30, "HRP")):
        app.upsert_person(person_id=1000 + index, employee_number=user["employeeNumber"],
                          full_name=user["employeeName"], last_update_date=start + dt.timedelta(minutes=index))
    server, url = hr_simulator.start_server(app, 0)
    try:
        env = pooled_env(pgbouncer, HR_BACKEND="http", HR_API_URL=url, HR_API_TOKEN="hr-token", STAGE_BATCH_SIZE=5)
        for _ in range(2):
            copies = [manage("sync_hr_persons", env=env) for _ in range(3)]
            outputs = [copy.communicate(timeout=120) for copy in copies]
            assert [copy.returncode for copy in copies] == [0, 0, 0], outputs
            assert sum("skipped: another copy holds its lock" in out for out, _ in outputs) >= 1, outputs
    finally:
        hr_simulator.stop(server)
    assert app.most_at_once == 1
    assert HrPerson.objects.count() == 30
    assert advisory_locks_held() == 0
    assert not Lease.objects.exclude(holder="").exists()

