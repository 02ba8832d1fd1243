"""`make bench-vendors`: provisioning against the project's own WeLink and Exmail simulators at the limits
the vendors document, with the real backends, several worker processes and the shared pacing.

    .venv/bin/python -m bench.vendors                       # 10,000 persons per target
    .venv/bin/python -m bench.vendors --persons 2000 --exmail-persons 600

Per target it prints the calls per person (every call the simulator received but the token's, divided by
the persons), the persons per second from the first claim to the last account, and that rate against the
limit: calls/s allowed × persons per call (WeLink: 40 calls/s per API × 10 persons per bulk call; Exmail:
15,000 calls/hour per cgi, one user/create per person). It also prints how many rate-limit answers came
back (none may), and checks one account per person. The simulators run in this process, on loopback; the
workers are `process_account_creation_tasks` subprocesses against the bench database.
"""

import argparse
import os
import time

from . import common

WELINK_LIMIT_PER_API = 40          # calls per second per API per client
WELINK_PERSONS_PER_CALL = 10       # users/bulk takes 10 persons
EXMAIL_LIMIT_PER_HOUR = 15_000     # calls per hour per cgi (and 500 a minute)
EXMAIL_LIMIT_PER_MINUTE = 500
TOKEN_PATHS = {"/api/auth/v2/tickets", "/cgi-bin/gettoken"}


def load(n: int, system: str) -> None:
    """n persons, each with a not-created account and a pending creation task in `system`."""
    from django.db import connection

    common.reset_service_data()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO syncservice_hrperson (person_id, employee_number, full_name, telephone_number1, person_type,"
            " employee_status, tenant_id, person_dept, email, created_by, last_updated_by, creation_date,"
            " last_update_date) SELECT g, 'V' || lpad(g::text, 7, '0'), '王小明', '139' || lpad(g::text, 8, '0'),"
            " '员工', '1', '', '[{\"department_code\": \"D1\"}]'::jsonb, 'v' || g || '@example.com', 'hr_sync',"
            " 'hr_sync', now(), now() FROM generate_series(1, %s) g", [n])
        cursor.execute(
            "INSERT INTO syncservice_account (person_id, system, status, external_id, error_message, created_at,"
            " updated_at) SELECT p.id, %s, 'not_created', '', '', now(), now() FROM syncservice_hrperson p",
            [system])
        cursor.execute(
            "INSERT INTO syncservice_accountcreationtask (person_id, system, operation, change, status, priority,"
            " attempts, max_attempts, next_attempt_at, locked_by, lease_token, backend_state, last_error_code,"
            " last_error, created_at, updated_at) SELECT p.id, %s, 'create', '{}'::jsonb, 'pending', 0, 0, 20,"
            " now(), '', '', '{}'::jsonb, '', '', now(), now() FROM syncservice_hrperson p", [system])
    common.analyze()


def open_tasks() -> int:
    from syncservice.models import AccountCreationTask

    return AccountCreationTask.objects.filter(status__in=AccountCreationTask.OPEN_STATUSES).count()


def drain(env: dict, workers: int, *, timeout: float) -> float:
    """Run `workers` process stages side by side, again until no task is open; return the seconds."""
    started = time.perf_counter()
    while open_tasks():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"bench-vendors: tasks still open after {timeout:.0f} s")
        procs = [common.start_measured(common.manage("process_account_creation_tasks"), env)
                 for _ in range(workers)]
        for proc in procs:
            common.wait_measured(proc, time.perf_counter(), timeout=timeout)
    return time.perf_counter() - started


def window(system: str) -> float:
    """Seconds from the first call of any worker to the last account created (process start-up left out)."""
    from django.db.models import Max, Min

    from syncservice.models import Account, TaskAttempt

    first = TaskAttempt.objects.filter(task__system=system).aggregate(t=Min("started_at"))["t"]
    last = Account.objects.filter(system=system).aggregate(t=Max("provisioned_at"))["t"]
    return (last - first).total_seconds()


def calls(app) -> int:
    return sum(1 for _, path in list(app.calls) if path not in TOKEN_PATHS)


def by_path(app) -> dict:
    counts = {}
    for _, path in list(app.calls):
        if path not in TOKEN_PATHS:
            counts[path] = counts.get(path, 0) + 1
    return counts


def run_welink(n: int, workers: int) -> dict:
    from syncservice.models import Account
    from syncservice.simulators import welink

    load(n, "welink")
    server, url = welink.start(polls_before_open=1, rate_limit_per_second=WELINK_LIMIT_PER_API)
    try:
        env = common.subprocess_env(
            WELINK_BACKEND="welink", WELINK_API_URL=url, WELINK_CLIENT_ID="welink-client",
            WELINK_CLIENT_SECRET="welink-secret", TASK_ASYNC_POLL_SECONDS="2", TASK_RETRY_BASE_SECONDS="1")
        seconds = drain(env, workers, timeout=3600)
        app = server.app
        created = Account.objects.filter(system="welink", status="created").count()
        once = len(app.opened) == n and set(app.opened.values()) == {1}
        return {"target": "welink", "persons": n, "seconds": seconds, "window_s": window("welink"), "calls": calls(app),
                "by_path": by_path(app),
                "refused": app.rate_limit.refused, "created": created, "one_account_each": once,
                "limit_persons_per_s": WELINK_LIMIT_PER_API * WELINK_PERSONS_PER_CALL}
    finally:
        welink.stop(server)


def run_exmail(n: int, workers: int) -> dict:
    from syncservice.models import Account
    from syncservice.simulators import exmail

    load(n, "email")
    server, url = exmail.start(rate_limit_per_minute=EXMAIL_LIMIT_PER_MINUTE, rate_limit_per_hour=EXMAIL_LIMIT_PER_HOUR)
    try:
        env = common.subprocess_env(
            MAILBOX_BACKEND="exmail", EXMAIL_API_URL=url, EXMAIL_CORP_ID="exmail-corp",
            EXMAIL_CORP_SECRET="exmail-secret", EXMAIL_DEPARTMENT_ID="1", TASK_RETRY_BASE_SECONDS="1")
        seconds = drain(env, workers, timeout=6 * 3600)
        app = server.app
        created = Account.objects.filter(system="email", status="created").count()
        once = len(app.created) == n and set(app.created.values()) == {1}
        refused = sum(limit.refused for limit in app.cgi_limits) + app.rate_limit.refused
        return {"target": "email", "persons": n, "seconds": seconds, "window_s": window("email"), "calls": calls(app),
                "by_path": by_path(app),
                "refused": refused, "created": created, "one_account_each": once,
                "limit_persons_per_s": EXMAIL_LIMIT_PER_HOUR / 3600}
    finally:
        exmail.stop(server)


def row(r: dict, *, most_calls: float, least_share: float, goal: float | None = None) -> str:
    per_person = r["calls"] / r["persons"]
    rate = r["persons"] / r["seconds"]
    share = rate / r["limit_persons_per_s"]
    calling = r["persons"] / r["window_s"] / r["limit_persons_per_s"]
    ok = per_person <= most_calls and share >= least_share and r["refused"] == 0 and r["one_account_each"]
    goal_text = f", goal {goal:.0%}" if goal else ""
    return (f"{r['target']:<7} {r['persons']:>6,} persons in {r['seconds']:7.1f} s | calls/person {per_person:.3f} "
            f"(≤ {most_calls:g}) | {rate:7.1f} persons/s of {r['limit_persons_per_s']:.1f} allowed = {share:5.1%} "
            f"(≥ {least_share:.0%}{goal_text}; first call to last account {r['window_s']:.1f} s = {calling:5.1%}) "
            f"| rate-limit answers {r['refused']} | one account each "
            f"{r['one_account_each']} | calls {r['by_path']} | {'PASS' if ok else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=10_000, help="persons for WeLink")
    parser.add_argument("--exmail-persons", type=int, default=10_000,
                        help="persons for Exmail (at 15,000/hour, 10,000 take about 40 minutes)")
    parser.add_argument("--workers", type=int, default=2, help="process_account_creation_tasks side by side")
    parser.add_argument("--only", choices=("welink", "email"))
    args = parser.parse_args()
    common.setup_django()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    lines = []
    if args.only in (None, "welink"):
        r = run_welink(args.persons, args.workers)
        lines.append(row(r, most_calls=0.5, least_share=0.5, goal=0.8))
        print(lines[-1], flush=True)
    if args.only in (None, "email"):
        r = run_exmail(args.exmail_persons, args.workers)
        lines.append(row(r, most_calls=1.1, least_share=0.7))
        print(lines[-1], flush=True)
    common.save_json("vendors", {"lines": lines, "machine": common.machine()})


if __name__ == "__main__":
    main()
