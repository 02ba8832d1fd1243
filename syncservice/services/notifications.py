"""Completion notifications: an outbox filled when requests end, drained by the process stage.

`notifications_enqueue` runs inside the transaction that makes requests final, so a notification exists
exactly when the final status does. `deliver_due_notifications` claims due rows in a short transaction
(SKIP LOCKED, status `sending` under a lease token), sends outside any transaction and writes the results
back fenced by the lease token: a sender whose lease expired cannot overwrite the outcome of a newer claim.

Webhooks are signed the Standard Webhooks way: headers `webhook-id`, `webhook-timestamp` (unix seconds) and
`webhook-signature` = "v1," + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), where the client's
secret is "whsec_" + base64 of its key bytes. The callback URL is checked again right before each delivery,
and the connection goes to the very addresses that check approved, so that a DNS answer that changed since
intake (DNS rebinding) cannot point a callback at an internal host.
"""

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import smtplib
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import urllib3
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone
from requests.certs import where as ca_bundle_path

from config.logging import mask_phone

from ..backends.http import parse_retry_after
from ..models import (
    AccountCreationRequest,
    AccountCreationRequestItem,
    ApiClient,
    Notification,
    System,
)
from ..queue.engines import Claimed
from ..queue.executor import call_jobs
from ..queue.executor import run as run_jobs
from ..queue.handler import Handler
from ..queue.jobs import claim_due, record
from ..queue.outcomes import Decision, JobResult, Settled
from ..queue.table import JobTable
from ..selectors import (
    accounts_with_progress,
    iso_utc,
    item_counts_by_request,
    item_document,
    request_summary,
)
from ..validation import CallbackHostUnresolved, CallbackTarget, CallbackUrlRejected, check_callback_url
from .clients import WEBHOOK_SECRET_PREFIX, api_client_webhook_secret

logger = logging.getLogger(__name__)

Item = AccountCreationRequestItem
Request = AccountCreationRequest

EVENT_TYPE = "account_creation.request.finished"
USER_AGENT = "account-provisioning-webhooks/1.0"
MAX_RESPONSE_SNIPPET = 200
MAX_EMPLOYEE_NUMBERS_IN_EMAIL = 20

STATUS_PHRASES = {
    Request.Status.COMPLETED: "已完成",
    Request.Status.PARTIAL_FAILED: "已完成（部分失败）",
    Request.Status.FAILED: "失败",
    Request.Status.CANCELLED: "已取消",
}
SYSTEM_NAMES = dict(System.choices)

# Digit runs long enough to be a phone number (a vendor message may quote one): masked in emails. Wider
# than the logs' mask_phones, which knows phone formats: an email leaves the service, so any such run goes.
# ASCII classes on purpose: in "手机号13800138001" the number follows a CJK letter, which \w would match.
_phone_like_re = re.compile(r"(?<![0-9A-Za-z_+])\+?\d(?:[\d -]*\d){6,}(?![0-9A-Za-z_])")


# --- Enqueue -------------------------------------------------------------------------------------

def notifications_enqueue(*, requests: list[AccountCreationRequest]) -> int:
    """Queue the completion notifications of requests that have just ended; return how many were added.

    A webhook for each request with a callback URL whose client has a webhook secret, an email for each
    whose client has a notify address. Idempotent: a message id derives from the request's final state,
    so calling again for the same state adds nothing. A fixed number of queries whatever the number of
    requests; no network.
    """
    requests = [request for request in requests if request.is_final]
    client_ids = {request.client_id for request in requests if request.client_id}
    if not client_ids:
        return 0
    clients = {
        client.pk: client
        for client in ApiClient.objects.filter(pk__in=client_ids).only("id", "name", "webhook_secret_encrypted",
                                                                       "notify_email")
    }
    webhooks, emails = [], []
    for request in requests:
        client = clients.get(request.client_id)
        if client is None:
            continue
        if request.callback_url:
            if client.webhook_secret_encrypted:
                webhooks.append(request)
            else:
                # Never send a callback unsigned: the receiver could not tell it from a forgery.
                logger.warning("request %s has a callbackUrl but client %r has no webhook secret: no callback",
                               request.request_id, client.name)
        if client.notify_email:
            emails.append((request, client.notify_email))
    rows = []
    documents = status_documents(webhooks)
    for request in webhooks:
        rows.append(Notification(
            request=request, channel=Notification.Channel.WEBHOOK, target=request.callback_url,
            message_id=message_id(request, Notification.Channel.WEBHOOK),
            payload={"type": EVENT_TYPE, "timestamp": iso_utc(request.completed_at or timezone.now()),
                     "data": documents[request.pk]},
            max_attempts=settings.NOTIFICATION_MAX_ATTEMPTS,
        ))
    counts = item_counts_by_request(request_ids=[request.pk for request, _ in emails])
    for request, address in emails:
        rows.append(Notification(
            request=request, channel=Notification.Channel.EMAIL, target=address,
            message_id=message_id(request, Notification.Channel.EMAIL),
            payload=email_message(request, counts[request.pk]),
            max_attempts=settings.NOTIFICATION_MAX_ATTEMPTS,
        ))
    if not rows:
        return 0
    existing = set(Notification.objects.filter(message_id__in=[row.message_id for row in rows])
                   .values_list("message_id", flat=True))
    new = [row for row in rows if row.message_id not in existing]
    # ignore_conflicts: a concurrent enqueue of the same state must not abort the transaction that ends it.
    Notification.objects.bulk_create(new, ignore_conflicts=True)
    return len(new)


def message_id(request: AccountCreationRequest, channel: str) -> str:
    """The same id for the same final state of a request (a retried request that ends again gets a new one)."""
    ended = request.completed_at.isoformat() if request.completed_at else ""
    key = f"{request.request_id}|{request.status}|{ended}|{channel}"
    return "msg_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def status_documents(requests: list[AccountCreationRequest]) -> dict[int, dict]:
    """selectors.request_document for many requests at once, in two queries whatever their number."""
    if not requests:
        return {}
    request_ids = [request.pk for request in requests]
    items = defaultdict(list)
    for item in Item.objects.filter(request_id__in=request_ids).select_related("hr_person").order_by("id"):
        items[item.request_id].append(item)
    accounts, tasks = {}, {}
    if any(item.hr_person_id for group in items.values() for item in group):
        accounts, tasks = accounts_with_progress(
            person_ids=Item.objects.filter(request_id__in=request_ids).values("hr_person_id"),
            systems={system for request in requests for system in request.system_list})
    documents = {}
    for request in requests:
        # Built from the status document's own parts, so that the callback carries exactly what GET returns.
        document = request_summary(request)
        document["items"] = [item_document(item, request.system_list, accounts, tasks)
                             for item in items[request.pk]]
        documents[request.pk] = document
    return documents


def mask_phone_like(text: str) -> str:
    """138****8001 for every run of digits long enough to be a phone number."""
    return _phone_like_re.sub(lambda match: mask_phone(match.group(0)), text or "")


def _local(value: dt.datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def email_message(request: AccountCreationRequest, counts: dict) -> dict:
    """Subject and body of the operators' email: status, counts and the failure reasons, never a phone number."""
    phrase = STATUS_PHRASES.get(request.status, request.get_status_display())
    systems = "、".join(SYSTEM_NAMES.get(system, system) for system in request.system_list)
    lines = [
        f"账号创建请求 {request.request_id} {phrase}。",
        "",
        f"来源系统：{request.origin_system}",
        f"业务键：{request.business_key}",
        f"状态：{request.get_status_display()}（{request.status}）",
        f"目标系统：{systems}",
        f"总人数：{request.total_users}；成功 {counts.get('completed', 0)} 人，失败 {counts.get('failed', 0)} 人，"
        f"已取消 {counts.get('cancelled', 0)} 人",
        f"提交时间：{_local(request.created_at)}",
        f"结束时间：{_local(request.completed_at)}",
    ]
    summary = request.error_summary or {}
    if summary.get("reasons"):
        lines += ["", f"失败原因（共 {summary.get('failedUsers', 0)} 人）："]
        for reason in summary["reasons"]:
            numbers = reason.get("employeeNumbers") or []
            shown = "、".join(numbers[:MAX_EMPLOYEE_NUMBERS_IN_EMAIL])
            if len(numbers) > MAX_EMPLOYEE_NUMBERS_IN_EMAIL:
                shown += f" 等 {len(numbers)} 人"
            system = SYSTEM_NAMES.get(reason.get("system"), reason.get("system")) or "未知系统"
            lines.append(f"- {system}：{mask_phone_like(reason.get('reason', ''))}"
                         f"（{reason.get('count', len(numbers))} 人）：{shown}")
    lines += [
        "",
        f"详情：GET /account-creation/requests/{request.request_id}/ ，或在管理后台搜索该请求ID。",
        "",
        "此邮件由账号开通服务自动发送，请勿回复。",
    ]
    return {"subject": mask_phone_like(f"账号创建请求 {request.request_id} {phrase}"),
            "body": "\n".join(lines)}


# --- Signing -------------------------------------------------------------------------------------

def sign_webhook(*, secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The Standard Webhooks signature header value: "v1," + base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))."""
    key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


# --- Delivery ------------------------------------------------------------------------------------

@dataclass
class DeliveryResult:
    """What one delivery attempt answered."""

    notification: Notification
    delivered: bool = False
    retry: bool = False  # worth another attempt (until max_attempts); False with an error: failed for good
    status_code: int | None = None
    error: str = ""
    retry_after: float | None = None


def send_notification(notification: Notification) -> DeliveryResult:
    """Send one claimed notification; never raises, never touches the database."""
    try:
        if notification.channel == Notification.Channel.WEBHOOK:
            return _send_webhook(notification)
        return _send_email(notification)
    except Exception as exc:  # a bug must not lose the notification: record it and try again later
        logger.exception("sending notification %s raised", notification.message_id)
        return DeliveryResult(notification, retry=True, error=f"{type(exc).__name__}: {exc}")


def _send_webhook(notification: Notification) -> DeliveryResult:
    def failed(error: str, *, retry: bool = False, status_code: int | None = None,
               retry_after: float | None = None) -> DeliveryResult:
        return DeliveryResult(notification, retry=retry, status_code=status_code, error=error,
                              retry_after=retry_after)

    client = notification.request.client
    try:
        secret = api_client_webhook_secret(client=client) if client is not None else ""
    except ImproperlyConfigured as e:
        return failed(f"the client's webhook secret cannot be read: {e}")
    if not secret:
        return failed("the client has no webhook secret; callbacks are never sent unsigned")
    try:
        target = check_callback_url(notification.target)
    except CallbackHostUnresolved as e:
        return failed(str(e), retry=True)
    except CallbackUrlRejected as e:
        return failed(f"callback URL refused at delivery: {e}")

    body = json.dumps(notification.payload, ensure_ascii=False, separators=(",", ":"))
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": notification.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_webhook(secret=secret, message_id=notification.message_id,
                                          timestamp=timestamp, body=body),
    }
    timeout = settings.CALLBACK_TIMEOUT_SECONDS
    try:
        status, retry_after, snippet = _post(target, body.encode("utf-8"), headers, timeout)
    except urllib3.exceptions.NewConnectionError as e:
        return failed(f"connection to {target.host}:{target.port} failed: {_reason(e)}", retry=True)
    except urllib3.exceptions.TimeoutError:
        return failed(f"no answer from {target.host}:{target.port} within {timeout:g} s (timeout)", retry=True)
    except (urllib3.exceptions.HTTPError, OSError) as e:
        return failed(f"connection to {target.host}:{target.port} failed: {_reason(e)}", retry=True)
    if 200 <= status < 300:
        return DeliveryResult(notification, delivered=True, status_code=status)
    if 300 <= status < 400:
        error = f"HTTP {status}: redirects are not followed"
    else:
        error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    return failed(error, retry=True, status_code=status, retry_after=parse_retry_after(retry_after))


def _post(target: CallbackTarget, body: bytes, headers: dict, timeout: float) -> tuple[int, str | None, str]:
    """POST to the checked addresses (by name only for allow-listed hosts); return status, Retry-After, snippet.

    Connecting to the address the policy approved, rather than resolving the name again, is what closes the
    DNS-rebinding window; TLS still verifies the certificate against the host name (SNI included).
    """
    addresses = target.addresses or (target.host,)
    try:
        ipaddress.ip_address(target.host)
        host_is_literal = True  # no SNI for an address; the certificate must name the address itself
    except ValueError:
        host_is_literal = False
    last_error = None
    for address in addresses:
        options = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "retries": False, "maxsize": 1}
        if target.scheme == "https":
            options.update(cert_reqs="CERT_REQUIRED", ca_certs=settings.CALLBACK_CA_BUNDLE or ca_bundle_path(),
                           assert_hostname=target.host)
            if not host_is_literal:
                options["server_hostname"] = target.host
            pool = urllib3.HTTPSConnectionPool(address, target.port, **options)
        else:
            pool = urllib3.HTTPConnectionPool(address, target.port, **options)
        try:
            response = pool.urlopen("POST", target.path, body=body, headers={**headers, "Host": target.host_header},
                                    redirect=False, retries=False, assert_same_host=False, preload_content=False)
            try:
                raw = response.read(MAX_RESPONSE_SNIPPET * 4, decode_content=False)
            except (urllib3.exceptions.HTTPError, OSError):
                raw = b""  # the status is the answer; an unreadable body changes nothing
            finally:
                response.release_conn()
            snippet = " ".join(raw.decode("utf-8", "replace").split())[:MAX_RESPONSE_SNIPPET]
            return response.status, response.headers.get("Retry-After"), snippet
        except urllib3.exceptions.NewConnectionError as e:
            last_error = e  # the next address may answer
        finally:
            pool.close()
    raise last_error


def _reason(exc: BaseException) -> str:
    """The innermost cause of a transport error, without urllib3's pool description."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}"


def _send_email(notification: Notification) -> DeliveryResult:
    payload = notification.payload
    try:
        send_mail(payload["subject"], payload["body"], None, [notification.target], fail_silently=False)
    except (smtplib.SMTPException, OSError) as e:
        return DeliveryResult(notification, retry=True, error=f"{type(e).__name__}: {e}")
    return DeliveryResult(notification, delivered=True)


NOTIFICATIONS = JobTable(
    model=Notification,
    ready=(Notification.Status.PENDING,),
    running=Notification.Status.SENDING,
    succeeded=Notification.Status.DELIVERED,
    failed=Notification.Status.FAILED,
    pending=Notification.Status.PENDING,
    select_related=("request__client",),
    result_fields=("last_status_code", "delivered_at"),
    lease_setting="NOTIFICATION_LEASE_SECONDS",
    retry_base_setting="NOTIFICATION_RETRY_BASE_SECONDS",
    retry_cap_setting="NOTIFICATION_RETRY_MAX_SECONDS",
)


class NotificationHandler(Handler):
    """Deliver one completion notification (a signed webhook or an email)."""

    name = "deliver_notification"
    table = NOTIFICATIONS

    def threads(self, lane) -> int:
        return settings.NOTIFICATION_CONCURRENCY  # slow receivers wait in parallel, not in a row

    def claim_size(self, lane) -> int:
        return settings.NOTIFICATION_BATCH_SIZE

    def call(self, lane, jobs: list[Claimed]) -> list[DeliveryResult]:
        return [send_notification(claimed.job) for claimed in jobs]

    def crashed(self, job: Notification, exc: Exception) -> DeliveryResult:
        return DeliveryResult(job, retry=True, error=f"{type(exc).__name__}: {exc}")

    def decide(self, result: JobResult, now) -> Decision:
        notification, delivery = result.job, result.outcome
        notification.last_status_code = delivery.status_code
        if delivery.delivered:
            notification.delivered_at = now
            return Decision.succeeded()
        if delivery.retry:
            return Decision.retry("", delivery.error, retry_after=delivery.retry_after)
        return Decision.failed("", delivery.error)

    def after_write(self, settled: list[Settled], *, worker: str, now) -> None:
        # Logged once the results are committed: a retried or rolled-back write logs nothing.
        transaction.on_commit(lambda: log_deliveries([s.result.job for s in settled]))


def log_deliveries(notifications: list[Notification]) -> None:
    for notification in notifications:
        log = logger.warning if notification.status == Notification.Status.FAILED else logger.info
        log("notification %s (%s, request %s, attempt %d): %s%s", notification.message_id,
            notification.channel, notification.request.request_id, notification.attempts, notification.status,
            f" ({notification.last_error})" if notification.last_error else "")


NOTIFY = NotificationHandler()

# The verdicts as a notification's outcome is named.
_VERDICT_NAMES = {"succeeded": "delivered", "retried": "retried", "failed": "failed"}


def claim_due_notifications(*, worker: str, limit: int) -> tuple[str, list[Claimed]]:
    """Claim up to `limit` due notifications; return the claim's lease token and the claims."""
    claimed = claim_due(NOTIFICATIONS, limit=limit, worker=worker)
    return (claimed[0].token if claimed else ""), claimed


def deliver(claimed: Claimed) -> JobResult:
    """Send one claimed notification (outside any transaction)."""
    [result] = call_jobs(NOTIFY, None, [claimed])
    return result


def record_deliveries(results: list[JobResult]) -> tuple[Counter, int]:
    """Write a batch of delivery results, fenced by each claim's lease token; return verdicts and fenced-off."""
    verdicts, fenced = record(NOTIFY, results, worker="")
    return Counter({_VERDICT_NAMES[verdict]: n for verdict, n in verdicts.items()}), fenced


def deliver_due_notifications(*, worker: str, limit: int | None = None) -> dict:
    """Send due notifications until none is due or `limit` were claimed; return counts by outcome."""
    tally = run_jobs([NOTIFY], worker=worker, limits={NOTIFY.name: limit},
                     deadline=time.monotonic() + settings.PROCESS_STAGE_MAX_SECONDS)[NOTIFY.name]
    counts = {"claimed": tally.claimed, "delivered": 0, "retried": 0, "failed": 0, "fenced_off": tally.fenced_off}
    for verdict, number in tally.verdicts.items():
        counts[_VERDICT_NAMES[verdict]] += number
    return counts


def notifications_resend(*, notifications) -> int:
    """Give failed notifications a fresh set of attempts, due at once; return how many were reset."""
    return Notification.objects.filter(
        pk__in=[n.pk for n in notifications], status=Notification.Status.FAILED,
    ).update(status=Notification.Status.PENDING, attempts=0, next_attempt_at=timezone.now(), lease_token="",
             lease_expires_at=None)
