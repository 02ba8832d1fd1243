"""Profiles behind docs/performance.md's "What the benchmarks changed": where the time of each workload goes.

    .venv/bin/python -m bench.profile            # writes bench/profile.txt (4-7 minutes)
    .venv/bin/python -m bench.profile querylog N # both stages at N users with a query log only
    .venv/bin/python -m bench.profile explain N  # EXPLAIN ANALYZE of the stages' batch selects at N items

For each workload it records a cProfile of the service code and a query log (time and count per kind of
statement, measured with a connection execute wrapper). The process stage runs in a real worker subprocess,
reported per thread: the main thread, which claims, and the recorder thread, which writes the results. It
also EXPLAINs the claim query against a 30,000-task backlog. Not part of `make bench` (profiling slows
everything down; the table must not include it).
"""

import cProfile
import io
import json
import pstats
import re
import subprocess
import sys
import time
from collections import defaultdict

from . import common

_literal_re = re.compile(r"(\d+|'[^']*')")


class QueryLog:
    """Total time and count per statement kind (the SQL with its literals and IN lists folded)."""

    def __init__(self):
        self.kinds = defaultdict(lambda: [0, 0.0])

    def __call__(self, execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            key = _literal_re.sub("?", re.sub(r"\((?:%s, )*%s\)", "(…)", re.sub(r"\s+", " ", sql)))
            key = re.sub(r"(, \(…\))+", ", …", key)
            entry = self.kinds[key[:150]]
            entry[0] += 1
            entry[1] += time.perf_counter() - start

    def report(self, top: int = 12) -> str:
        rows = sorted(self.kinds.items(), key=lambda kv: -kv[1][1])[:top]
        total = sum(v[1] for v in self.kinds.values())
        lines = [f"  queries: {sum(v[0] for v in self.kinds.values())}, {total:.2f} s waiting on PostgreSQL"]
        lines += [f"  {v[1]:7.2f} s {v[0]:6d}×  {k}" for k, v in rows]
        return "\n".join(lines)


def profile_report(profiler: cProfile.Profile, top: int = 28) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(r"syncservice|taskmanagement|query\.py.*(bulk_update|bulk_create|update)|"
                                                r"compiler\.py.*execute_sql|expressions\.py.*resolve_expression", top)
    text = out.getvalue()
    keep = [line for line in text.splitlines() if line.strip() and not line.startswith(("   Ordered", "   List"))]
    return "\n".join("  " + line.replace(str(common.PROJECT) + "/", "").replace(
        str(common.PROJECT / ".venv/lib/python3.11/site-packages") + "/", "") for line in keep[1:])


def in_process(label: str, func) -> str:
    from django.db import connection

    log = QueryLog()
    profiler = cProfile.Profile()
    with connection.execute_wrapper(log):
        start = time.perf_counter()
        profiler.enable()
        func()
        profiler.disable()
        seconds = time.perf_counter() - start
    return f"== {label}: {seconds:.2f} s under the profiler\n{log.report()}\n{profile_report(profiler)}\n"


def worker_main() -> None:
    """Subprocess: one process_account_creation_tasks run under cProfile with a query log, reported for its
    main thread (claims, hand-outs, lease upkeep) and its recorder thread (results, attempts, accounts,
    roll-ups) separately; the backend threads are not profiled."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from syncservice.queue import executor

    recorded = []
    run_recorder = executor.Recorder._run

    def profiled_run(self):
        log, profiler = QueryLog(), cProfile.Profile()
        with connection.execute_wrapper(log):  # the recorder thread's own connection
            start = time.perf_counter()
            profiler.enable()
            try:
                run_recorder(self)
            finally:
                profiler.disable()
                recorded.append(f"== process_account_creation_tasks (recorder thread: results, attempts, "
                                f"accounts, roll-ups): {time.perf_counter() - start:.2f} s alive\n"
                                f"{log.report()}\n{profile_report(profiler)}\n")

    executor.Recorder._run = profiled_run
    print(in_process("process_account_creation_tasks (main thread: claims, lease upkeep)",
                     lambda: call_command("process_account_creation_tasks", stdout=io.StringIO())))
    print("\n".join(recorded))


def explain_statement(run, starts_with: str) -> str:
    """EXPLAIN ANALYZE of the statement beginning with `starts_with` that run() executes, caught on its way
    out; run() then goes on as usual, and everything is rolled back."""
    from django.db import connection, transaction

    plans = []

    def explain_first(execute, sql, params, many, context):
        if not sql.lstrip().startswith(starts_with):
            return execute(sql, params, many, context)
        raw = context["cursor"].cursor
        raw.execute("SAVEPOINT bench_explain")
        raw.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        plans.append("\n".join("  " + row[0] for row in raw.fetchall()))
        raw.execute("ROLLBACK TO SAVEPOINT bench_explain")
        return execute(sql, params, many, context)

    with transaction.atomic():
        with connection.execute_wrapper(explain_first):
            run()
        transaction.set_rollback(True)
    return plans[-1]


def explain_claim(users: int) -> str:
    from syncservice.services.provisioning import claim_due_tasks

    plan = explain_statement(
        lambda: claim_due_tasks(system="idaas", limit=256, worker="bench-explain", expire=False), "WITH picked")
    return (f"== the claim statement of claim_due_tasks (256 tasks) with {3 * users:,} due tasks "
            f"({users:,} per system)\n{plan}\n")


def explain_stage_selects(users: int) -> str:
    """The row selection of each stage batch, against a backlog of `users` items."""
    from django.conf import settings
    from django.core.management import call_command

    from syncservice.models import AccountCreationRequestItem as Item
    from syncservice.services.batches import lock_items_by_request_priority
    from syncservice.services.sync import claim_pending_requests

    common.reset_service_data()
    common.load_requests_orm(users, prefix="S")
    while claim_pending_requests():
        pass
    common.analyze()
    size = settings.STAGE_BATCH_SIZE

    def select(status):
        return explain_statement(lambda: lock_items_by_request_priority(status, size), "SELECT i.*")

    out = [f"== the batch select of _sync_items_batch ({size:,} items) with {users:,} pending items\n"
           f"{select(Item.Status.PENDING)}\n"]
    call_command("sync_hr_persons", stdout=io.StringIO())
    common.analyze()
    out.append(f"== the batch select of _tasks_for_items_batch ({size:,} items) with {users:,} synced items\n"
               f"{select(Item.Status.SYNCED)}\n")
    return "\n".join(out)


def stage_query_logs(users: int) -> str:
    """Both stages at `users` users with only the query log (no profiler): which statements grow with N."""
    from django.core.management import call_command
    from django.db import connection

    common.reset_service_data()
    common.load_requests_orm(users, prefix="S")
    common.analyze()
    out = []
    for stage in ("sync_hr_persons", "create_account_tasks"):
        log = QueryLog()
        with connection.execute_wrapper(log):
            start = time.perf_counter()
            call_command(stage, stdout=io.StringIO())
            seconds = time.perf_counter() - start
        out.append(f"== {stage}, {users:,} users: {seconds:.1f} s (query log only)\n{log.report(8)}\n")
    return "\n".join(out)


def main() -> int:
    common.setup_django()
    from django.core.management import call_command

    from . import intake, provisioning

    sections = [f"machine: {json.dumps(common.machine())}\n"]

    common.reset_service_data()
    client, token = common.bench_client()
    from django.test import Client

    http = Client()
    people = common.make_users(1000, "PROF")
    bodies = [json.dumps(common.make_payload(people, f"prof-{i}"), ensure_ascii=False).encode() for i in range(10)]
    sections.append(in_process("10 create_accounts POSTs of 1,000 users",
                               lambda: [intake.post_batch(http, token, b) for b in bodies]))

    users = 5000
    common.reset_service_data()
    common.load_requests_orm(users, prefix="S")
    common.analyze()
    sections.append(in_process(f"sync_hr_persons, {users:,} users",
                               lambda: call_command("sync_hr_persons", stdout=io.StringIO())))
    sections.append(in_process(f"create_account_tasks, {users:,} users",
                               lambda: call_command("create_account_tasks", stdout=io.StringIO())))

    for label, env in (("no-op backend", provisioning.NOOP_ENV),
                       ("local backends, 50 ms", {"LOCAL_BACKEND_LATENCY_MS": 50})):
        provisioning.prepare_tasks(1000)
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "bench.profile", "worker"], cwd=common.PROJECT,
                             env=common.subprocess_env(**env), capture_output=True, text=True, check=True)
        sections.append(f"[worker with {label}, 3,000 tasks, {time.perf_counter() - start:.1f} s wall]\n"
                        + run.stdout)

    provisioning.prepare_tasks(10_000)
    sections.append(explain_claim(10_000))
    sections.append(explain_stage_selects(30_000))
    sections.append(stage_query_logs(10_000))
    sections.append(stage_query_logs(40_000))

    text = "\n".join(sections)
    # Kept in the tree next to the code (docs/performance.md quotes it), unlike results/.
    (common.BENCH / "profile.txt").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        worker_main()
    elif sys.argv[1:2] == ["querylog"]:
        common.setup_django()
        print(stage_query_logs(int(sys.argv[2])))
    elif sys.argv[1:2] == ["explain"]:
        common.setup_django()
        from . import provisioning as _provisioning

        users = int(sys.argv[2])
        _provisioning.prepare_tasks(users // 3)
        print(explain_claim(users // 3))
        print(explain_stage_selects(users))
    else:
        sys.exit(main())
