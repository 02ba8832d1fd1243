"""Workloads 3 and 4: process_account_creation_tasks as real worker subprocesses.

Set-up (not timed): N users through intake, sync_hr_persons and create_account_tasks, so that 3·N pending
tasks are due. Then W copies of ``python manage.py process_account_creation_tasks`` start at once with the
bench environment plus the workload's variables (local backends with LOCAL_BACKEND_LATENCY_MS=50, or the
no-op backend of bench/noop_backend.py). Throughput is read back from the database:

- window rate: tasks ÷ (last task finished_at − first attempt started_at), the steady state of the
  claim-call-record loop, without interpreter and Django start-up;
- wall rate: tasks ÷ (last worker exit − spawn), start-up included (shown for information).
"""

import io
import subprocess
import sys
import time

from . import common

NOOP = "bench.noop_backend.NoopBackend"
NOOP_ENV = {"IDAAS_BACKEND": NOOP, "WELINK_BACKEND": NOOP, "MAILBOX_BACKEND": NOOP}


def prepare_tasks(users: int, prefix: str = "P") -> int:
    from django.core.management import call_command

    from syncservice.models import AccountCreationTask

    common.reset_service_data()
    common.load_requests_orm(users, prefix=prefix)
    call_command("sync_hr_persons", stdout=io.StringIO())
    call_command("create_account_tasks", stdout=io.StringIO())
    common.analyze()
    common.checkpoint()
    # IDaaS and WeLink tasks wait for the person's mailbox (blocked) until it exists.
    due = AccountCreationTask.objects.filter(status__in=["pending", "blocked"]).count()
    if due != users * 3:
        raise RuntimeError(f"bench: expected {users * 3} open tasks, found {due}")
    return due


def window() -> dict:
    from django.db.models import Avg, Max, Min

    from syncservice.models import AccountCreationTask, TaskAttempt

    tasks = AccountCreationTask.objects.filter(status="succeeded").aggregate(end=Max("finished_at"))
    attempts = TaskAttempt.objects.aggregate(start=Min("started_at"), call_ms=Avg("duration_ms"))
    errors = list(AccountCreationTask.objects.exclude(last_error="").values_list("last_error", flat=True)
                  .distinct()[:3])
    return {
        "succeeded": AccountCreationTask.objects.filter(status="succeeded").count(),
        "not_succeeded": AccountCreationTask.objects.exclude(status="succeeded").count(),
        "attempts": TaskAttempt.objects.count(),
        "window_s": (tasks["end"] - attempts["start"]).total_seconds() if tasks["end"] else float("nan"),
        "errors": errors,
        # Mean time of one backend call as the worker thread saw it (latency + the thread's own DB work).
        "avg_call_ms": float(attempts["call_ms"] or 0),
    }


def connections_per_worker() -> int:
    """A worker holds three connections: its main thread's, the recorder's, and one its backend threads share
    (workload 6 measures it)."""
    return 3


def run_workers(workers: int, env_extra: dict, *, expected: int, timeout: float = 1800,
                extra_args: list[str] = ()) -> dict:
    env = common.subprocess_env(**env_extra)
    common.wait_for_connections(workers * connections_per_worker() + 5)
    argv = common.manage("process_account_creation_tasks", *extra_args)
    start = time.perf_counter()
    procs = [common.start_measured(argv, env) for _ in range(workers)]
    runs = [common.wait_measured(p, start, timeout=timeout) for p in procs]
    wall = time.perf_counter() - start
    seen = window()
    if seen["succeeded"] != expected:
        raise RuntimeError(f"bench: {seen['succeeded']} of {expected} tasks succeeded; errors {seen['errors']}; "
                           + " | ".join(r["output"][-500:] for r in runs))
    return {
        "workers": workers, "tasks": expected, "wall_s": wall, **seen,
        "window_rate": expected / seen["window_s"], "wall_rate": expected / wall,
        "maxrss_mib": max(r["maxrss_mib"] for r in runs), "outputs": [r["output"][-300:] for r in runs],
        # CPU time of the worker processes (start-up included), per task: what a second worker competes for.
        "worker_cpu_ms_per_task": sum(r["cpu_s"] for r in runs) * 1000 / expected,
    }


def ideal_rate(latency_ms: int) -> tuple[float, dict]:
    from django.conf import settings

    concurrency = dict(settings.BACKEND_CONCURRENCY)
    return sum(concurrency.values()) / (latency_ms / 1000), concurrency


THROUGHPUT_ROUNDS = 3  # odd: the median is one of the runs


def median_run(runs: list[dict]) -> dict:
    assert len(runs) % 2 == 1
    return sorted(runs, key=lambda run: run["window_rate"])[len(runs) // 2]


def throughput(users: int = 1000, latency_ms: int = 50, rounds: int = THROUGHPUT_ROUNDS) -> dict:
    """Workload 3: local backends with injected latency; one worker, then two, `rounds` times in turn on fresh
    tasks each time, so that both see the same stretch of the machine; the median run of each counts."""
    env = {"LOCAL_BACKEND_LATENCY_MS": latency_ms}
    ideal, concurrency = ideal_rate(latency_ms)
    threads = sum(concurrency.values())
    ones, twos = [], []
    for _ in range(rounds):
        for workers, runs in ((1, ones), (2, twos)):
            tasks = prepare_tasks(users)
            run = run_workers(workers, env, expected=tasks)
            # Share of the time the backend threads spent inside calls: 1.0 means they never waited for work.
            run["thread_busy"] = run["tasks"] * run["avg_call_ms"] / 1000 / (run["window_s"] * threads * workers)
            runs.append(run)
    one, two = median_run(ones), median_run(twos)
    return {
        "users": users, "latency_ms": latency_ms, "concurrency": concurrency, "ideal_rate": ideal,
        "rounds": rounds, "one": one, "two": two,
        "one_rates": [run["window_rate"] for run in ones], "two_rates": [run["window_rate"] for run in twos],
        "one_vs_ideal": one["window_rate"] / ideal, "two_vs_one": two["window_rate"] / one["window_rate"],
        "one_vs_ideal_wall": one["wall_rate"] / ideal, "two_vs_one_wall": two["wall_rate"] / one["wall_rate"],
    }


# --- Workload 4's peer: procrastinate, in its own virtualenv and database -------------------------

def peer_python() -> str:
    path = common.BENCH / ".venv-peer" / "bin" / "python"
    if not path.exists():
        raise RuntimeError("bench: bench/.venv-peer is missing; run `make bench` (it installs bench/requirements.txt)")
    return str(path)


def peer_env() -> dict:
    dsn = f"postgresql://{common.PG_USER}@{common.PG_HOST}:{common.PG_PORT}/{common.PEER_DB_NAME}"
    env = {k: v for k, v in common.subprocess_env().items() if not k.startswith("DJANGO")}
    env["BENCH_PROCRASTINATE_DSN"] = dsn
    return env


def peer_prepare(jobs: int) -> None:
    common.drop_database(common.PEER_DB_NAME)
    common.ensure_database(common.PEER_DB_NAME)
    env = peer_env()
    subprocess.run([peer_python(), "-m", "procrastinate", "--app=bench.procrastinate_app.app", "schema", "--apply"],
                   cwd=common.PROJECT, env=env, check=True, capture_output=True)
    subprocess.run([peer_python(), "-m", "bench.procrastinate_app", "defer", str(jobs)],
                   cwd=common.PROJECT, env=env, check=True, capture_output=True)
    conn = common.admin_connect(common.PEER_DB_NAME)
    with conn.cursor() as cur:
        cur.execute("ANALYZE")
        cur.execute("CHECKPOINT")
    conn.close()


def peer_window() -> dict:
    conn = common.admin_connect(common.PEER_DB_NAME)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
            succeeded = cur.fetchone()[0]
            cur.execute("SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded') "
                        "- min(at) FILTER (WHERE type = 'started')) FROM procrastinate_events")
            window_s = float(cur.fetchone()[0])
    finally:
        conn.close()
    return {"succeeded": succeeded, "window_s": window_s}


def peer_run(workers: int, jobs: int, concurrency: int) -> dict:
    peer_prepare(jobs)
    common.wait_for_connections(workers * 3 + 5)
    argv = [peer_python(), "-m", "procrastinate", "--app=bench.procrastinate_app.app", "worker",
            "--one-shot", "--queues=bench", f"--concurrency={concurrency}"]
    start = time.perf_counter()
    procs = [common.start_measured(argv, peer_env()) for _ in range(workers)]
    runs = [common.wait_measured(p, start, timeout=900) for p in procs]
    wall = time.perf_counter() - start
    seen = peer_window()
    if seen["succeeded"] != jobs:
        raise RuntimeError(f"bench: procrastinate finished {seen['succeeded']} of {jobs} jobs: "
                           + " | ".join(r["output"][-500:] for r in runs))
    return {"workers": workers, "jobs": jobs, "concurrency": concurrency, "wall_s": wall, **seen,
            "window_rate": jobs / seen["window_s"], "wall_rate": jobs / wall,
            "maxrss_mib": max(r["maxrss_mib"] for r in runs)}


def claim_overhead(users: int = 10_000, workers: int = 1, peer_concurrencies=(24,)) -> dict:
    """Workload 4: our claim-and-complete loop with a no-op backend vs procrastinate's no-op jobs.

    The same number of tasks and jobs (3 per user) and worker processes on each side. 30,000 of ours take a
    few seconds: enough that one stall of the machine does not decide the ratio.
    """
    tasks = users * 3
    prepare_tasks(users)
    ours = run_workers(workers, NOOP_ENV, expected=tasks)
    peers = [peer_run(workers, tasks, c) for c in peer_concurrencies]
    best = max(peers, key=lambda p: p["window_rate"])
    return {"users": users, "tasks": tasks, "workers": workers, "ours": ours, "peers": peers, "peer": best,
            "ratio": ours["window_rate"] / best["window_rate"],
            "ratio_wall": ours["wall_rate"] / max(p["wall_rate"] for p in peers)}


if __name__ == "__main__":  # pragma: no cover - a manual check
    common.setup_django()
    print(throughput() if sys.argv[1:] == ["throughput"] else claim_overhead())
