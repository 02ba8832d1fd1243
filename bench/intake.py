"""Workload 1: a 1,000-user create_accounts POST through the real stack vs a plain psycopg2 bulk insert.

The POST goes through Django's test Client: WSGI handler, every middleware, DRF authentication (token
digest lookup), JSON parsing, validation, the idempotency lookup, both inserts in one transaction and the
JSON response. Only the socket is missing. The reference inserts exactly the same request row and item rows
(the values Django would write, computed beforehand) with psycopg2's ``execute_values`` in one transaction on
a plain connection. Runs alternate between the two so that both see the same machine noise.
"""

import json
import time

from .common import BENCH_ENV, bench_client, make_payload, make_users, median, percentile

URL = "/account-creation/create_accounts/"


def _db_row(instance, fields):
    """The values Django would write for this instance, as plain Python values psycopg2 adapts itself."""
    import enum

    from django.db.models import DateTimeField, JSONField
    from psycopg2.extras import Json

    values = []
    for field in fields:
        if isinstance(field, DateTimeField) and (field.auto_now or field.auto_now_add):
            value = field.pre_save(instance, add=True)
        else:
            value = getattr(instance, field.attname)
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(field, JSONField) and value is not None:
            value = Json(value)
        values.append(value)
    return tuple(values)


class BulkInsertReference:
    """The same rows as the POST, written with psycopg2 execute_values on a plain connection."""

    def __init__(self, dsn: str):
        import psycopg2

        self.conn = psycopg2.connect(dsn)
        from syncservice.models import AccountCreationRequest, AccountCreationRequestItem

        self.Request, self.Item = AccountCreationRequest, AccountCreationRequestItem
        self.request_fields = [f for f in AccountCreationRequest._meta.concrete_fields if not f.primary_key]
        self.item_fields = [f for f in AccountCreationRequestItem._meta.concrete_fields
                            if not f.primary_key and f.name != "request"]

    def prepare(self, payload: dict, client) -> tuple:
        """Everything but the insert itself: validated values turned into database rows."""
        from syncservice.services.intake import new_request_id
        from syncservice.validation import validate_create_accounts

        batch = validate_create_accounts(payload)
        request = self.Request(
            request_id=new_request_id(), origin_system=batch.origin_system, business_key=batch.business_key,
            account_type=batch.account_type, employee_type=batch.employee_type, system_list=batch.system_list,
            total_users=len(batch.users), client=client, priority=client.default_priority,
            payload_fingerprint=batch.fingerprint,
        )
        request_row = _db_row(request, self.request_fields)
        item_rows = [_db_row(self.Item(**user), self.item_fields) for user in batch.users]
        return request_row, item_rows

    def insert(self, prepared: tuple) -> None:
        from psycopg2.extras import execute_values

        request_row, item_rows = prepared
        request_cols = ", ".join(f'"{f.column}"' for f in self.request_fields)
        item_cols = ", ".join(['"request_id"'] + [f'"{f.column}"' for f in self.item_fields])
        with self.conn.cursor() as cur:
            cur.execute(
                f'INSERT INTO "{self.Request._meta.db_table}" ({request_cols}) '
                f'VALUES ({", ".join(["%s"] * len(request_row))}) RETURNING id', request_row)
            request_pk = cur.fetchone()[0]
            execute_values(
                cur, f'INSERT INTO "{self.Item._meta.db_table}" ({item_cols}) VALUES %s',
                [(request_pk, *row) for row in item_rows], page_size=1000,
            )
        self.conn.commit()

    def close(self):
        self.conn.close()


def post_batch(http, token: str, body: bytes):
    response = http.post(URL, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    if response.status_code != 202:
        raise RuntimeError(f"bench: create_accounts answered {response.status_code}: {response.content[:500]!r}")
    return response


def count_post_queries(http, token: str, body: bytes) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        post_batch(http, token, body)
    return [q["sql"] for q in ctx.captured_queries]


def run(*, runs: int = 30, users: int = 1000, warmup: int = 3, tag: str = "") -> dict:
    from django.test import Client

    client, token = bench_client()
    http = Client()
    reference = BulkInsertReference(BENCH_ENV["DATABASE_URL"].replace("postgres://", "postgresql://", 1))
    people = make_users(users, f"I{tag}")
    stack_times, bulk_times = [], []
    try:
        for i in range(warmup + runs):
            body = json.dumps(make_payload(people, f"intake{tag}-api-{i}"), ensure_ascii=False).encode("utf-8")
            prepared = reference.prepare(make_payload(people, f"intake{tag}-ref-{i}"), client)

            def timed_post():
                start = time.perf_counter()
                post_batch(http, token, body)
                return time.perf_counter() - start

            def timed_bulk():
                start = time.perf_counter()
                reference.insert(prepared)
                return time.perf_counter() - start

            if i % 2:
                b, s = timed_bulk(), timed_post()
            else:
                s, b = timed_post(), timed_bulk()
            if i >= warmup:
                stack_times.append(s)
                bulk_times.append(b)
        queries = count_post_queries(
            http, token,
            json.dumps(make_payload(people, f"intake{tag}-count"), ensure_ascii=False).encode("utf-8"))
    finally:
        reference.close()
    result = {
        "users": users, "runs": runs,
        "post_p50_ms": median(stack_times) * 1000, "post_p99_ms": percentile(stack_times, 99) * 1000,
        "bulk_p50_ms": median(bulk_times) * 1000, "bulk_p99_ms": percentile(bulk_times, 99) * 1000,
        "queries_per_post": len(queries), "query_kinds": [q[:90] for q in queries],
    }
    result["ratio"] = result["post_p50_ms"] / result["bulk_p50_ms"]
    return result


def intake_volume(total_users: int, *, prefix: str, per_request: int = 1000) -> dict:
    """Submit `total_users` users as 1,000-user POSTs (the API's limit); total time and per-POST p50."""
    from django.test import Client

    client, token = bench_client()
    http = Client()
    times = []
    people = make_users(total_users, prefix)
    bodies = [
        json.dumps(make_payload(people[s:s + per_request], f"{prefix}-{s}"), ensure_ascii=False).encode("utf-8")
        for s in range(0, total_users, per_request)
    ]
    for body in bodies:
        start = time.perf_counter()
        post_batch(http, token, body)
        times.append(time.perf_counter() - start)
    return {"users": total_users, "posts": len(bodies), "total_s": sum(times), "p50_ms": median(times) * 1000,
            "p99_ms": percentile(times, 99) * 1000, "times_ms": [t * 1000 for t in times]}
