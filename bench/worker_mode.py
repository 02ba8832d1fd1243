"""Workloads 6 and 7: a worker's PostgreSQL connections, and POST → completed latency in worker mode.

6. pg_stat_activity sampled every 20 ms while a ``process_account_creation_tasks`` worker drains 3·N tasks
   (local backends, 50 ms, every thread writing rows), and while ``run_worker`` serves requests: the most
   connections of the process seen at once (by application_name, which names the process and its pid).
7. One ``run_worker`` process (local backends, no injected latency) waits for work; requests of 1, 100 and
   1,000 persons are POSTed through the real stack (Django test Client) one after the other, each when the
   previous one has completed; latency = the request's status reads `completed` − the POST's 202, polled
   every 10 ms on another connection.
"""

import contextlib
import subprocess
import threading
import time

from . import common

SIZES = {1: 30, 100: 10, 1000: 3}  # persons per request: how many requests


@contextlib.contextmanager
def sampled(names: list[str]):
    """Yield a dict that ends up with the most connections of these application names seen at once."""
    import psycopg2

    seen = {"most": 0, "samples": 0}
    done = threading.Event()
    conn = psycopg2.connect(common.pg_url(common.DB_NAME))
    conn.autocommit = True

    def sample():
        with conn.cursor() as cursor:
            while not done.wait(0.02):
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)", [names])
                n = cursor.fetchone()[0]
                seen["most"] = max(seen["most"], n)
                seen["samples"] += 1 if n else 0

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()
        conn.close()


def worker_connections(users: int = 1000) -> dict:
    from . import provisioning

    tasks = provisioning.prepare_tasks(users)
    env = common.subprocess_env(LOCAL_BACKEND_LATENCY_MS=50)
    proc = subprocess.Popen(common.manage("process_account_creation_tasks"), cwd=common.PROJECT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with sampled([f"aps process_account_creation_tasks {proc.pid}"]) as seen:
        proc.wait(timeout=600)
    from django.conf import settings

    return {"tasks": tasks, "threads": sum(settings.BACKEND_CONCURRENCY.values()), "most": seen["most"],
            "samples": seen["samples"]}


def _status(request_id: str) -> str:
    from syncservice.models import AccountCreationRequest

    return AccountCreationRequest.objects.filter(request_id=request_id).values_list("status", flat=True).first()


def latency() -> dict:
    from django.db import connection
    from django.test import Client

    common.reset_service_data()
    _, token = common.bench_client()
    client = Client()
    env = common.subprocess_env(WORKER_POLL_SECONDS=30)
    proc = subprocess.Popen(common.manage("run_worker"), cwd=common.PROJECT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    names = [f"aps run_worker {proc.pid}", f"aps run_worker listen {proc.pid}"]
    results = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [names[1]])
                if cursor.fetchone()[0]:
                    break
            time.sleep(0.05)
        with sampled(names) as seen:
            for persons, count in SIZES.items():
                seconds = []
                for index in range(count):
                    users = common.make_users(persons, f"L{persons}-{index}-")
                    payload = common.make_payload(users, f"lat-{persons}-{index}")
                    response = client.post("/account-creation/create_accounts/", data=payload,
                                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
                    accepted = time.perf_counter()
                    if response.status_code != 202:
                        raise RuntimeError(f"bench: POST answered {response.status_code}: {response.content[:300]}")
                    request_id = response.json()["requestId"]
                    limit = accepted + 600
                    while (status := _status(request_id)) != "completed":
                        if status in ("failed", "partial_failed") or time.perf_counter() > limit:
                            raise RuntimeError(f"bench: request {request_id} ended {status}")
                        time.sleep(0.01)
                    seconds.append(time.perf_counter() - accepted)
                results[persons] = {"requests": count, "p50_s": common.percentile(seconds, 50),
                                    "p99_s": common.percentile(seconds, 99), "max_s": max(seconds)}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"bench: run_worker exited {proc.returncode}: {err[-2000:]}")
    return {"sizes": results, "worker_connections": seen["most"]}
