"""One queue and one executor for every kind of work against the targets.

- `table.JobTable` describes a model whose rows are jobs (statuses, lanes, order, lease columns).
- `jobs` owns their lifecycle: claim (FOR UPDATE SKIP LOCKED, short transactions), lease expiry,
  release, and results written fenced by the claim's lease token.
- `outcomes` is the one place that decides what a result does to `attempts`, statuses and retry times.
- `engines` runs the claim and the fenced write on each database family (set-based SQL on PostgreSQL,
  the ORM elsewhere).
- `handler.Handler` is a kind of job: what to call for claimed jobs and how each outcome maps onto rows.
- `executor.run` works through due jobs of any kinds with per-lane threads, prefetch and a recorder.
"""
