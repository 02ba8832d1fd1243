"""Workloads 2 and 5: the stages' database work, and how the pipeline grows with the number of users.

A *pipeline point* for N users starts from empty tables: N users are submitted through the API (1,000-user
POSTs, the API's limit; timed: intake at scale), then sync_hr_persons and create_account_tasks run as
separate subprocesses (bench/stage_probe.py: in-process stage time, queries per batch, and peak RSS from
wait4), then one process_account_creation_tasks worker with the no-op backend handles the first 3,000 tasks
of the 3·N backlog, three times from the same state (rewound in between; the median counts; time per task
must not grow with the backlog), and five more 1,000-user POSTs measure the intake latency against that backlog.

The reference of workload 2 starts from the same fresh state (the same users, loaded through the intake
service) and runs bench/reference.py, the design note's per-row loop, in this process. Both must end in the
same rows before their times are compared.
"""

import json
import sys
import time

from . import common, intake, provisioning


def probe(stage: str) -> dict:
    run = common.run_measured([sys.executable, "-m", "bench.stage_probe", stage], common.subprocess_env())
    data = json.loads(run["output"].strip().splitlines()[-1])
    data.update(wall_s=run["wall_s"], maxrss_mib=run["maxrss_mib"])
    return data


def state_summary() -> dict:
    from syncservice.models import Account, AccountCreationRequestItem, AccountCreationTask, HrPerson

    return {
        "persons": HrPerson.objects.count(),
        "persons_with_email": HrPerson.objects.exclude(email=None).count(),
        "distinct_emails": HrPerson.objects.exclude(email=None).values("email").distinct().count(),
        "accounts": Account.objects.count(),
        "accounts_creating": Account.objects.filter(status="creating").count(),
        "tasks": AccountCreationTask.objects.filter(status__in=["pending", "blocked"]).count(),
        "items_task_created": AccountCreationRequestItem.objects.filter(status="task_created").count(),
    }


PROCESS_SAMPLE = 3000
PROCESS_RUNS = 3  # odd: the median is one of the runs
PROBE_POSTS = 5


def process_sample(sample: int) -> dict:
    """The first `sample` no-op tasks of the backlog through one worker, PROCESS_RUNS times from the same
    state (rewound, vacuumed and checkpointed before every run, the first included); the run of median
    rate, with every rate. At ~10,000 tasks/s one run lasts a few tenths of a second: a single one is at
    the mercy of one stall of the machine."""
    rewind = common.Rewind()
    runs = []
    try:
        for n in range(PROCESS_RUNS):
            if n:
                rewind.rewind()
            runs.append(provisioning.run_workers(1, provisioning.NOOP_ENV, expected=sample,
                                                 extra_args=["--limit", str(sample)]))
    finally:
        rewind.close()
    median = provisioning.median_run(runs)
    return {**median, "runs": len(runs), "window_rates": [run["window_rate"] for run in runs],
            "maxrss_mib": max(run["maxrss_mib"] for run in runs)}


def pipeline_point(users: int, *, prefix: str = "S") -> dict:
    common.reset_service_data()
    common.checkpoint()
    submitted = intake.intake_volume(users, prefix=prefix)
    common.analyze()
    common.checkpoint()
    sync = probe("sync_hr_persons")
    tasks = probe("create_account_tasks")
    state = state_summary()
    if state["items_task_created"] != users or state["tasks"] != 3 * users:
        raise RuntimeError(f"bench: the stages left an unexpected state for {users} users: {state}")
    process = process_sample(min(PROCESS_SAMPLE, 3 * users))  # vacuums and checkpoints before each run
    # Five more 1,000-user POSTs against the backlog of N users: the per-POST latency at this scale.
    extra = intake.intake_volume(PROBE_POSTS * 1000, prefix=f"{prefix}X")
    samples = submitted["times_ms"] + extra["times_ms"]
    submitted.update(probe_posts=PROBE_POSTS, post_p50_ms=common.median(samples), post_samples=len(samples))
    return {"users": users, "intake": submitted, "sync": sync, "tasks": tasks, "process": process, "state": state,
            "stage_s": sync["seconds"] + tasks["seconds"],
            "stage_maxrss_mib": max(sync["maxrss_mib"], tasks["maxrss_mib"], process["maxrss_mib"])}


def reference_point(users: int, *, prefix: str = "S") -> dict:
    from django.db import connection

    from . import reference

    common.reset_service_data()
    common.load_requests_orm(users, prefix=prefix)
    common.analyze()
    common.checkpoint()
    queries = common.QueryCounter()
    with connection.execute_wrapper(queries):
        start = time.perf_counter()
        reference.sync_hr_persons_per_row()
        sync_s = time.perf_counter() - start
        sync_queries = queries.count
        start = time.perf_counter()
        reference.create_account_tasks_per_row()
        tasks_s = time.perf_counter() - start
    return {"users": users, "sync_s": sync_s, "tasks_s": tasks_s, "total_s": sync_s + tasks_s,
            "queries": queries.count, "sync_queries": sync_queries, "tasks_queries": queries.count - sync_queries,
            "state": state_summary()}


def compare(point: dict, ref: dict) -> dict:
    if point["state"] != ref["state"]:
        raise RuntimeError(f"bench: the reference loop and the stages disagree: {ref['state']} vs {point['state']}")
    return {"users": point["users"], "service_s": point["stage_s"], "reference_s": ref["total_s"],
            "ratio": ref["total_s"] / point["stage_s"], "reference": ref,
            "sync_queries_per_batch": point["sync"]["queries_per_batch"],
            "tasks_queries_per_batch": point["tasks"]["queries_per_batch"],
            "sync_batches": point["sync"]["batches"], "tasks_batches": point["tasks"]["batches"]}
