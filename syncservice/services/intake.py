"""Intake: store a validated batch in the request buffer, idempotently."""

import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..errors import BusinessKeyConflict, OriginForbidden, PayloadInvalid
from ..models import AccountCreationRequest, AccountCreationRequestItem, ApiClient
from ..validation import ValidatedBatch, ValidatedDeactivation
from .wakeup import notify_work


def new_request_id() -> str:
    """A request id in the note's form: req_YYYYMMDD_<12 hex>, dated in the service's time zone."""
    return f"req_{timezone.localdate():%Y%m%d}_{secrets.token_hex(6)}"


def existing_or_conflict(batch: ValidatedBatch | ValidatedDeactivation) -> AccountCreationRequest | None:
    existing = (
        AccountCreationRequest.objects.filter(origin_system=batch.origin_system, business_key=batch.business_key)
        .only("id", "request_id", "status", "total_users", "payload_fingerprint")
        .first()
    )
    if existing is None:
        return None
    if existing.payload_fingerprint != batch.fingerprint:
        raise BusinessKeyConflict(
            f"businessKey {batch.business_key!r} 已以不同的内容提交为 {existing.request_id}；"
            "不同的批次请使用新的 businessKey。",
            extra={"requestId": existing.request_id},
        )
    return existing


def check_submitter(client: ApiClient, batch: ValidatedBatch | ValidatedDeactivation) -> None:
    """The client submits for its own origin, and a callback only when it can be signed."""
    if client.is_operator or client.origin_system != batch.origin_system:
        raise OriginForbidden(
            f"此客户端不能为 originSystem {batch.origin_system!r} 提交请求。",
        )
    if batch.callback_url and not client.webhook_secret_encrypted:
        # An unsigned callback cannot be told from a forgery, so none would ever be sent: say so now.
        raise PayloadInvalid("此客户端没有回调密钥，回调无法签名。", errors=[{
            "field": "callbackUrl", "code": "no_webhook_secret",
            "message": "请运维人员运行 `create_api_client <name> --rotate-webhook-secret`，"
                       "或不传 callbackUrl 而轮询状态地址。"}])


def request_submit(*, client: ApiClient, batch: ValidatedBatch) -> tuple[AccountCreationRequest, bool]:
    """Store the batch as a pending request; return (request, created).

    Resubmitting the same (originSystem, businessKey) with the same payload returns the original request;
    with a different payload it raises BusinessKeyConflict. Request and items are written in one transaction.
    """
    check_submitter(client, batch)
    existing = existing_or_conflict(batch)
    if existing is not None:
        return existing, False
    priority = batch.priority if batch.priority is not None else client.default_priority
    try:
        with transaction.atomic():
            request = AccountCreationRequest.objects.create(
                request_id=new_request_id(),
                origin_system=batch.origin_system,
                business_key=batch.business_key,
                account_type=batch.account_type,
                employee_type=batch.employee_type,
                system_list=batch.system_list,
                total_users=len(batch.users),
                client=client,
                priority=priority,
                callback_url=batch.callback_url,
                payload_fingerprint=batch.fingerprint,
            )
            AccountCreationRequestItem.objects.bulk_create(
                [AccountCreationRequestItem(request=request, **user) for user in batch.users],
                batch_size=1000,
            )
            notify_work("request")  # delivered to the listening workers when this commits
    except IntegrityError:
        # A concurrent submission of the same businessKey won the race: answer as a resubmission would.
        existing = existing_or_conflict(batch)
        if existing is None:
            raise
        return existing, False
    return request, True
