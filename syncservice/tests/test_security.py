"""Security: production settings, authentication on every endpoint, one origin never sees another's
requests, operator-only and staff-only endpoints, disabled and deleted clients, secrets at rest."""

import hashlib
import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from syncservice.models import AccountCreationRequest, AccountCreationRequestItem, ApiClient
from syncservice.services.clients import api_client_rotate_webhook_secret, api_client_webhook_secret
from taskmanagement.models import TaskRun

from .fixtures import Caller, note_example, run_pipeline

pytestmark = pytest.mark.django_db

PUBLIC_ROUTES = {"", "healthz", "readyz", "api/schema/", "api/docs/", "api/redoc/"}
METHODS = ["get", "post", "put", "patch", "delete", "options", "head"]
SOME_REQUEST_ID = "req_20250121_0123456789ab"
# Prometheus's /metrics has a token of its own and answers 404 unless enabled: taskmanagement/tests/test_metrics.py.
OWN_TOKEN_ROUTES = {"metrics"}


# --- Production settings -------------------------------------------------------------------------------

def test_check_deploy_is_clean_under_production_settings(tmp_path):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DJANGO_") and key != "DATABASE_URL"}
    env.update(DJANGO_SECRET_KEY=secrets.token_urlsafe(64), DJANGO_ALLOWED_HOSTS="accounts.example.com",
               DATABASE_URL=f"sqlite:///{tmp_path / 'deploy.sqlite3'}")
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_")}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=settings.BASE_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


# --- Every endpoint needs authentication ---------------------------------------------------------------

def routes() -> list[str]:
    """Every URL the project serves, as a concrete path; the admin's own pages are tested apart."""
    found = []

    def walk(patterns, prefix: str):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                route = prefix + str(pattern.pattern)
                if route != "admin/":
                    walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern):
                found.append(prefix + str(pattern.pattern))

    walk(get_resolver().url_patterns, "")
    concrete = []
    for route in found:
        if route in PUBLIC_ROUTES or route in OWN_TOKEN_ROUTES or route.startswith("admin/"):
            continue
        route = route.replace("<str:item_id>", SOME_ITEM_ID).replace("<str:run_id>", SOME_RUN_ID)
        assert "<" not in route.replace("<any_request_id:request_id>", ""), f"a new path parameter: {route}"
        concrete.append("/" + route.replace("<any_request_id:request_id>", SOME_REQUEST_ID))
    return concrete


SOME_ITEM_ID = "1"
SOME_RUN_ID = "1"
API_ROUTES = routes()


def test_the_route_list_covers_both_apis():
    assert {"/account-creation/create_accounts/", "/account-creation/requests/",
            f"/account-creation/requests/{SOME_REQUEST_ID}/",
            f"/account-creation/requests/{SOME_REQUEST_ID}/cancel/",
            f"/account-creation/requests/{SOME_REQUEST_ID}/retry/",
            f"/account-creation/requests/{SOME_REQUEST_ID}/items/{SOME_ITEM_ID}/log/",
            "/task-management/sync_hr_persons/", "/task-management/create_account_tasks/",
            "/task-management/process_account_tasks/", "/task-management/runs/",
            "/account-creation/deactivate_accounts/", "/task-management/reconcile_accounts/",
            "/task-management/reconciliations/", f"/task-management/reconciliations/{SOME_RUN_ID}/"} <= set(API_ROUTES)


@pytest.mark.parametrize("path", API_ROUTES)
@pytest.mark.parametrize("method", METHODS)
def test_every_endpoint_refuses_anonymous_callers(client, path, method):
    response = getattr(client, method)(path)
    assert response.status_code == 401, (method, path, response.content)
    assert response["WWW-Authenticate"].startswith("Bearer")
    if method != "head":
        body = response.json()
        assert body["success"] is False and body["code"] == "not_authenticated"


@pytest.mark.parametrize("header", ["Bearer aps_not-a-real-token", "Bearer ", "Basic dXNlcjpwYXNz", "Token x"])
@pytest.mark.parametrize("path", API_ROUTES)
def test_every_endpoint_refuses_a_wrong_token(client, path, header):
    response = client.get(path, HTTP_AUTHORIZATION=header)
    assert response.status_code == 401, (path, header, response.content)


@pytest.mark.parametrize("path", sorted(PUBLIC_ROUTES))
def test_health_probes_and_the_schema_are_public(client, path):
    response = client.get(f"/{path}")
    assert response.status_code == 200


# --- One origin never sees another's requests -----------------------------------------------------------

@pytest.fixture
def supplier(make_caller):
    return make_caller("SUPPLIER_SYSTEM")


@pytest.fixture
def hr_request(hr_caller) -> str:
    response = hr_caller.submit(note_example(businessKey="HR-ONLY"))
    assert response.status_code == 202
    return response.json()["requestId"]


def assert_not_found(response):
    assert response.status_code == 404, response.content
    body = response.json()
    assert body["code"] == "not_found"
    return body


def test_another_origin_cannot_read_a_request(supplier, hr_request):
    body = assert_not_found(supplier.get(f"/account-creation/requests/{hr_request}/"))
    # Exactly the answer an id that never existed gets: nothing tells the two apart.
    never = assert_not_found(supplier.get(f"/account-creation/requests/{SOME_REQUEST_ID}/"))
    assert body["message"].replace(hr_request, "ID") == never["message"].replace(SOME_REQUEST_ID, "ID")


def test_another_origin_cannot_read_an_items_log(supplier, hr_request):
    item = AccountCreationRequestItem.objects.filter(request__request_id=hr_request).first()
    body = assert_not_found(supplier.get(f"/account-creation/requests/{hr_request}/items/{item.pk}/log/"))
    # Exactly the answer a request that never existed gets.
    never = assert_not_found(supplier.get(f"/account-creation/requests/{SOME_REQUEST_ID}/items/{item.pk}/log/"))
    assert body["message"].replace(hr_request, "ID") == never["message"].replace(SOME_REQUEST_ID, "ID")


def test_another_origin_cannot_list_a_request(supplier, hr_caller, hr_request):
    assert supplier.get("/account-creation/requests/").json()["count"] == 0
    assert supplier.get("/account-creation/requests/?businessKey=HR-ONLY").json()["count"] == 0
    assert hr_caller.get("/account-creation/requests/").json()["count"] == 1


def test_another_origin_cannot_cancel_a_request(supplier, hr_request):
    assert_not_found(supplier.post_json(f"/account-creation/requests/{hr_request}/cancel/", {}))
    assert AccountCreationRequest.objects.get(request_id=hr_request).status == "pending"


# Transactional: on PostgreSQL the process stage's threads write through connections of their own.
@pytest.mark.django_db(transaction=True)
def test_another_origin_cannot_retry_a_request(supplier, hr_caller, settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^TEST00"
    settings.TASK_RETRY_BASE_SECONDS = 0
    from syncservice.backends import reset_backends

    reset_backends()
    try:
        request_id = hr_caller.submit(note_example(businessKey="HR-FAILS")).json()["requestId"]
        run_pipeline()
    finally:
        reset_backends()
    assert AccountCreationRequest.objects.get(request_id=request_id).status == "failed"
    assert_not_found(supplier.post_json(f"/account-creation/requests/{request_id}/retry/", {}))
    assert AccountCreationRequest.objects.get(request_id=request_id).status == "failed"
    # The owner may.
    assert hr_caller.post_json(f"/account-creation/requests/{request_id}/retry/", {}).status_code == 200


def test_another_origin_cannot_submit_for_an_origin_it_does_not_own(supplier):
    response = supplier.submit(note_example(originSystem="HR_SYSTEM"))
    assert response.status_code == 403 and response.json()["code"] == "origin_forbidden"
    assert not AccountCreationRequest.objects.exists()


def test_a_business_key_taken_by_another_origin_reveals_nothing(supplier, hr_request):
    response = supplier.submit(note_example(originSystem="SUPPLIER_SYSTEM", businessKey="HR-ONLY",
                                            systemList=["email"]))
    assert response.status_code == 202
    assert response.json()["requestId"] != hr_request


# --- Operator-only and staff-only --------------------------------------------------------------------

OPERATOR_ONLY = [("post", "/task-management/sync_hr_persons/"), ("post", "/task-management/create_account_tasks/"),
                 ("post", "/task-management/process_account_tasks/"), ("get", "/task-management/runs/")]


@pytest.mark.parametrize("method,path", OPERATOR_ONLY)
def test_operator_only_endpoints_refuse_origin_clients(hr_caller, method, path):
    response = hr_caller.post_json(path, {"mode": "run"}) if method == "post" else hr_caller.get(path)
    assert response.status_code == 403, response.content
    assert response.json()["code"] == "permission_denied"
    assert not TaskRun.objects.exists()


@pytest.mark.parametrize("method,path", OPERATOR_ONLY)
def test_operator_only_endpoints_admit_operators(operator_caller, method, path):
    response = (operator_caller.post_json(path, {"mode": "dry_run"}) if method == "post"
                else operator_caller.get(path))
    assert response.status_code == 200, response.content


@pytest.fixture
def clerk(client):
    """A logged-in Django user who is not staff."""
    get_user_model().objects.create_user("clerk", password="pw-for-tests-only")
    client.login(username="clerk", password="pw-for-tests-only")
    return client


@pytest.mark.parametrize("path", API_ROUTES)
def test_a_non_staff_session_is_refused_by_every_endpoint(clerk, path):
    response = clerk.get(path)
    assert response.status_code == 403, (path, response.content)


def test_a_staff_session_needs_the_csrf_token_to_run_a_stage():
    user = get_user_model().objects.create_user("op", password="pw-for-tests-only", is_staff=True)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    response = browser.post("/task-management/sync_hr_persons/", {"mode": "run"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["message"]
    assert not TaskRun.objects.exists()


@pytest.mark.parametrize("path", ["/admin/", "/admin/dashboard/", "/admin/syncservice/apiclient/",
                                  "/admin/syncservice/accountcreationrequest/", "/admin/taskmanagement/taskrun/"])
def test_the_admin_needs_a_staff_login(client, path):
    anonymous = client.get(path)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    get_user_model().objects.create_user("clerk", password="pw-for-tests-only")
    client.login(username="clerk", password="pw-for-tests-only")
    not_staff = client.get(path)
    assert not_staff.status_code == 302 and "/admin/login/" in not_staff["Location"]
    staff = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-for-tests-only")
    client.force_login(staff)
    assert client.get(path).status_code == 200


def test_an_api_token_does_not_open_the_admin(client, operator_caller):
    response = client.get("/admin/", HTTP_AUTHORIZATION=f"Bearer {operator_caller.token}")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


# --- Disabled and deleted clients ---------------------------------------------------------------------

@pytest.mark.parametrize("path", API_ROUTES)
def test_a_disabled_client_is_refused_at_once_everywhere(operator_caller, path):
    assert operator_caller.get("/account-creation/requests/").status_code == 200
    ApiClient.objects.filter(pk=operator_caller.api_client.pk).update(is_active=False)
    response = operator_caller.get(path)
    assert response.status_code == 401, (path, response.content)
    assert response.json()["code"] == "authentication_failed"


def test_a_disabled_origin_client_cannot_submit_or_read(hr_caller, hr_request):
    ApiClient.objects.filter(pk=hr_caller.api_client.pk).update(is_active=False)
    assert hr_caller.get(f"/account-creation/requests/{hr_request}/").status_code == 401
    assert hr_caller.submit(note_example(businessKey="AFTER")).status_code == 401
    ApiClient.objects.filter(pk=hr_caller.api_client.pk).update(is_active=True)
    assert hr_caller.get(f"/account-creation/requests/{hr_request}/").status_code == 200


def test_a_deleted_client_is_refused_at_once(hr_caller, hr_request):
    assert hr_caller.get(f"/account-creation/requests/{hr_request}/").status_code == 200
    ApiClient.objects.filter(pk=hr_caller.api_client.pk).delete()
    response = hr_caller.get(f"/account-creation/requests/{hr_request}/")
    assert response.status_code == 401 and response.json()["code"] == "authentication_failed"
    assert hr_caller.submit(note_example(businessKey="AFTER")).status_code == 401
    # Its requests stay, for the operators.
    assert AccountCreationRequest.objects.filter(request_id=hr_request, client__isnull=True).exists()


# --- Secrets at rest ---------------------------------------------------------------------------------

def every_stored_value() -> str:
    """Every row of every table of the service, as text."""
    dumped = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            dumped += [repr(row) for row in cursor.fetchall()]
    return "\n".join(dumped)


def test_tokens_are_stored_only_as_digests(make_caller):
    origin = make_caller("HR_SYSTEM")
    operator = make_caller("ops", operator=True)
    assert origin.submit(note_example()).status_code == 202

    stored = every_stored_value()
    for caller in (origin, operator):
        assert caller.token not in stored
        assert caller.token[len(ApiClient.TOKEN_PREFIX):][:16] not in stored  # not even a long piece of it
        with connection.cursor() as cursor:
            cursor.execute("SELECT token_hash, token_hint FROM syncservice_apiclient WHERE id = %s",
                           [caller.api_client.pk])
            token_hash, token_hint = cursor.fetchone()
        assert token_hash == hashlib.sha256(caller.token.encode()).hexdigest()
        assert len(token_hint) <= 10 and caller.token.startswith(token_hint)


def test_the_webhook_secret_is_stored_only_encrypted(hr_caller):
    secret = api_client_rotate_webhook_secret(client=hr_caller.api_client)

    stored = every_stored_value()
    assert secret not in stored
    assert secret[len("whsec_"):] not in stored
    with connection.cursor() as cursor:
        cursor.execute("SELECT webhook_secret_encrypted FROM syncservice_apiclient WHERE id = %s",
                       [hr_caller.api_client.pk])
        [encrypted] = cursor.fetchone()
    assert encrypted and secret not in encrypted
    assert api_client_webhook_secret(client=ApiClient.objects.get(pk=hr_caller.api_client.pk)) == secret


def test_authentication_compares_token_digests_in_constant_time():
    import inspect

    from syncservice.api import authentication

    source = inspect.getsource(authentication.BearerTokenAuthentication.authenticate)
    assert "hmac.compare_digest" in source and "hash_token" in source


def test_a_token_works_only_with_the_bearer_scheme_in_the_header(client, hr_caller, hr_request):
    path = f"/account-creation/requests/{hr_request}/"
    assert Caller(client, hr_caller.token).get(path).status_code == 200
    assert client.get(f"{path}?token={hr_caller.token}").status_code == 401
    assert client.get(path, HTTP_AUTHORIZATION=f"Token {hr_caller.token}").status_code == 401
