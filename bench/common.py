"""Shared set-up of the benchmark: its own PostgreSQL databases, the environment, data and measuring helpers.

Nothing here is imported by the service. The harness owns two databases on the local PostgreSQL server
(``aps_bench`` for the service, ``aps_bench_procrastinate`` for the peer of workload 4); it creates them,
migrates them and truncates them between workloads. It never touches any other database.
"""

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
BENCH = PROJECT / "bench"
RESULTS = BENCH / "results"

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("BENCH_PG_PORT", "5432")
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
DB_NAME = os.environ.get("BENCH_DB_NAME", "aps_bench")
PEER_DB_NAME = os.environ.get("BENCH_PEER_DB_NAME", "aps_bench_procrastinate")
FORBIDDEN_DB_NAMES = {"provisioning", "helper_backends", "helper_notify", "postgres", "template0", "template1"}
if DB_NAME in FORBIDDEN_DB_NAMES or PEER_DB_NAME in FORBIDDEN_DB_NAMES:
    raise SystemExit(f"bench: refusing to use database {DB_NAME!r}/{PEER_DB_NAME!r}: pick a bench-only name")


class QueryCounter:
    """A connection execute wrapper (`with connection.execute_wrapper(counter):`) that counts statements."""

    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def pg_url(name: str) -> str:
    return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


# The service's environment for the whole run (in-process and every worker subprocess). Production-like:
# DEBUG off (no query log kept in memory), the default batch size and concurrency.
BENCH_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "DATABASE_URL": pg_url(DB_NAME),
    "DJANGO_SECRET_KEY": "bench-only-secret-key-not-used-anywhere-else-0123456789",
    "DJANGO_DEBUG": "0",
    "DJANGO_ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
    "DJANGO_SECURE_SSL_REDIRECT": "0",
    "LOG_LEVEL": "WARNING",
    "LOCAL_BACKEND_LATENCY_MS": "0",
    "PROCESS_STAGE_MAX_SECONDS": "3600",
    "TASK_LEASE_SECONDS": "3600",
    # Intake scale: the API's own 1,000-user limit stays; bigger volumes are sent as several requests.
}


def apply_env() -> None:
    for key, value in BENCH_ENV.items():
        os.environ[key] = value
    for key in ("IDAAS_BACKEND", "WELINK_BACKEND", "MAILBOX_BACKEND", "HR_BACKEND", "LOCAL_HR_PERSONS_FILE",
                "LOCAL_WELINK_ASYNC", "LOCAL_BACKEND_TRANSIENT_FAILURE_RATE",
                "LOCAL_BACKEND_PERMANENT_FAILURE_RATE", "LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT",
                "LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN"):
        os.environ.pop(key, None)
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))


def admin_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname)
    conn.autocommit = True
    return conn


def ensure_database(name: str) -> bool:
    """Create the database if it is missing; return True when it was created."""
    assert name not in FORBIDDEN_DB_NAMES
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cur.fetchone():
                return False
            cur.execute(f'CREATE DATABASE "{name}"')
            return True
    finally:
        conn.close()


def drop_database(name: str) -> None:
    assert name not in FORBIDDEN_DB_NAMES
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def setup_django() -> None:
    """Create and migrate the bench database, then set Django up in this process."""
    apply_env()
    ensure_database(DB_NAME)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=PROJECT, check=True,
                   env={**os.environ})
    import django

    django.setup()


def service_tables() -> list[str]:
    from django.apps import apps

    tables = []
    for label in ("syncservice", "taskmanagement"):
        for model in apps.get_app_config(label).get_models():
            if not model._meta.proxy and model._meta.managed:
                tables.append(model._meta.db_table)
    return tables


def reset_service_data() -> None:
    """Empty every table of the service (fresh data for the next workload), then VACUUM ANALYZE them."""
    from django.db import connection

    tables = service_tables()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    analyze()


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in service_tables():
            cursor.execute(f'ANALYZE "{table}"')


def checkpoint() -> None:
    """Flush dirty pages now, so that a checkpoint does not land in the middle of the next measurement."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")


class Rewind:
    """Put back what a process run changed, so that the same sample of tasks can be measured again.

    Copies the tables a run updates (tasks, accounts, items, requests; every row has `updated_at`) into
    bench-only tables; `rewind()` restores the rows whose `updated_at` moved and deletes the rows the run
    added (attempts, notifications, run records). Both vacuum, analyze and checkpoint, so that every run,
    the first included, finds the same rows without dead versions in its way. `close()` drops the copies.
    """

    UPDATED = ("syncservice_accountcreationtask", "syncservice_account", "syncservice_accountcreationrequestitem",
               "syncservice_accountcreationrequest")
    ADDED = ("syncservice_taskattempt", "syncservice_notification", "taskmanagement_taskrun")

    def __init__(self):
        from django.db import connection

        self.columns, self.last_ids = {}, {}
        with connection.cursor() as cursor:
            for table in self.UPDATED:
                cursor.execute(f'DROP TABLE IF EXISTS "bench_copy_{table}"')
                cursor.execute(f'CREATE UNLOGGED TABLE "bench_copy_{table}" AS SELECT * FROM "{table}"')
                cursor.execute(f'CREATE UNIQUE INDEX ON "bench_copy_{table}" (id)')
                self.columns[table] = [c.name for c in connection.introspection.get_table_description(cursor, table)
                                       if c.name != "id"]
            for table in self.ADDED:
                cursor.execute(f'SELECT coalesce(max(id), 0) FROM "{table}"')
                self.last_ids[table] = cursor.fetchone()[0]
        self._settle()

    def _settle(self) -> None:
        """The first run finds what every later run finds: no dead row versions, fresh statistics, no
        dirty pages from the set-up waiting for a checkpoint."""
        from django.db import connection

        with connection.cursor() as cursor:
            for table in (*self.ADDED, *self.UPDATED):
                cursor.execute(f'VACUUM ANALYZE "{table}"')
        checkpoint()

    def rewind(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            for table in self.ADDED:
                cursor.execute(f'DELETE FROM "{table}" WHERE id > %s', [self.last_ids[table]])
            for table, columns in self.columns.items():
                names = ", ".join(f'"{c}"' for c in columns)
                copied = ", ".join(f'c."{c}"' for c in columns)
                cursor.execute(f'UPDATE "{table}" AS t SET ({names}) = ({copied}) FROM "bench_copy_{table}" AS c '
                               f"WHERE t.id = c.id AND t.updated_at IS DISTINCT FROM c.updated_at")
        self._settle()

    def close(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            for table in self.UPDATED:
                cursor.execute(f'DROP TABLE IF EXISTS "bench_copy_{table}"')


# --- Data ---------------------------------------------------------------------------------------

SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
            "姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
COMPOUND_SURNAMES = ["欧阳", "司马", "上官", "诸葛", "东方", "慕容"]
GIVEN = ("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕鹏辉建国志宏俊峰文博宇浩然子轩梓涵"
         "一诺欣怡雨泽晨阳思远佳琪嘉怡梦琪振华永庆德胜海燕春梅秋菊冬雪晓东晓明丹丹婷婷亮亮")


def person_name(rng: random.Random) -> str:
    surname = rng.choice(COMPOUND_SURNAMES) if rng.random() < 0.02 else rng.choice(SURNAMES)
    return surname + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2, 2))))


def make_users(count: int, prefix: str, seed: int = 7) -> list[dict]:
    """`count` valid users for a create_accounts payload, employee numbers unique under `prefix`."""
    rng = random.Random(f"{seed}:{prefix}")
    users = []
    for i in range(count):
        users.append({
            "employeeNumber": f"{prefix}{i:07d}",
            "employeeName": person_name(rng),
            "departmentCode": f"D{rng.randrange(1, 400):04d}",
            "phoneNumber": f"1{rng.choice('3456789')}{rng.randrange(0, 10**9):09d}",
            "partnerCompany": rng.choice(["测试公司", "华为技术有限公司", "供应商甲", ""]),
            "country": "中国",
        })
    return users


def make_payload(users: list[dict], business_key: str, systems=("idaas", "welink", "email")) -> dict:
    return {
        "originSystem": "BENCH_HR",
        "businessKey": business_key,
        "accountType": "供应商",
        "employeeType": "1",
        "systemList": list(systems),
        "userList": users,
    }


def bench_client(origin: str = "BENCH_HR"):
    """An origin API client with a fresh token: (client, token)."""
    from syncservice.models import ApiClient

    client = ApiClient.objects.filter(name=f"bench-{origin}").first()
    if client is None:
        client = ApiClient(name=f"bench-{origin}", origin_system=origin)
    token = client.set_new_token()
    # The client keeps the default inbound rate limit (API_THROTTLE_RATE): its bookkeeping is part of the
    # measured stack, and the bench stays well under it.
    client.save()
    return client, token


def load_requests_orm(total_users: int, *, per_request: int = 1000, prefix: str = "S",
                      systems=("idaas", "welink", "email")) -> None:
    """Fill the buffer with pending requests quickly (set-up, not measured), through the intake service."""
    from syncservice.services.intake import request_submit
    from syncservice.validation import validate_create_accounts

    client, _ = bench_client()
    users = make_users(total_users, prefix)
    for start in range(0, total_users, per_request):
        chunk = users[start:start + per_request]
        batch = validate_create_accounts(make_payload(chunk, f"{prefix}-{start}", systems))
        request_submit(client=client, batch=batch)


# --- Measuring ----------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values):
    return statistics.median(values) if values else float("nan")


def subprocess_env(**extra) -> dict:
    env = {**os.environ, **BENCH_ENV}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launched(argv: list[str]) -> list[str]:
    """argv run through bench/launch.py, which reports the command's own peak RSS."""
    return [sys.executable, "-S", str(BENCH / "launch.py"), *argv]


def start_measured(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(launched(argv), cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def run_measured(argv: list[str], env: dict, *, timeout: float = 3600) -> dict:
    """Run a subprocess; return wall seconds, its peak RSS (MiB), and its output."""
    start = time.perf_counter()
    return wait_measured(start_measured(argv, env), start, timeout=timeout)


def wait_measured(proc: subprocess.Popen, start: float, *, timeout: float = 3600) -> dict:
    deadline = start + timeout
    output = b""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        if time.perf_counter() > deadline:
            proc.kill()
            raise RuntimeError(f"bench: {proc.args} ran longer than {timeout} s")
        for _key, _ in sel.select(timeout=0.5):
            chunk = os.read(proc.stdout.fileno(), 65536)
            output += chunk
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            output += proc.stdout.read() or b""
            break
    sel.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    text = output.decode("utf-8", "replace").rstrip()
    maxrss_kib = usage.ru_maxrss
    head, _, last = text.rpartition("\n")
    if last.startswith("BENCH_MAXRSS_KIB="):
        maxrss_kib, text = int(last.split("=", 1)[1]), head
    if proc.returncode != 0:
        raise RuntimeError(f"bench: {' '.join(map(str, proc.args))} exited {proc.returncode}:\n{text[-3000:]}")
    return {"wall_s": wall, "maxrss_mib": maxrss_kib / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "output": text.strip()}


def manage(*args: str) -> list[str]:
    return [sys.executable, "manage.py", *args]


# --- The machine --------------------------------------------------------------------------------

def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
        cursor.execute("SHOW synchronous_commit")
        sync_commit = cursor.fetchone()[0]
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
    import django

    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(), "cpu": model, "memory_gib": mem_gib, "python": platform.python_version(),
        "django": django.get_version(), "postgresql": pg_version, "synchronous_commit": sync_commit,
        "shared_buffers": shared_buffers, "os": platform.platform(),
    }


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (/proc/stat, first line): user nice system idle iowait irq softirq steal."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None


def cpu_share(before: list[int] | None, after: list[int] | None) -> dict | None:
    """How the machine's CPU time went between two readings: busy (ours and everyone's), idle, stolen by the host."""
    if not before or not after:
        return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta) or 1
    user, nice, system, idle, iowait, irq, softirq, steal = delta
    return {"busy": (user + nice + system + irq + softirq) / total, "idle": (idle + iowait) / total,
            "steal": steal / total}


def save_json(name: str, data) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def connection_headroom() -> int:
    """Connections still free on the server (others' test suites share it)."""
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('max_connections')::int "
                        "- current_setting('superuser_reserved_connections')::int "
                        "- (SELECT count(*) FROM pg_stat_activity)")
            return cur.fetchone()[0]
    finally:
        conn.close()


def wait_for_connections(needed: int, *, patience: float = 120) -> int:
    """Wait (bounded) until `needed` connections are free; return the headroom seen (never raises)."""
    deadline = time.monotonic() + patience
    headroom = connection_headroom()
    while headroom < needed and time.monotonic() < deadline:
        time.sleep(1)
        headroom = connection_headroom()
    if headroom < needed:
        print(f"bench: warning: only {headroom} PostgreSQL connections free, {needed} wanted", file=sys.stderr)
    return headroom
