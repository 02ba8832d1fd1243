"""A worker's PostgreSQL connections, counted in pg_stat_activity while a real worker process runs."""

import threading

import psycopg2
import pytest
from django.core.management import call_command
from django.db import connection

from syncservice.models import AccountCreationTask, LocalTargetAccount

from .fixtures import make_users, note_example, requires_postgres
from .test_concurrency import manage, subprocess_env

pytestmark = [requires_postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MOST_CONNECTIONS = 4


class ConnectionSampler:
    """Counts, every few milliseconds, the server connections of one client process by application_name."""

    def __init__(self, application_name: str):
        db = connection.settings_dict
        self.conn = psycopg2.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
                                     dbname=db["NAME"])
        self.conn.autocommit = True
        self.name = application_name
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with self.conn.cursor() as cursor:
            while not self.stop.wait(0.02):
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [self.name])
                self.samples.append(cursor.fetchone()[0])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.conn.close()


def test_a_worker_holds_a_few_connections_whatever_its_thread_count(hr_caller):
    hr_caller.submit(note_example(businessKey="C", userList=make_users(400, "C")))
    call_command("sync_hr_persons")
    call_command("create_account_tasks")
    # 3 × 16 threads, every one writing the local target's rows, taking shared rate slots and concurrency
    # slots: before the shared connection this worker held 1 + 48 connections.
    env = subprocess_env(LOCAL_BACKEND_LATENCY_MS=20, IDAAS_CONCURRENCY=16, WELINK_CONCURRENCY=16,
                         MAILBOX_CONCURRENCY=16, IDAAS_MAX_CALLS_PER_SECOND=2000, MAILBOX_MAX_CALLS_PER_SECOND=2000,
                         WELINK_MAX_CONCURRENCY=12, IDAAS_MAX_CONCURRENCY=12)
    worker = manage("process_account_creation_tasks", env=env)
    with ConnectionSampler(f"aps process_account_creation_tasks {worker.pid}") as sampler:
        out, err = worker.communicate(timeout=240)
    assert worker.returncode == 0, (out, err)
    assert not AccountCreationTask.objects.exclude(status="succeeded").exists(), err
    assert LocalTargetAccount.objects.count() == 1200
    busy = [n for n in sampler.samples if n]
    assert len(busy) >= 10, f"the worker's connections were seen in too few samples: {sampler.samples}"
    assert max(busy) <= MOST_CONNECTIONS, f"samples: {sorted(set(busy))}"
