"""Reconciliation at scale: `python -m bench.reconcile` compares 10,000 and 100,000 local accounts.

Each size gets fresh data written in SQL (persons, their created accounts in one system, and the local
target's copies, 1 % of them drifted and 1 % missing), then `reconcile_accounts --dry-run --system idaas` runs
as a subprocess started through launch.py, so that its peak RSS is its own. Printed: time, accounts per
second, findings, and the peak RSS of both sizes side by side: memory must stay flat (bounded by the page)
while the accounts grow tenfold.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from . import common

SIZES = (10_000, 100_000)
DRIFTED_EVERY = 100   # one account in a hundred has another name at the target
MISSING_EVERY = 101   # and about one in a hundred is not there at all


def load(n: int) -> None:
    """n persons with a created IDaaS account each, and the local target holding them (some drifted)."""
    from django.db import connection

    common.reset_service_data()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO syncservice_hrperson (person_id, employee_number, full_name, telephone_number1, person_type,"
            " employee_status, tenant_id, person_dept, email, created_by, last_updated_by, creation_date,"
            " last_update_date) SELECT g, 'B' || lpad(g::text, 7, '0'), '王小明', '139' || lpad(g::text, 8, '0'),"
            " '员工', '1', '', '[{\"department_code\": \"D1\"}]'::jsonb, 'b' || g || '@example.com', 'hr_sync',"
            " 'hr_sync', now(), now() FROM generate_series(1, %s) g", [n])
        cursor.execute(
            "INSERT INTO syncservice_account (person_id, system, status, external_id, error_message, created_at,"
            " updated_at, provisioned_at, applied) SELECT p.id, 'idaas', 'created', 'idaas-' || p.person_id, '',"
            " now(), now(), now(), jsonb_build_object('full_name', p.full_name, 'phone_number', p.telephone_number1,"
            " 'department_code', 'D1', 'email', p.email, 'active', true) FROM syncservice_hrperson p")
        cursor.execute(
            "INSERT INTO syncservice_localtargetaccount (system, employee_number, external_id, email, full_name,"
            " mobile, department_code, active, created_at, updated_at) SELECT 'idaas', p.employee_number,"
            " 'idaas-' || p.person_id, p.email, CASE WHEN p.person_id %% %s = 0 THEN '王大明' ELSE p.full_name END,"
            " p.telephone_number1, 'D1', true, now(), now() FROM syncservice_hrperson p"
            " WHERE p.person_id %% %s <> 0", [DRIFTED_EVERY, MISSING_EVERY])
    common.analyze()


def measure(n: int) -> dict:
    load(n)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-S", str(common.BENCH / "launch.py"), sys.executable, "manage.py", "reconcile_accounts",
         "--dry-run", "--system", "idaas"],
        cwd=common.PROJECT, capture_output=True, text=True, env={**os.environ})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"reconcile_accounts failed: {result.stderr[-3000:]}")
    rss_kib = int(result.stdout.strip().splitlines()[-1].split("=", 1)[1])
    from syncservice.models import ReconciliationRun

    run = ReconciliationRun.objects.latest("id")
    return {"accounts": n, "seconds": seconds, "rate": n / seconds, "maxrss_mib": rss_kib / 1024,
            "findings": run.counts, "compared": run.compared["idaas"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs=2, default=SIZES, metavar=("SMALL", "LARGE"))
    args = parser.parse_args()
    common.setup_django()
    small, large = (measure(n) for n in args.sizes)
    for r in (small, large):
        print(f"reconcile {r['accounts']:>7,} accounts: {r['seconds']:.1f} s ({r['rate']:,.0f}/s), "
              f"peak RSS {r['maxrss_mib']:.0f} MiB, findings {r['findings']}")
    factor = large["accounts"] / small["accounts"]
    memory = large["maxrss_mib"] / small["maxrss_mib"]
    time_ratio = large["seconds"] / small["seconds"]
    print(f"accounts ×{factor:.0f}: peak RSS ×{memory:.2f} (flat: ≤ ×1.2 {'PASS' if memory <= 1.2 else 'FAIL'}), "
          f"time ×{time_ratio:.1f} (linear or better: ≤ ×{factor * 1.2:.0f} "
          f"{'PASS' if time_ratio <= factor * 1.2 else 'FAIL'})")
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "reconcile.json").write_text(json.dumps({"small": small, "large": large}, indent=2))


if __name__ == "__main__":
    main()
