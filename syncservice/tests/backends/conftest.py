"""Fixtures: the simulators and a real scim2-server on loopback, and settings pointing the backends at them."""

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from django.db import connection

from syncservice.backends import pacing, reset_backends
from syncservice.backends.base import PersonSnapshot
from syncservice.models import TargetThrottle
from syncservice.simulators import exmail, hr, proxy, welink

SCIM_TOKEN = "scim-test-token"
WELINK_SECRET = "welink-secret-value"
EXMAIL_SECRET = "exmail-secret-value"
HR_TOKEN = "hr-token-value"

_numbers = itertools.count(1)
_run = os.urandom(3).hex()  # the SCIM server lives for the session: keep userNames unique across tests


def make_person(**overrides) -> PersonSnapshot:
    n = next(_numbers)
    fields = {
        "person_pk": n, "person_id": 100_000 + n, "employee_number": f"E{_run}{n:04d}",
        "full_name": "张三", "email": f"zhangsan{_run}{n}@example.com", "phone_number": f"138{n:08d}",
        "department_code": "D001", "person_type": "供应商",
    }
    fields.update(overrides)
    return PersonSnapshot(**fields)


def paced_endpoints(system: str) -> set[str]:
    """The endpoints of `system` that took pacing slots: shared rows on PostgreSQL, in-process ones on SQLite."""
    if connection.vendor == "postgresql":
        return set(TargetThrottle.objects.filter(system=system).values_list("endpoint", flat=True))
    return {endpoint for paced, endpoint in pacing._local_next if paced == system}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def backend_settings(settings, db):
    """Test settings for the HTTP backends; backends are rebuilt before and after the test.

    Needs the database: a rate-limit answer pauses its system in the shared TargetThrottle row.
    """
    settings.TARGET_HTTP_TIMEOUT_SECONDS = 2.0
    settings.TASK_RETRY_BASE_SECONDS = 0
    settings.TASK_ASYNC_POLL_SECONDS = 0
    settings.TASK_MAX_ATTEMPTS = 8
    settings.WELINK_MAX_CALLS_PER_SECOND = 0
    settings.MAILBOX_MAX_CALLS_PER_SECOND = 0
    settings.WELINK_MAX_CALLS_PER_SECOND_PER_API = 0
    settings.MAILBOX_MAX_CALLS_PER_MINUTE_PER_CGI = 0
    settings.MAILBOX_MAX_CALLS_PER_HOUR_PER_CGI = 0
    settings.HR_HTTP_RETRIES = 0
    reset_backends()
    yield settings
    reset_backends()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def welink_sim(backend_settings):
    server, url = welink.start(client_secret=WELINK_SECRET, polls_before_open=2)
    backend_settings.WELINK_BACKEND = "welink"
    backend_settings.WELINK_API_URL = url
    backend_settings.WELINK_CLIENT_ID = "welink-client"
    backend_settings.WELINK_CLIENT_SECRET = WELINK_SECRET
    yield server.app
    welink.stop(server)


@pytest.fixture
def exmail_sim(backend_settings):
    server, url = exmail.start(corp_secret=EXMAIL_SECRET)
    backend_settings.MAILBOX_BACKEND = "exmail"
    backend_settings.EXMAIL_API_URL = url
    backend_settings.EXMAIL_CORP_ID = "exmail-corp"
    backend_settings.EXMAIL_CORP_SECRET = EXMAIL_SECRET
    backend_settings.EXMAIL_DEPARTMENT_ID = "1"
    yield server.app
    exmail.stop(server)


@pytest.fixture
def hr_sim(backend_settings):
    server, url = hr.start(token=HR_TOKEN)
    backend_settings.HR_BACKEND = "http"
    backend_settings.HR_API_URL = url
    backend_settings.HR_API_TOKEN = HR_TOKEN
    yield server.app
    hr.stop(server)


def _scim2_server_command() -> str:
    found = shutil.which("scim2-server", path=str(Path(sys.executable).parent)) or shutil.which("scim2-server")
    if found is None:
        pytest.fail("scim2-server is not installed: pip install -r requirements-dev.txt")
    return found


def _scim2_server(*options: str):
    """Start a real scim2-server (from PyPI) on a free loopback port; yield its URL, stop it afterwards."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- open while the server runs, closed at teardown
    process = subprocess.Popen([_scim2_server_command(), "--port", str(port), "--bearer-token", SCIM_TOKEN,
                                *options], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"{url}/ServiceProviderConfig", timeout=1,
                            headers={"Authorization": f"Bearer {SCIM_TOKEN}"}).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.seek(0)
            pytest.fail(f"scim2-server did not start: {log.read().decode(errors='replace')[-2000:]}")
        time.sleep(0.1)
    yield url
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="session")
def scim_server_url():
    """A real scim2-server for the whole session."""
    yield from _scim2_server()


class Scim:
    """The SCIM server as the test sees it: `proxy` (fault switches, call counts) and direct access."""

    def __init__(self, url: str, proxy_app):
        self.url = url
        self.proxy = proxy_app
        self.headers = {"Authorization": f"Bearer {SCIM_TOKEN}", "Content-Type": "application/scim+json"}

    def create_user(self, **user) -> dict:
        body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], **user}
        response = requests.post(f"{self.url}/Users", json=body, headers=self.headers, timeout=5)
        assert response.status_code == 201, response.text
        return response.json()

    def users_named(self, user_name: str) -> list[dict]:
        response = requests.get(f"{self.url}/Users", params={"filter": f'userName eq "{user_name}"'},
                                headers=self.headers, timeout=5)
        assert response.status_code == 200, response.text
        return response.json().get("Resources", [])

    def get_user(self, user_id: str) -> dict:
        response = requests.get(f"{self.url}/Users/{user_id}", headers=self.headers, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()


def _scim_through_proxy(backend_settings, upstream: str):
    """Point the IDaaS backend at a scim2-server through the fault-injecting proxy; yield the Scim view."""
    server, url = proxy.start(upstream=upstream)
    backend_settings.IDAAS_BACKEND = "scim"
    backend_settings.IDAAS_SCIM_URL = url
    backend_settings.IDAAS_SCIM_TOKEN = SCIM_TOKEN
    yield Scim(upstream, server.app)
    proxy.stop(server)


@pytest.fixture
def scim(backend_settings, scim_server_url):
    """The IDaaS backend pointed at scim2-server through a fault-injecting proxy."""
    yield from _scim_through_proxy(backend_settings, scim_server_url)


# A service provider that announces no PATCH (RFC 7644 §5): scim2-server then answers PATCH with 501.
SERVICE_PROVIDER_CONFIG_WITHOUT_PATCH = {
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
    "patch": {"supported": False},
    "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
    "filter": {"supported": True, "maxResults": 1000},
    "changePassword": {"supported": False},
    "sort": {"supported": False},
    "etag": {"supported": True},
    "authenticationSchemes": [],
}


def _scim2_server_configured(tmp_path_factory, config: dict):
    """A real scim2-server whose /ServiceProviderConfig is `config`."""
    path = tmp_path_factory.mktemp("scim") / "service-provider-config.json"
    path.write_text(json.dumps(config))
    yield from _scim2_server("--service-provider-config", str(path))


@pytest.fixture(scope="session")
def scim_without_patch_server_url(tmp_path_factory):
    """A second real scim2-server, one that does not support PATCH, for the GET + PUT fallback."""
    yield from _scim2_server_configured(tmp_path_factory, SERVICE_PROVIDER_CONFIG_WITHOUT_PATCH)


@pytest.fixture
def scim_without_patch(backend_settings, scim_without_patch_server_url):
    """The IDaaS backend pointed, through the proxy, at the scim2-server that has no PATCH."""
    yield from _scim_through_proxy(backend_settings, scim_without_patch_server_url)


# A service provider whose searches answer at most two users a page, whatever `count` asks (RFC 7644 §3.4.2.4
# lets a server return fewer): maxResults bounds the count in scim2-server.
SERVICE_PROVIDER_CONFIG_WITH_SMALL_PAGES = {
    **SERVICE_PROVIDER_CONFIG_WITHOUT_PATCH,
    "patch": {"supported": True},
    "filter": {"supported": True, "maxResults": 2},
}


@pytest.fixture(scope="session")
def scim_small_pages_server_url(tmp_path_factory):
    """A third real scim2-server, one that answers pages of at most two users."""
    yield from _scim2_server_configured(tmp_path_factory, SERVICE_PROVIDER_CONFIG_WITH_SMALL_PAGES)


@pytest.fixture
def scim_small_pages(backend_settings, scim_small_pages_server_url):
    """The IDaaS backend pointed, through the proxy, at the scim2-server with pages of two."""
    yield from _scim_through_proxy(backend_settings, scim_small_pages_server_url)


# A service provider that takes at most two operations per POST /Bulk.
SERVICE_PROVIDER_CONFIG_WITH_SMALL_BULK = {
    **SERVICE_PROVIDER_CONFIG_WITHOUT_PATCH,
    "patch": {"supported": True},
    "bulk": {"supported": True, "maxOperations": 2, "maxPayloadSize": 1048576},
}


@pytest.fixture(scope="session")
def scim_small_bulk_server_url(tmp_path_factory):
    """A fourth real scim2-server, one whose Bulk requests take at most two operations."""
    yield from _scim2_server_configured(tmp_path_factory, SERVICE_PROVIDER_CONFIG_WITH_SMALL_BULK)


@pytest.fixture
def scim_small_bulk(backend_settings, scim_small_bulk_server_url):
    """The IDaaS backend pointed, through the proxy, at the scim2-server with maxOperations 2."""
    yield from _scim_through_proxy(backend_settings, scim_small_bulk_server_url)
