"""Run one stage command in a subprocess of its own and report, as one JSON line, its time and its queries.

``python -m bench.stage_probe sync_hr_persons`` (or create_account_tasks) runs the management command with a
connection execute wrapper that only counts queries, and wraps the stage's batch function to record the
number of queries of every batch. The parent (bench/stages.py) adds wall time and peak RSS from wait4().
"""

import io
import json
import os
import sys
import time

from .common import QueryCounter

BATCH_FUNCTIONS = {
    "sync_hr_persons": ("syncservice.services.sync", "_sync_items_batch"),
    "create_account_tasks": ("syncservice.services.tasks", "_tasks_for_items_batch"),
}


def main(stage: str) -> None:
    import importlib

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    queries = QueryCounter()
    batches: list[tuple[int, int]] = []
    module_name, function_name = BATCH_FUNCTIONS[stage]
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)

    def batch(*args, **kwargs):
        before = queries.count
        result = original(*args, **kwargs)
        rows = result[0] if isinstance(result, tuple) else result
        batches.append((rows, queries.count - before))
        return result

    setattr(module, function_name, batch)
    out = io.StringIO()
    with connection.execute_wrapper(queries):
        start = time.perf_counter()
        call_command(stage, stdout=out)
        seconds = time.perf_counter() - start
    full = [q for rows, q in batches if rows]
    print(json.dumps({
        "stage": stage, "seconds": seconds, "queries": queries.count, "batches": len(full),
        "queries_per_batch": sorted(set(full)), "rows": sum(r for r, _ in batches),
        "batch_size": int(os.environ.get("STAGE_BATCH_SIZE") or 0) or None, "summary": out.getvalue().strip(),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
