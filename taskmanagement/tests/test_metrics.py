"""GET /metrics: off unless enabled, only with its token, and every number the database's own."""

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db.models import Sum
from django.utils import timezone
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    TargetThrottle,
    TaskAttempt,
)
from syncservice.tests.fixtures import make_users, note_example, run_pipeline, stage

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-for-tests-only"
# A scrape reads: requests, items, tasks, accounts, notifications, target calls, the queue, pauses, stages.
SCRAPE_QUERIES = 9


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = TOKEN


def scrape(client, token=TOKEN, **headers):
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client.get("/metrics", **headers)


def samples(text: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted (label, value) pairs: value}} of a text-format scrape."""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def by_system_and_status(model) -> dict[tuple, float]:
    counts = Counter(model.objects.values_list("status", "system"))
    return {(("status", status), ("system", system)): n for (status, system), n in counts.items()}


def nonzero(values: dict[tuple, float]) -> dict[tuple, float]:
    return {key: value for key, value in values.items() if value}


@pytest.fixture
def pipeline_with_failures(hr_caller, settings, fast_retries):
    """A finished request whose tasks failed once each (and user 002's WeLink for good), a second request's
    tasks due and untried, and WeLink paused by a rate-limit answer."""
    settings.LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT = 1
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"002$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["idaas", "welink"]
    hr_caller.submit(note_example())
    run_pipeline(rounds=2)
    hr_caller.submit(note_example(businessKey="LATER", userList=make_users(5)))
    stage("sync_hr_persons")
    stage("create_account_tasks")
    TargetThrottle.objects.create(system="welink", paused_until=timezone.now() + dt.timedelta(minutes=2),
                                  pause_reason="48503 too many requests")
    # A pause per endpoint: the system counts as paused until its last endpoint pause ends.
    TargetThrottle.objects.create(system="welink", endpoint="/api/contact/v1/users/status",
                                  paused_until=timezone.now() + dt.timedelta(seconds=30), pause_reason="48503")
    TargetThrottle.objects.create(system="email", endpoint="/cgi-bin/user/create",
                                  paused_until=timezone.now() - dt.timedelta(seconds=30), pause_reason="45009")


METHODS = ["get", "post", "put", "patch", "delete", "options", "head"]


@pytest.mark.parametrize("method", METHODS)
def test_metrics_are_404_unless_enabled(client, settings, method):
    settings.METRICS_ENABLED = False
    settings.METRICS_TOKEN = TOKEN
    assert getattr(client, method)("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = ""  # never open to anyone: settings refuse to start like this
    assert scrape(client, token="").status_code == 404


def test_the_settings_refuse_to_load_with_metrics_enabled_and_no_token():
    env = {**os.environ, "METRICS_ENABLED": "1", "METRICS_TOKEN": " "}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=django_settings.BASE_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "METRICS_TOKEN must be set when METRICS_ENABLED is on" in result.stderr


@pytest.mark.parametrize("authorization,code", [
    (None, "not_authenticated"),
    ("Bearer", "not_authenticated"),
    (f"Basic {TOKEN}", "not_authenticated"),
    ("Bearer wrong-token", "authentication_failed"),
    (f"Bearer {TOKEN}x", "authentication_failed"),
    (f"Bearer {TOKEN[:-1]}", "authentication_failed"),
])
def test_a_missing_or_wrong_token_is_refused_in_the_error_shape(client, metrics_on, authorization, code):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    response = client.get("/metrics", **headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["success"] is False and body["code"] == code and body["errors"] == []
    assert "aps_" not in response.content.decode()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_refused_without_the_token(client, metrics_on, method):
    response = getattr(client, method)("/metrics")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")


def test_an_api_clients_token_or_a_staff_login_does_not_open_the_metrics(client, metrics_on, operator_caller,
                                                                         staff_client):
    assert scrape(client, token=operator_caller.token).json()["code"] == "authentication_failed"
    assert scrape(staff_client, token=None).json()["code"] == "not_authenticated"


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_only_get_and_head_are_answered(client, metrics_on, method):
    response = getattr(client, method)("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405
    assert client.head("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_the_numbers_are_the_databases_after_a_run_with_injected_failures(client, metrics_on,
                                                                            pipeline_with_failures):
    response = scrape(client)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(response.content.decode())
    assert nonzero(found["aps_tasks"]) == by_system_and_status(AccountCreationTask)
    assert nonzero(found["aps_accounts"]) == by_system_and_status(Account)
    for name, model in (("aps_requests", AccountCreationRequest), ("aps_request_items", AccountCreationRequestItem)):
        assert nonzero(found[name]) == {(("status", s),): n for s, n in Counter(
            model.objects.values_list("status", flat=True)).items()}
    assert len(found["aps_tasks"]) == 3 * len(AccountCreationTask.Status.values)  # zeros are present too

    calls = Counter(TaskAttempt.objects.values_list("task__system", "outcome", "code"))
    assert {"transient", "permanent", "created"} <= {outcome for _, outcome, _ in calls}
    assert found["aps_target_calls_total"] == {
        (("code", code), ("outcome", outcome), ("system", system)): n for (system, outcome, code), n in calls.items()}

    for system in ("idaas", "welink", "email"):
        attempts = TaskAttempt.objects.filter(task__system=system)
        label = (("system", system),)
        assert found["aps_target_call_duration_seconds_count"][label] == attempts.count()
        assert found["aps_target_call_duration_seconds_sum"][label] == pytest.approx(
            (attempts.aggregate(ms=Sum("duration_ms"))["ms"] or 0) / 1000)
        buckets = sorted((float(dict(key)["le"]), value)
                         for key, value in found["aps_target_call_duration_seconds_bucket"].items()
                         if dict(key)["system"] == system)
        assert buckets[-1] == (float("inf"), attempts.count())
        assert [value for _, value in buckets] == sorted(value for _, value in buckets)
        due = AccountCreationTask.objects.filter(system=system, status__in=["pending", "waiting"],
                                                 next_attempt_at__lte=timezone.now())
        assert found["aps_queue_due_tasks"][label] == due.count()
        assert (found["aps_queue_oldest_due_age_seconds"][label] > 0) == due.exists()
    assert sum(found["aps_queue_due_tasks"].values()) > 0  # the second request's tasks

    assert found["aps_target_paused"] == {(("system", "email"),): 0, (("system", "idaas"),): 0,
                                          (("system", "welink"),): 1}
    assert 60 < found["aps_target_pause_remaining_seconds"][(("system", "welink"),)] <= 120
    stages = {dict(key)["stage"] for key in found["aps_stage_last_checked_timestamp_seconds"]}
    assert stages == {"sync_hr_persons", "create_account_tasks", "process_account_creation_tasks"}
    assert set(found["aps_stage_last_run_succeeded"].values()) == {1}


def test_openmetrics_is_answered_to_a_scraper_that_asks_for_it(client, metrics_on, pipeline_with_failures):
    response = scrape(client, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0; charset=utf-8")

    assert response["Content-Type"].startswith("application/openmetrics-text")
    names = {family.name for family in parse_openmetrics(response.content.decode())}
    assert {"aps_target_calls", "aps_target_call_duration_seconds", "aps_tasks"} <= names


def test_a_scrape_takes_the_same_few_queries_whatever_the_data(client, metrics_on, pipeline_with_failures,
                                                                 django_assert_max_num_queries):
    with django_assert_max_num_queries(SCRAPE_QUERIES):
        assert scrape(client).status_code == 200


def test_an_empty_installation_scrapes_with_zeros_and_the_same_queries(client, metrics_on,
                                                                        django_assert_max_num_queries):
    with django_assert_max_num_queries(SCRAPE_QUERIES):
        found = samples(scrape(client).content.decode())
    assert found["aps_target_call_duration_seconds_count"] == {(("system", s),): 0 for s in ("email", "idaas",
                                                                                             "welink")}
    assert "aps_target_calls_total" not in found


def test_the_grafana_dashboard_uses_only_metrics_the_service_exposes(client, metrics_on, pipeline_with_failures):
    exposed = set(samples(scrape(client).content.decode()))
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions
    used = {word for expr in expressions for word in _metric_names(expr)}
    assert used and used <= exposed, used - exposed


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\baps_[a-z_]+\b", expr))
