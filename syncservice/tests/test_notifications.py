"""Completion notifications: signed callbacks to a real receiver on loopback, retries, emails, the outbox.

The receiver is a real HTTP server in a thread that verifies every signature with the `standardwebhooks`
package (the reference implementation), not with the service's own signing code; for the https tests it
speaks TLS with certificates from a private CA made by `trustme`.
"""

import datetime as dt
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import pytest
import trustme
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from syncservice import selectors, validation
from syncservice.backends import reset_backends
from syncservice.models import Account, AccountCreationRequest, AccountCreationRequestItem, HrPerson, Notification
from syncservice.queue.outcomes import table_backoff_delay
from syncservice.services.clients import api_client_rotate_webhook_secret
from syncservice.services.intake import new_request_id
from syncservice.services.notifications import (
    NOTIFICATIONS,
    claim_due_notifications,
    deliver,
    deliver_due_notifications,
    notifications_enqueue,
    record_deliveries,
)
from syncservice.services.rollup import rollup_requests

from .fixtures import note_example

# Receivers and the process stage's backend threads work outside the test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)

STAGES = ["sync_hr_persons", "create_account_tasks", "process_account_creation_tasks"]
MOBILE_RE = re.compile(r"1[3-9]\d{9}")


@pytest.fixture(autouse=True)
def notification_settings(settings):
    settings.CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.CALLBACK_ALLOW_PRIVATE_NETWORKS = False
    settings.CALLBACK_TIMEOUT_SECONDS = 5.0
    settings.NOTIFICATION_RETRY_BASE_SECONDS = 0
    settings.NOTIFICATION_MAX_ATTEMPTS = 4
    settings.TASK_RETRY_BASE_SECONDS = 0
    reset_backends()
    yield
    reset_backends()


class Receiver:
    """A callback endpoint on loopback: verifies each delivery, answers from a script of status codes."""

    def __init__(self, secret: str, statuses=(), *, delay: float = 0.0, headers: dict | None = None,
                 tls: ssl.SSLContext | None = None):
        self.secret = secret
        self.scheme, self.host = ("https", "localhost") if tls else ("http", "127.0.0.1")
        self.statuses = list(statuses)  # answered in order; 204 once they run out
        self.delay = delay
        self.headers = headers or {}
        self.deliveries: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                try:
                    envelope = Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    envelope, verified = None, False
                with receiver.lock:
                    receiver.deliveries.append({"path": self.path, "headers": headers, "body": body,
                                                "verified": verified, "envelope": envelope})
                    status = (receiver.statuses.pop(0) if receiver.statuses else 204) if verified else 401
                if receiver.delay:
                    time.sleep(receiver.delay)
                try:
                    self.send_response(status)
                    for key, value in receiver.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting (the timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:  # the handshake happens on accept; a client that refuses the certificate never gets a request in
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hooks/accounts") -> str:
        return f"{self.scheme}://{self.host}:{self.server.server_address[1]}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    started = []

    def start(secret, statuses=(), **options) -> Receiver:
        receiver = Receiver(secret, statuses, **options)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.close()


@pytest.fixture
def secret(hr_caller) -> str:
    return api_client_rotate_webhook_secret(client=hr_caller.api_client)


def finished_request(client, *, callback_url: str = "", business_key: str = "B-1",
                     welink_fails_for_second: bool = False) -> AccountCreationRequest:
    """A processing request whose items are final, then rolled up: ends (and enqueues) the way stages do."""
    request = AccountCreationRequest.objects.create(
        request_id=new_request_id(), origin_system=client.origin_system, business_key=business_key,
        account_type="供应商", employee_type="1", system_list=["idaas", "welink"], status="processing",
        total_users=2, client=client, callback_url=callback_url, payload_fingerprint="-",
    )
    people = [("TEST001", "张三", "13800138001", False), ("TEST002", "李四", "13800138002", welink_fails_for_second)]
    for number, name, phone, fails in people:
        person, _ = HrPerson.objects.get_or_create(
            employee_number=number,
            defaults={"person_id": int(phone), "full_name": name, "telephone_number1": phone,
                      "email": f"{number.lower()}@example.com", "created_by": "account_creation_api",
                      "last_updated_by": "account_creation_api"},
        )
        for system in request.system_list:
            failed = fails and system == "welink"
            Account.objects.update_or_create(person=person, system=system, defaults={
                "status": "failed" if failed else "created", "external_id": "" if failed else f"{system}-{number}",
                # A vendor message quoting the phone number: the email must not repeat it.
                "error_message": f"[47001] 手机号 {phone} 已被其他账号绑定" if failed else ""})
        AccountCreationRequestItem.objects.create(
            request=request, employee_number=number, employee_name=name, department_code="D001",
            phone_number=phone, status="failed" if fails else "completed", hr_person=person)
    with transaction.atomic():
        rollup_requests([request.pk])
    request.refresh_from_db()
    assert request.is_final
    return request


def deliver_all(**options) -> dict:
    return deliver_due_notifications(worker="test-worker", **options)


def webhook_of(request) -> Notification:
    return Notification.objects.get(request=request, channel="webhook")


# --- Signed delivery -----------------------------------------------------------------------------

def test_callback_is_signed_the_standard_webhooks_way_and_carries_the_status_document(
        hr_caller, secret, receivers):
    receiver = receivers(secret)
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    counts = deliver_all()

    assert counts["delivered"] == 1 and counts["failed"] == 0
    [delivery] = receiver.deliveries
    assert delivery["verified"] and delivery["path"] == "/hooks/accounts"
    headers = delivery["headers"]
    notification = webhook_of(request)
    assert re.fullmatch(r"msg_[0-9a-f]{32}", headers["webhook-id"]) and headers["webhook-id"] == notification.message_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    envelope = delivery["envelope"]
    assert envelope["type"] == "account_creation.request.finished"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", envelope["timestamp"])
    assert envelope["data"] == json.loads(json.dumps(selectors.request_document(request)))
    assert envelope["data"]["status"] == "completed"
    notification.refresh_from_db()
    assert notification.status == "delivered" and notification.attempts == 1
    assert notification.last_status_code == 204 and notification.delivered_at is not None


def test_receiver_holding_another_secret_refuses_the_signature(hr_caller, secret, receivers):
    # The receiver's check is real: with a different secret it refuses, and the service keeps retrying.
    receiver = receivers(secret.replace(secret[-8:-2], "AAAAAA"))
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    deliver_all(limit=1)

    assert [d["verified"] for d in receiver.deliveries] == [False]
    notification = webhook_of(request)
    assert notification.status == "pending" and notification.last_status_code == 401


def test_receiver_failing_twice_with_503_gets_the_callback_on_the_third_attempt(hr_caller, secret, receivers):
    receiver = receivers(secret, [503, 503])
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    counts = deliver_all()

    assert counts["delivered"] == 1 and counts["claimed"] == 3
    assert len(receiver.deliveries) == 3 and all(d["verified"] for d in receiver.deliveries)
    # One message, three attempts: the id stays, so the receiver can drop duplicates.
    assert len({d["headers"]["webhook-id"] for d in receiver.deliveries}) == 1
    notification = webhook_of(request)
    assert notification.status == "delivered" and notification.attempts == 3
    assert notification.last_error == ""


def test_failed_delivery_waits_for_retry_after(hr_caller, secret, receivers):
    receiver = receivers(secret, [503], headers={"Retry-After": "120"})
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    counts = deliver_all()

    assert counts["retried"] == 1 and len(receiver.deliveries) == 1  # not due again within this run
    notification = webhook_of(request)
    assert notification.status == "pending" and notification.last_status_code == 503
    assert notification.last_error == "HTTP 503"
    assert notification.next_attempt_at >= timezone.now() + dt.timedelta(seconds=115)


def test_retry_delay_grows_exponentially_up_to_the_cap(settings):
    settings.NOTIFICATION_RETRY_BASE_SECONDS = 10
    settings.NOTIFICATION_RETRY_MAX_SECONDS = 100
    for attempts, low, high in [(1, 5, 10), (2, 10, 20), (3, 20, 40), (8, 50, 100)]:
        delays = [table_backoff_delay(NOTIFICATIONS, attempts) for _ in range(50)]
        assert all(low <= d <= high for d in delays), (attempts, min(delays), max(delays))
    assert table_backoff_delay(NOTIFICATIONS, 1, retry_after=70) >= 70
    assert table_backoff_delay(NOTIFICATIONS, 1, retry_after=5000) <= 100


def test_receiver_that_never_accepts_ends_failed_after_max_attempts(hr_caller, secret, receivers):
    receiver = receivers(secret, [500] * 10)
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    counts = deliver_all()

    assert counts["failed"] == 1 and counts["delivered"] == 0
    assert len(receiver.deliveries) == 4
    notification = webhook_of(request)
    assert notification.status == "failed" and notification.attempts == 4
    assert notification.last_error == "gave up after 4 attempts: HTTP 500"
    assert deliver_all()["claimed"] == 0  # failed for good: nothing more is sent


def test_a_receiver_slower_than_the_timeout_is_retried(hr_caller, secret, receivers, settings):
    settings.CALLBACK_TIMEOUT_SECONDS = 0.3
    receiver = receivers(secret, delay=1.5)
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    started = time.monotonic()
    counts = deliver_all(limit=1)

    assert time.monotonic() - started < 1.4
    assert counts["retried"] == 1 and len(receiver.deliveries) == 1
    notification = webhook_of(request)
    assert notification.status == "pending" and notification.last_status_code is None
    assert "within 0.3 s (timeout)" in notification.last_error


def test_refused_connection_is_retried(hr_caller, secret):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    request = finished_request(hr_caller.api_client, callback_url=f"http://127.0.0.1:{port}/cb")

    deliver_all(limit=1)

    notification = webhook_of(request)
    assert notification.status == "pending"
    assert notification.last_error.startswith(f"connection to 127.0.0.1:{port} failed")
    assert "ConnectionRefusedError" in notification.last_error


def test_redirects_are_not_followed(hr_caller, secret, receivers):
    receiver = receivers(secret, [302], headers={"Location": "/elsewhere"})
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    deliver_all(limit=1)

    assert [d["path"] for d in receiver.deliveries] == ["/hooks/accounts"]
    notification = webhook_of(request)
    assert notification.status == "pending" and notification.last_status_code == 302
    assert notification.last_error == "HTTP 302: redirects are not followed"


# --- https callbacks: a TLS receiver on loopback, certificates from a private CA ---------------------

@pytest.fixture
def internal_ca(settings) -> trustme.CA:
    """A private CA, as an enterprise's internal receivers have; `localhost` allowed as a callback host."""
    settings.CALLBACK_ALLOWED_HOSTS = ["localhost"]
    return trustme.CA(organization_name="Internal Test CA")


@pytest.fixture
def internal_ca_file(internal_ca, tmp_path) -> str:
    """The private CA's certificate as a PEM file, what CALLBACK_CA_BUNDLE names."""
    path = tmp_path / "internal-ca.pem"
    internal_ca.cert_pem.write_to_path(str(path))
    return str(path)


def served_by(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def test_https_callback_to_an_internal_receiver_is_verified_against_the_configured_ca(
        hr_caller, secret, receivers, internal_ca, internal_ca_file, settings):
    settings.CALLBACK_CA_BUNDLE = internal_ca_file
    receiver = receivers(secret, tls=served_by(internal_ca, "localhost"))
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())
    assert request.callback_url.startswith("https://localhost:")

    counts = deliver_all()

    assert counts["delivered"] == 1
    [delivery] = receiver.deliveries
    assert delivery["verified"] and delivery["envelope"]["data"]["status"] == "completed"
    assert delivery["headers"]["host"] == f"localhost:{receiver.server.server_address[1]}"
    assert webhook_of(request).status == "delivered"


def test_https_callback_with_a_certificate_the_service_does_not_trust_is_not_sent(
        hr_caller, secret, receivers, internal_ca, settings):
    settings.CALLBACK_CA_BUNDLE = ""  # the public CAs only: the internal CA is unknown
    receiver = receivers(secret, tls=served_by(internal_ca, "localhost"))
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    counts = deliver_all(limit=1)

    assert counts["delivered"] == 0 and receiver.deliveries == []
    notification = webhook_of(request)
    assert notification.status == "pending" and notification.attempts == 1  # retried: the CA may be added
    assert "CERTIFICATE_VERIFY_FAILED" in notification.last_error
    assert "unable to get local issuer certificate" in notification.last_error


def test_https_callback_to_a_receiver_whose_certificate_names_another_host_is_not_sent(
        hr_caller, secret, receivers, internal_ca, internal_ca_file, settings):
    settings.CALLBACK_CA_BUNDLE = internal_ca_file
    receiver = receivers(secret, tls=served_by(internal_ca, "hooks.internal.example"))
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())

    deliver_all(limit=1)

    assert receiver.deliveries == []
    notification = webhook_of(request)
    assert notification.status == "pending"
    assert notification.last_error.endswith(
        "CertificateError: hostname 'localhost' doesn't match 'hooks.internal.example'")


def test_a_ca_bundle_that_is_not_a_file_stops_the_service_at_start(tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings", "DJANGO_DEBUG": "1",
           "CALLBACK_CA_BUNDLE": str(missing)}
    run = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env,
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert f"CALLBACK_CA_BUNDLE='{missing}' is not a readable file" in run.stderr


# --- Where callbacks may go ----------------------------------------------------------------------

def callback_errors(response) -> list[dict]:
    return [e for e in response.json()["errors"] if e["field"] == "callbackUrl"]


@pytest.mark.parametrize("url, says", [
    ("http://hooks.partner.example/cb", "https://"),
    ("ftp://hooks.partner.example/cb", "https://"),
    ("https://10.0.0.8/cb", "私有"),
    ("https://192.168.1.20:8443/cb", "私有"),
    ("https://localhost/cb", "127.0.0.1"),
    ("https://169.254.169.254/latest/meta-data/", "私有"),
    ("https://[::1]/cb", "私有"),
    ("https://[::ffff:10.0.0.8]/cb", "私有"),
    ("https://0.0.0.0/cb", "私有"),
    ("https://user:pass@hooks.partner.example/cb", "用户名和密码"),
    ("https://hooks.partner.example/" + "a" * 2048, "2048"),
    ("https:///cb", "主机名"),
    ("https://no-such-host.invalid/cb", "无法解析"),
])
def test_create_accounts_refuses_a_forbidden_callback_url(hr_caller, url, says):
    response = hr_caller.submit(note_example(callbackUrl=url))

    assert response.status_code == 400, response.content
    [error] = callback_errors(response)
    assert error["code"] == "invalid_callback_url"
    assert says in error["message"]
    assert not AccountCreationRequest.objects.exists()


def test_plain_http_to_loopback_needs_the_allow_list(hr_caller, secret, settings):
    url = "http://127.0.0.1:9/cb"
    settings.CALLBACK_ALLOWED_HOSTS = []
    refused = hr_caller.submit(note_example(callbackUrl=url))
    assert refused.status_code == 400 and callback_errors(refused)[0]["code"] == "invalid_callback_url"

    settings.CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    accepted = hr_caller.submit(note_example(callbackUrl=url))
    assert accepted.status_code == 202, accepted.content
    assert AccountCreationRequest.objects.get().callback_url == url


def test_public_https_callback_is_accepted_and_private_ones_only_when_allowed(hr_caller, secret, settings):
    public = hr_caller.submit(note_example(businessKey="PUBLIC", callbackUrl="https://93.184.215.14/cb?x=1"))
    assert public.status_code == 202, public.content

    settings.CALLBACK_ALLOW_PRIVATE_NETWORKS = True
    private = hr_caller.submit(note_example(businessKey="PRIVATE", callbackUrl="https://10.0.0.8/cb"))
    assert private.status_code == 202, private.content
    still_https = hr_caller.submit(note_example(businessKey="HTTP", callbackUrl="http://10.0.0.8/cb"))
    assert still_https.status_code == 400


def test_callback_url_is_part_of_the_idempotency_fingerprint(hr_caller, secret):
    first = hr_caller.submit(note_example(callbackUrl="http://127.0.0.1:9/cb"))
    same = hr_caller.submit(note_example(callbackUrl="http://127.0.0.1:9/cb"))
    other = hr_caller.submit(note_example(callbackUrl="http://127.0.0.1:9/other"))

    assert first.status_code == 202
    assert same.status_code == 200 and same.json()["requestId"] == first.json()["requestId"]
    assert other.status_code == 409


def test_callback_resolving_to_a_private_address_at_delivery_fails_without_retry(
        hr_caller, secret, monkeypatch):
    # DNS cannot be steered here, so the resolver is replaced: the name resolves to a public address at
    # intake and to loopback by the time of delivery (DNS rebinding).
    answers = {"callbacks.partner.example": ["93.184.215.14"]}
    monkeypatch.setattr(validation, "resolve_host", lambda host, port: answers[host])
    url = "https://callbacks.partner.example/cb"
    assert hr_caller.submit(note_example(callbackUrl=url)).status_code == 202
    request = finished_request(hr_caller.api_client, callback_url=url)
    answers["callbacks.partner.example"] = ["93.184.215.14", "127.0.0.1"]

    counts = deliver_all()

    assert counts["failed"] == 1 and counts["claimed"] == 1
    notification = webhook_of(request)
    assert notification.status == "failed" and notification.attempts == 1
    assert notification.last_error.startswith("callback URL refused at delivery:")
    assert "127.0.0.1" in notification.last_error


def test_callback_host_taken_off_the_allow_list_is_not_called(hr_caller, secret, receivers, settings):
    receiver = receivers(secret)
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())
    settings.CALLBACK_ALLOWED_HOSTS = []

    deliver_all()

    assert receiver.deliveries == []
    notification = webhook_of(request)
    assert notification.status == "failed" and "https://" in notification.last_error


# --- Email ---------------------------------------------------------------------------------------

def test_operators_get_an_email_in_chinese_without_phone_numbers(hr_caller, mailoutbox, settings):
    settings.DEFAULT_FROM_EMAIL = "provisioning@example.com"
    client = hr_caller.api_client
    client.notify_email = "ops@example.com"
    client.save(update_fields=["notify_email"])
    request = finished_request(client, welink_fails_for_second=True)

    counts = deliver_all()

    assert counts["delivered"] == 1
    [mail] = mailoutbox
    assert mail.to == ["ops@example.com"] and mail.from_email == "provisioning@example.com"
    assert mail.subject == f"账号创建请求 {request.request_id} 已完成（部分失败）"
    assert "状态：部分失败（partial_failed）" in mail.body
    assert "总人数：2；成功 1 人，失败 1 人，已取消 0 人" in mail.body
    assert "- WeLink：[47001] 手机号 138****8002 已被其他账号绑定（1 人）：TEST002" in mail.body
    assert not MOBILE_RE.search(mail.subject + mail.body)
    assert Notification.objects.get(request=request, channel="email").status == "delivered"
    assert not Notification.objects.filter(channel="webhook").exists()  # no callbackUrl given


def test_unreachable_smtp_server_is_retried(hr_caller, settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    client = hr_caller.api_client
    client.notify_email = "ops@example.com"
    client.save(update_fields=["notify_email"])
    request = finished_request(client)

    deliver_all(limit=1)

    notification = Notification.objects.get(request=request)
    assert notification.channel == "email" and notification.status == "pending"
    assert notification.last_error.startswith("ConnectionRefusedError")


# --- The outbox ----------------------------------------------------------------------------------

def test_one_notification_per_final_state(hr_caller, secret):
    client = hr_caller.api_client
    client.notify_email = "ops@example.com"
    client.save(update_fields=["notify_email"])
    request = finished_request(client, callback_url="http://127.0.0.1:9/cb")

    with transaction.atomic():
        notifications_enqueue(requests=[request])
        rollup_requests([request.pk])  # already final: no new end, no new notification

    assert sorted(Notification.objects.values_list("channel", flat=True)) == ["email", "webhook"]

    # Reopened (as a retry does) and ended again: a new final state, new notifications.
    AccountCreationRequest.objects.filter(pk=request.pk).update(status="processing")
    with transaction.atomic():
        assert rollup_requests([request.pk]) == 1
    assert Notification.objects.filter(channel="webhook").count() == 2
    assert Notification.objects.filter(channel="email").count() == 2


def test_a_callback_url_from_a_client_without_a_webhook_secret_is_refused_at_intake(hr_caller):
    response = hr_caller.submit(note_example(callbackUrl="http://127.0.0.1:9/cb"))

    assert response.status_code == 400
    [error] = callback_errors(response)
    assert error["code"] == "no_webhook_secret"
    assert "--rotate-webhook-secret" in error["message"]
    assert not AccountCreationRequest.objects.exists()


def test_no_webhook_without_a_webhook_secret(hr_caller, caplog):
    request = finished_request(hr_caller.api_client, callback_url="http://127.0.0.1:9/cb")

    assert not Notification.objects.filter(request=request).exists()
    assert "has no webhook secret" in caplog.text


def test_enqueue_takes_the_same_queries_for_one_request_as_for_many(hr_caller, secret):
    client = hr_caller.api_client
    client.notify_email = "ops@example.com"
    client.save(update_fields=["notify_email"])
    requests = [finished_request(client, callback_url="http://127.0.0.1:9/cb", business_key=f"B{i}",
                                 welink_fails_for_second=bool(i % 2)) for i in range(5)]

    def queries_to_enqueue(batch) -> int:
        Notification.objects.all().delete()
        with transaction.atomic(), CaptureQueriesContext(connection) as queries:
            notifications_enqueue(requests=batch)
        return len(queries)

    assert queries_to_enqueue(requests[:1]) == queries_to_enqueue(requests)
    assert Notification.objects.count() == 10
    payload = Notification.objects.get(request=requests[3], channel="webhook").payload
    assert payload["data"] == json.loads(json.dumps(selectors.request_document(requests[3])))


def test_late_result_of_an_expired_claim_is_discarded(hr_caller, secret, receivers):
    receiver = receivers(secret)
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())
    first_token, [first] = claim_due_notifications(worker="slow", limit=10)
    # The first sender stalls past its lease; another worker claims the notification again.
    Notification.objects.update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    second_token, [second] = claim_due_notifications(worker="fast", limit=10)
    assert first_token != second_token and second.job.attempts == 2

    late = deliver(first)
    verdicts, fenced = record_deliveries([late])

    assert fenced == 1 and not verdicts
    notification = webhook_of(request)
    assert notification.status == "sending" and notification.lease_token == second_token

    verdicts, fenced = record_deliveries([deliver(second)])
    assert verdicts == {"delivered": 1} and fenced == 0
    assert webhook_of(request).status == "delivered"


def test_the_webhook_secret_appears_in_no_log_error_or_admin_page(hr_caller, secret, receivers, caplog, client):
    caplog.set_level("DEBUG")
    ok = receivers(secret)
    failing = receivers(secret, [500] * 10)
    finished_request(hr_caller.api_client, callback_url=ok.url(), business_key="OK")
    finished_request(hr_caller.api_client, callback_url=failing.url("/cb?token=receiver-token-123"),
                     business_key="FAILING")

    deliver_all()

    admin = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw-for-tests-only")
    client.force_login(admin)
    pages = "".join(client.get(path).content.decode() for path in (
        "/admin/syncservice/notification/", "/admin/syncservice/apiclient/",
        f"/admin/syncservice/apiclient/{hr_caller.api_client.pk}/change/"))
    key = secret.removeprefix("whsec_")
    errors = " ".join(Notification.objects.values_list("last_error", flat=True))
    for text in (caplog.text, errors, pages):
        assert key not in text
    assert "gave up after 4 attempts" in errors
    assert "receiver-token-123" not in pages  # only the host of a callback URL is shown


# --- Admin ---------------------------------------------------------------------------------------

def test_admin_lists_notifications_and_resends_failed_ones(staff_client, hr_caller, secret, receivers):
    receiver = receivers(secret, [500] * 4)
    request = finished_request(hr_caller.api_client, callback_url=receiver.url())
    deliver_all()
    notification = webhook_of(request)
    assert notification.status == "failed"

    page = staff_client.get("/admin/syncservice/notification/?status__exact=failed").content.decode()
    assert notification.message_id in page
    assert f"http://127.0.0.1:{receiver.server.server_address[1]}/…" in page
    assert "/hooks/accounts" not in page

    response = staff_client.post("/admin/syncservice/notification/",
                                 {"action": "resend", "_selected_action": [notification.pk]})
    assert response.status_code == 302
    notification.refresh_from_db()
    assert notification.status == "pending" and notification.attempts == 0

    assert deliver_all()["delivered"] == 1  # the receiver accepts now
    assert webhook_of(request).status == "delivered"


def test_admin_shows_whether_a_client_has_a_webhook_secret(staff_client, make_caller):
    alpha = make_caller("ALPHA")
    make_caller("BRAVO")
    api_client_rotate_webhook_secret(client=alpha.api_client)

    page = staff_client.get("/admin/syncservice/apiclient/").content.decode()

    table_rows = [chunk.split("</tr>")[0] for chunk in page.split("<tr")]
    rows = {name: row for row in table_rows for name in ("ALPHA", "BRAVO") if f">{name}</a>" in row}
    # Both are active; only ALPHA has a secret.
    assert rows["ALPHA"].count('alt="True"') == 2 and rows["BRAVO"].count('alt="True"') == 1
    form = staff_client.get(f"/admin/syncservice/apiclient/{alpha.api_client.pk}/change/").content.decode()
    assert 'name="notify_email"' in form
    assert "webhook_secret" not in form.replace("has_webhook_secret", "")


# --- End to end ----------------------------------------------------------------------------------

def stage(name: str) -> str:
    out = StringIO()
    call_command(name, stdout=out)
    return out.getvalue().strip()


def test_submitted_request_with_callback_url_reports_its_final_document_to_the_receiver(
        hr_caller, secret, receivers):
    receiver = receivers(secret)
    response = hr_caller.submit(note_example(callbackUrl=receiver.url()))
    assert response.status_code == 202, response.content
    request_id = response.json()["requestId"]

    lines = [stage(name) for name in STAGES]

    assert lines[2].endswith("; 1 notification(s) delivered"), lines[2]
    [delivery] = receiver.deliveries
    assert delivery["verified"]
    document = delivery["envelope"]["data"]
    assert document["requestId"] == request_id and document["status"] == "completed"
    assert document["processedUsers"] == 2
    assert {a["status"] for item in document["items"] for a in item["accounts"]} == {"created"}
    assert document == hr_caller.get(f"/account-creation/requests/{request_id}/").json()
