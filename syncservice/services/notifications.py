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
import random
import re
import smtplib
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import urllib3
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import send_mail
from django.db.models import Count, F, Q
from django.utils import timezone
from requests.certs import where as ca_bundle_path

from ..backends.http import parse_retry_after
from ..models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    ApiClient,
    Notification,
    System,
)
from ..selectors import item_document, iso_utc, request_summary
from ..validation import CallbackHostUnresolved, CallbackTarget, CallbackUrlRejected, check_callback_url
from .clients import WEBHOOK_SECRET_PREFIX, api_client_webhook_secret
from .bulk import bulk_update_rows
from .locking import atomic_with_retry, current_lease_tokens, skip_locked

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

# Digit runs long enough to be a phone number (a vendor message may quote one): masked in emails.
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
    counts = _item_counts([request.pk for request, _ in emails])
    for request, address in emails:
        rows.append(Notification(
            request=request, channel=Notification.Channel.EMAIL, target=address,
            message_id=message_id(request, Notification.Channel.EMAIL),
            payload=email_message(request, counts.get(request.pk, {})),
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
    accounts = {}
    if any(item.hr_person_id for group in items.values() for item in group):
        accounts = {
            (account.person_id, account.system): account
            for account in Account.objects.filter(
                person_id__in=Item.objects.filter(request_id__in=request_ids).values("hr_person_id"))
        }
    documents = {}
    for request in requests:
        # Built from the status document's own parts, so that the callback carries exactly what GET returns.
        document = request_summary(request)
        document["items"] = [item_document(item, request.system_list, accounts) for item in items[request.pk]]
        documents[request.pk] = document
    return documents


def _item_counts(request_ids: list[int]) -> dict[int, dict]:
    if not request_ids:
        return {}
    return {
        row["request_id"]: row
        for row in Item.objects.filter(request_id__in=request_ids).values("request_id").annotate(
            completed=Count("id", filter=Q(status=Item.Status.COMPLETED)),
            failed=Count("id", filter=Q(status=Item.Status.FAILED)),
            cancelled=Count("id", filter=Q(status=Item.Status.CANCELLED)),
        )
    }


def mask_phone_like(text: str) -> str:
    """138****8001 for every run of digits long enough to be a phone number."""
    def mask(match: re.Match) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return f"{digits[:3]}****{digits[-4:]}" if len(digits) >= 11 else "****"
    return _phone_like_re.sub(mask, text or "")


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
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode("utf-8"), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


# --- Delivery ------------------------------------------------------------------------------------

@dataclass
class DeliveryResult:
    notification: Notification
    token: str
    delivered: bool = False
    retry: bool = False  # worth another attempt (until max_attempts); False with an error: failed for good
    status_code: int | None = None
    error: str = ""
    retry_after: float | None = None


def notification_retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Capped exponential backoff with jitter, never shorter than what the receiver asked for."""
    cap = settings.NOTIFICATION_RETRY_MAX_SECONDS
    delay = min(cap, settings.NOTIFICATION_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))
    delay *= 0.5 + random.random() / 2
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def _due(now) -> Q:
    return (Q(status=Notification.Status.PENDING, next_attempt_at__lte=now)
            | Q(status=Notification.Status.SENDING, lease_expires_at__lt=now))


def claim_due_notifications(*, worker: str, limit: int) -> tuple[str, list[Notification]]:
    """Claim up to `limit` due notifications; return the claim's lease token and the notifications."""
    token = uuid.uuid4().hex

    def claim():
        now = timezone.now()
        rows = list(skip_locked(Notification.objects.filter(_due(now)).select_related("request__client")
                                .order_by("next_attempt_at", "id"))[:limit])
        if not rows:
            return []
        Notification.objects.filter(id__in=[row.pk for row in rows]).update(
            status=Notification.Status.SENDING, lease_token=token, attempts=F("attempts") + 1,
            lease_expires_at=now + dt.timedelta(seconds=settings.NOTIFICATION_LEASE_SECONDS),
        )
        for row in rows:
            row.status = Notification.Status.SENDING
            row.lease_token = token
            row.attempts += 1
        return rows

    rows = atomic_with_retry(claim)
    if rows:
        logger.debug("%s claimed %d notification(s)", worker, len(rows))
    return token, rows


def send_notification(notification: Notification, token: str) -> DeliveryResult:
    """Send one claimed notification; never raises, never touches the database."""
    try:
        if notification.channel == Notification.Channel.WEBHOOK:
            return _send_webhook(notification, token)
        return _send_email(notification, token)
    except Exception as exc:  # a bug must not lose the notification: record it and try again later
        logger.exception("sending notification %s raised", notification.message_id)
        return DeliveryResult(notification, token, retry=True, error=f"{type(exc).__name__}: {exc}")


def _send_webhook(notification: Notification, token: str) -> DeliveryResult:
    def failed(error: str, *, retry: bool = False, status_code: int | None = None,
               retry_after: float | None = None) -> DeliveryResult:
        return DeliveryResult(notification, token, retry=retry, status_code=status_code, error=error,
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
        return DeliveryResult(notification, token, delivered=True, status_code=status)
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


def _send_email(notification: Notification, token: str) -> DeliveryResult:
    payload = notification.payload
    try:
        send_mail(payload["subject"], payload["body"], None, [notification.target], fail_silently=False)
    except (smtplib.SMTPException, OSError) as e:
        return DeliveryResult(notification, token, retry=True, error=f"{type(e).__name__}: {e}")
    return DeliveryResult(notification, token, delivered=True)


def send_notifications(notifications: list[Notification], token: str) -> list[DeliveryResult]:
    """Send a claimed batch, a few at a time (slow receivers wait in parallel, not in a row)."""
    if len(notifications) <= 1:
        return [send_notification(n, token) for n in notifications]
    workers = min(len(notifications), max(1, settings.NOTIFICATION_CONCURRENCY))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="notify") as pool:
        return list(pool.map(lambda n: send_notification(n, token), notifications))


RESULT_FIELDS = ["status", "lease_token", "lease_expires_at", "last_status_code", "last_error", "next_attempt_at",
                 "delivered_at"]


def _apply(result: DeliveryResult, now) -> str:
    notification = result.notification
    notification.lease_token = ""
    notification.lease_expires_at = None
    notification.last_status_code = result.status_code
    if result.delivered:
        notification.status = Notification.Status.DELIVERED
        notification.delivered_at = now
        notification.last_error = ""
        return "delivered"
    if result.retry and notification.attempts < notification.max_attempts:
        notification.status = Notification.Status.PENDING
        notification.next_attempt_at = now + dt.timedelta(
            seconds=notification_retry_delay(notification.attempts, result.retry_after))
        notification.last_error = result.error
        return "retried"
    notification.status = Notification.Status.FAILED
    notification.last_error = (f"gave up after {notification.attempts} attempts: {result.error}" if result.retry
                               else result.error)
    return "failed"


def record_deliveries(results: list[DeliveryResult]) -> tuple[Counter, int]:
    """Write a batch of delivery results, fenced by each claim's lease token; return verdicts and fenced-off."""
    def write():
        now = timezone.now()
        current = current_lease_tokens(Notification, [r.notification.pk for r in results],
                                       status=Notification.Status.SENDING)
        kept = [r for r in results if current.get(r.notification.pk) == r.token]
        verdicts = Counter(_apply(r, now) for r in kept)
        if kept:
            bulk_update_rows([r.notification for r in kept], RESULT_FIELDS)
        return verdicts, kept

    verdicts, kept = atomic_with_retry(write)
    for result in kept:
        notification = result.notification
        log = logger.warning if notification.status == Notification.Status.FAILED else logger.info
        log("notification %s (%s, request %s, attempt %d): %s%s", notification.message_id, notification.channel,
            notification.request.request_id, notification.attempts, notification.status,
            f" ({notification.last_error})" if notification.last_error else "")
    fenced = len(results) - len(kept)
    if fenced:
        logger.warning("%d notification result(s) discarded: their lease had expired and they were claimed again",
                       fenced)
    return verdicts, fenced


def deliver_due_notifications(*, worker: str, limit: int | None = None) -> dict:
    """Send due notifications until none is due or `limit` were claimed; return counts by outcome."""
    counts = {"claimed": 0, "delivered": 0, "retried": 0, "failed": 0, "fenced_off": 0}
    while limit is None or counts["claimed"] < limit:
        size = settings.NOTIFICATION_BATCH_SIZE
        if limit is not None:
            size = min(size, limit - counts["claimed"])
        token, batch = claim_due_notifications(worker=worker, limit=size)
        if not batch:
            break
        counts["claimed"] += len(batch)
        verdicts, fenced = record_deliveries(send_notifications(batch, token))
        for verdict, number in verdicts.items():
            counts[verdict] += number
        counts["fenced_off"] += fenced
    return counts


def notifications_resend(*, notifications) -> int:
    """Give failed notifications a fresh set of attempts, due at once; return how many were reset."""
    return Notification.objects.filter(
        pk__in=[n.pk for n in notifications], status=Notification.Status.FAILED,
    ).update(status=Notification.Status.PENDING, attempts=0, next_attempt_at=timezone.now(), lease_token="",
             lease_expires_at=None)
