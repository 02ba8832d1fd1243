"""Shared test fixtures: API clients with real tokens, and helpers to call the API through the test client."""

import copy
import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.management import call_command

from syncservice.api.views import NOTE_EXAMPLE
from syncservice.backends import reset_backends
from syncservice.services.clients import api_client_create


def note_example(**overrides) -> dict:
    """The design note's example request (as the API documents it), optionally with fields replaced."""
    payload = copy.deepcopy(NOTE_EXAMPLE)
    payload.update(overrides)
    return payload


def make_users(count: int, prefix: str = "E") -> list[dict]:
    return [
        {"employeeNumber": f"{prefix}{i:06d}", "employeeName": "王小明", "departmentCode": "D001",
         "phoneNumber": f"139{i:08d}", "partnerCompany": "", "country": "中国"}
        for i in range(count)
    ]


def submit(caller, **overrides) -> str:
    """POST the note's example (with `overrides`) as `caller`; return the new request's id."""
    response = caller.submit(note_example(**overrides))
    assert response.status_code == 202, response.content
    return response.json()["requestId"]


def document(caller, request_id) -> dict:
    """The request's status document as `caller` sees it."""
    return caller.get(f"/account-creation/requests/{request_id}/").json()


def admin_action(staff_client, model: str, action: str, ids) -> None:
    """Run an admin list action of a syncservice model on the rows `ids`."""
    response = staff_client.post(f"/admin/syncservice/{model}/", {"action": action, "_selected_action": ids})
    assert response.status_code == 302, response.content[:500]

class Caller:
    """Calls the API as one client, through Django's test client (the whole stack, no shortcuts)."""

    def __init__(self, client, token: str | None):
        self.client = client
        self.token = token

    def _headers(self, extra=None):
        headers = dict(extra or {})
        if self.token is not None:
            headers.setdefault("HTTP_AUTHORIZATION", f"Bearer {self.token}")
        return headers

    def post_json(self, path: str, payload, **extra):
        body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload, ensure_ascii=False)
        return self.client.post(path, data=body, content_type=extra.pop("content_type", "application/json"),
                                **self._headers(extra))

    def submit(self, payload, **extra):
        return self.post_json("/account-creation/create_accounts/", payload, **extra)

    def get(self, path: str, **extra):
        return self.client.get(path, **self._headers(extra))


@pytest.fixture
def make_caller(db, client, settings):
    # Rate-limit counts live in a cache table that transactional tests do not flush: start from zero.
    caches[settings.API_THROTTLE_CACHE].clear()

    def _make(origin: str = "HR_SYSTEM", *, operator: bool = False, name: str | None = None,
              priority: int = 0) -> Caller:
        api_client, token = api_client_create(
            name=name or (f"ops-{origin}" if operator else origin),
            origin_system="" if operator else origin, is_operator=operator, default_priority=priority,
        )
        caller = Caller(client, token)
        caller.api_client = api_client
        return caller
    return _make


@pytest.fixture
def staff_client(db, client):
    """The test client logged in as a superuser (the admin, staff-only endpoints)."""
    client.force_login(get_user_model().objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only"))
    return client


@pytest.fixture
def hr_caller(make_caller):
    return make_caller("HR_SYSTEM")


@pytest.fixture
def operator_caller(make_caller):
    return make_caller("ops", operator=True)


def _on_postgres() -> bool:
    from django.db import connection
    return connection.vendor == "postgresql"


requires_postgres = pytest.mark.skipif(
    not _on_postgres(), reason="needs PostgreSQL (row locks, or bulk statements SQLite would split); "
                               "set DATABASE_URL=postgres://...")


STAGES = ["sync_hr_persons", "create_account_tasks", "process_account_creation_tasks"]


def stage(name: str, *args) -> str:
    """Run one stage command in-process; return its one-line summary."""
    out = StringIO()
    call_command(name, *args, stdout=out)
    return out.getvalue().strip()


def run_pipeline(rounds: int = 1) -> list[str]:
    return [stage(name) for _ in range(rounds) for name in STAGES]


@pytest.fixture
def fast_retries(settings):
    """Retries and polls due at once, and backends rebuilt from the test's settings."""
    settings.TASK_RETRY_BASE_SECONDS = 0
    settings.TASK_ASYNC_POLL_SECONDS = 0
    reset_backends()
    yield
    reset_backends()
