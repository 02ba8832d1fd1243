"""The peer of workload 4: a procrastinate app with one no-op task, in its own database.

Workers run as `python -m procrastinate --app=bench.procrastinate_app.app worker --one-shot`.
The database URL comes from BENCH_PROCRASTINATE_DSN (set by bench/claims.py).
"""

import os

from procrastinate import App, PsycopgConnector

DSN = os.environ.get("BENCH_PROCRASTINATE_DSN", "postgresql://postgres@127.0.0.1:5432/aps_bench_procrastinate")

app = App(connector=PsycopgConnector(conninfo=DSN))


@app.task(name="noop", queue="bench")
def noop(n: int = 0) -> None:
    return None


def defer(count: int, chunk: int = 1000) -> None:
    """Queue `count` no-op jobs (set-up of the measurement, not timed)."""
    with app.open():
        for start in range(0, count, chunk):
            noop.batch_defer(*({"n": n} for n in range(start, min(count, start + chunk))))


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "defer":
        defer(int(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m bench.procrastinate_app defer COUNT")
