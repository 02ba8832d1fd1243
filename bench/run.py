"""`make bench` / `make bench-large`: run the five workloads of issue 7 and print one table of ratios.

    .venv/bin/python -m bench.run            # 1k and 10k users (make bench, ~10 minutes on 2 cores)
    .venv/bin/python -m bench.run --large    # adds the 100k-user scale point (make bench-large)
    .venv/bin/python -m bench.run --quick    # small sizes, to check the harness itself (numbers meaningless)

Every ratio compares two things measured in this run, on this machine, against the same PostgreSQL: the
machine is noisy, absolute numbers are not comparable between runs. Raw results go to bench/results/.
"""

import argparse
import datetime as dt
import sys
import time

from . import common

TOLERANCE = 1.2  # "linear or better" allows 20 % of noise over the linear prediction


_T0 = time.perf_counter()


def log(message: str) -> None:
    elapsed = time.perf_counter() - _T0
    print(f"[bench {int(elapsed // 60)}:{int(elapsed % 60):02d}] {message}", file=sys.stderr, flush=True)


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def growth_rows(label: str, small: dict, big: dict) -> list[tuple]:
    n1, n2 = small["users"], big["users"]
    factor = n2 / n1
    k = lambda n: f"{n // 1000}k" if n >= 1000 else str(n)  # noqa: E731
    span = f"{k(n1)}→{k(n2)}"
    rows = []
    t1, t2 = small["intake"]["total_s"], big["intake"]["total_s"]
    p1, p2 = small["intake"]["post_p50_ms"], big["intake"]["post_p50_ms"]
    rows.append((f"5{label}", f"intake {span} users (1,000-user POSTs)",
                 f"p50/POST at backlog {p1:.0f} → {p2:.0f} ms ({small['intake']['post_samples']} and "
                 f"{big['intake']['post_samples']} POSTs); all N users {fmt_s(t1)} → {fmt_s(t2)}",
                 f"×{p2 / p1:.2f} per POST", f"≤ ×{TOLERANCE:.1f}", verdict(p2 / p1 <= TOLERANCE)))
    s1, s2 = small["stage_s"], big["stage_s"]
    rows.append(("", f"stage time {span} (sync + tasks)",
                 f"{fmt_s(s1)} → {fmt_s(s2)} (sync {fmt_s(big['sync']['seconds'])}, "
                 f"tasks {fmt_s(big['tasks']['seconds'])})",
                 f"×{s2 / s1:.1f} for ×{factor:.0f}", f"≤ ×{factor * TOLERANCE:.0f}",
                 verdict(s2 / s1 <= factor * TOLERANCE)))
    r1, r2 = small["process"]["window_rate"], big["process"]["window_rate"]
    rows.append(("", f"process {big['process']['tasks']:,} no-op tasks, backlog {k(3 * n1)}→{k(3 * n2)}",
                 f"{r1:.0f} → {r2:.0f} tasks/s (median of {big['process'].get('runs', 1)} runs each)",
                 f"×{r1 / r2:.2f} time", f"≤ ×{TOLERANCE:.1f}", verdict(r1 / r2 <= TOLERANCE)))
    m1, m2 = small["stage_maxrss_mib"], big["stage_maxrss_mib"]
    rows.append(("", f"peak RSS of a stage process {span}",
                 f"{m1:.0f} → {m2:.0f} MiB (sync {big['sync']['maxrss_mib']:.0f}, tasks "
                 f"{big['tasks']['maxrss_mib']:.0f}, process {big['process']['maxrss_mib']:.0f})",
                 f"×{m2 / m1:.2f}", "≤ ×1.25", verdict(m2 / m1 <= 1.25)))
    return rows


def table(results: dict) -> str:
    m = results["machine"]
    rows = []
    i = results.get("intake")
    if i:
        rows.append(("1", f"intake, {i['users']:,}-user POST vs psycopg2 bulk",
                     f"POST p50 {i['post_p50_ms']:.0f} / p99 {i['post_p99_ms']:.0f} ms; "
                     f"bulk p50 {i['bulk_p50_ms']:.0f} / p99 {i['bulk_p99_ms']:.0f} ms ({i['runs']} runs)",
                     f"{i['ratio']:.2f}×", "≤ 3×", verdict(i["ratio"] <= 3)))
    s = results.get("stages")
    if s:
        rows.append(("2", f"stages' DB work, {s['users']:,} users",
                     f"sync+tasks {fmt_s(s['service_s'])} vs note's per-row loop {fmt_s(s['reference_s'])}",
                     f"{s['ratio']:.1f}×", "≥ 20×", verdict(s["ratio"] >= 20)))
        q = results["queries_per_batch"]
        constant = len(q["sync"]) == 1 and len(q["tasks"]) == 1
        rows.append(("", f"queries per {q['batch_size']}-row batch, {q['points']}",
                     f"sync_hr_persons {'/'.join(map(str, q['sync']))}, create_account_tasks "
                     f"{'/'.join(map(str, q['tasks']))}",
                     "constant" if constant else "varies", "constant", verdict(constant)))
    t = results.get("throughput")
    if t:
        rows.append(("3", f"provisioning {t['users']:,}×3, {t['latency_ms']} ms, 1 worker",
                     f"{t['one']['window_rate']:.0f} tasks/s (median of {t.get('rounds', 1)}) "
                     f"vs ideal {t['ideal_rate']:.0f}/s "
                     f"({'+'.join(str(v) for v in t['concurrency'].values())} ÷ {t['latency_ms'] / 1000:g} s)",
                     f"{t['one_vs_ideal']:.0%}", "≥ 80%", verdict(t["one_vs_ideal"] >= 0.8)))
        rows.append(("", "provisioning, 2 workers vs 1",
                     f"{t['two']['window_rate']:.0f} vs {t['one']['window_rate']:.0f} tasks/s (medians; "
                     f"{t['two_vs_one_wall']:.2f}× by wall clock, start-up included); worker CPU "
                     f"{t['two']['worker_cpu_ms_per_task']:.2f} vs {t['one']['worker_cpu_ms_per_task']:.2f} ms/task",
                     f"{t['two_vs_one']:.2f}×", "≥ 1.8×", verdict(t["two_vs_one"] >= 1.8)))
    c = results.get("claims")
    if c:
        peer = c["peer"]
        rows.append(("4", f"claim overhead, {c['tasks']:,} no-op tasks, {c['workers']} worker process",
                     f"ours {c['ours']['window_rate']:.0f} tasks/s vs procrastinate {peer['window_rate']:.0f} jobs/s "
                     f"(concurrency {peer['concurrency']})",
                     f"{c['ratio']:.2f}×", "≥ 10×", verdict(c["ratio"] >= 10)))
    w = results.get("connections")
    if w:
        rows.append(("6", f"connections of a worker, {w['tasks']:,} tasks, {w['threads']} backend threads",
                     f"at most {w['most']} at once in pg_stat_activity ({w['samples']} samples of 20 ms); "
                     f"run_worker serving requests: {w.get('run_worker', '?')} (LISTEN included)",
                     str(max(w["most"], w.get("run_worker", 0))), "≤ 4",
                     verdict(max(w["most"], w.get("run_worker", 0)) <= 4)))
    lat = results.get("latency")
    if lat:
        for persons, r in lat["sizes"].items():
            target = {1: (2.0, 5.0)}.get(int(persons))
            rows.append(("7" if int(persons) == 1 else "", f"POST → completed, {int(persons):,} person(s), run_worker",
                         f"p50 {fmt_s(r['p50_s'])} / p99 {fmt_s(r['p99_s'])} ({r['requests']} requests, one at a time)",
                         f"{r['p50_s']:.2f} s", "p50 ≤ 2 s, p99 ≤ 5 s" if target else "—",
                         verdict(r["p50_s"] <= target[0] and r["p99_s"] <= target[1]) if target else "info"))
    points = results.get("scale", [])
    for n, (small, big) in enumerate(zip(points, points[1:])):
        rows += growth_rows("abc"[n], small, big)
    widths = [max(len(str(r[k])) for r in rows + [HEADER]) for k in range(len(HEADER))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [
        f"Benchmarks of issue 7 — {results['started']} — {results['mode']}, {results['duration']}",
        f"machine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB; Python {m['python']}; Django {m['django']}; "
        f"PostgreSQL {m['postgresql']} (synchronous_commit={m['synchronous_commit']}, "
        f"shared_buffers={m['shared_buffers']}); load average at start {results['load_at_start']}",
        cpu_line(results.get("cpu")),
        "",
        line(HEADER),
        line(["-" * w for w in widths]),
        *[line(r) for r in rows],
        "",
        f"{sum(r[-1] == 'PASS' for r in rows)} PASS, {sum(r[-1] == 'FAIL' for r in rows)} FAIL",
    ]
    return "\n".join(out)


HEADER = ("#", "workload", "measured", "ratio", "target", "result")


def cpu_line(cpu: dict | None) -> str:
    if not cpu:
        return "CPU time during the run: not readable here"
    return (f"CPU time during the run: {cpu['busy']:.0%} busy, {cpu['idle']:.0%} idle, {cpu['steal']:.0%} taken by "
            f"the VM's host (steal; above ~10 % the rows near their target move)")


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="add the 100k-user scale point")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, not the service")
    parser.add_argument("--only", default="",
                        help="comma-separated subset: intake,scale,stages,throughput,claims,connections,latency")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cpu_before = common.cpu_times()
    only = set(filter(None, args.only.split(",")))
    wanted = lambda name: not only or name in only  # noqa: E731

    log(f"setting up database {common.DB_NAME} on {common.PG_HOST}:{common.PG_PORT}")
    common.setup_django()
    from . import intake, provisioning, stages

    results = {"started": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %z"), "load_at_start": load_average(),
               "mode": "make bench-large" if args.large else ("quick (sizes reduced)" if args.quick else "make bench"),
               "machine": common.machine()}
    sizes = [200, 1000] if args.quick else [1000, 10_000] + ([100_000] if args.large else [])
    runs = 5 if args.quick else 30
    ref_users = sizes[1]

    if wanted("intake"):
        log(f"workload 1: intake, {runs} runs of a 1,000-user POST and of the psycopg2 bulk insert")
        results["intake"] = intake.run(runs=runs)
    if wanted("scale") or wanted("stages"):
        results["scale"] = []
        for users in sizes:
            log(f"workload 5: pipeline point at {users:,} users (intake, sync, tasks as subprocesses, process)")
            results["scale"].append(stages.pipeline_point(users))
        batch_size = results["scale"][0]["sync"].get("batch_size")
        from django.conf import settings

        results["queries_per_batch"] = {
            "batch_size": batch_size or settings.STAGE_BATCH_SIZE,
            "points": " and ".join(f"{p['users'] // 1000}k" if p["users"] >= 1000 else str(p["users"])
                                   for p in results["scale"]),
            "sync": sorted({q for p in results["scale"] for q in p["sync"]["queries_per_batch"]}),
            "tasks": sorted({q for p in results["scale"] for q in p["tasks"]["queries_per_batch"]}),
        }
    if wanted("stages"):
        log(f"workload 2: the note's per-row loop on the same {ref_users:,} users (the slow one)")
        point = next(p for p in results["scale"] if p["users"] == ref_users)
        results["stages"] = stages.compare(point, stages.reference_point(ref_users))
    if wanted("throughput"):
        users = 200 if args.quick else 1000
        log(f"workload 3: provisioning {users:,}×3 tasks at 50 ms, one worker then two, three times")
        results["throughput"] = provisioning.throughput(users=users)
    if wanted("claims"):
        users = 200 if args.quick else 10_000
        log(f"workload 4: {3 * users:,} no-op tasks through our worker, then as procrastinate jobs, 1 process each")
        results["claims"] = provisioning.claim_overhead(users=users)

    if wanted("connections") or wanted("latency"):
        from . import worker_mode

        if wanted("connections"):
            log("workload 6: connections of a worker (pg_stat_activity every 20 ms)")
            results["connections"] = worker_mode.worker_connections(users=200 if args.quick else 1000)
        log("workload 7: POST → completed latency with run_worker, 1, 100 and 1,000 persons")
        results["latency"] = worker_mode.latency()
        if "connections" in results:
            results["connections"]["run_worker"] = results["latency"]["worker_connections"]

    elapsed = time.perf_counter() - started
    results["duration"] = f"{int(elapsed // 60)}m{int(elapsed % 60):02d}s"
    results["cpu"] = common.cpu_share(cpu_before, common.cpu_times())
    text = table(results)
    common.save_json("latest.json", results)
    (common.RESULTS / "latest.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    log(f"raw results in {common.RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
