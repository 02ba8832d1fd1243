"""The intake and status endpoints origin systems call."""

from django.db import transaction
from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from ..audit import Action, audit_record
from ..errors import RequestNotFound
from ..models import AccountCreationRequest
from ..services.deactivation import deactivation_submit
from ..services.intake import request_submit
from ..services.lifecycle import request_cancel, request_retry
from ..validation import (
    BUSINESS_KEY_MAX,
    OPTIONAL_TEXT_PATTERN,
    REQUEST_ID_PATTERN,
    REQUEST_ID_RE,
    describe_key,
    validate_create_accounts,
    validate_deactivate_accounts,
)
from .permissions import CanReadRequests, IsOriginClient
from .query import Pagination, QueryParams
from .schema import (
    BODY_ERRORS,
    ITEM_ID_MAX,
    ITEM_ID_PARAMETER,
    PAGE_MAX,
    PAGE_SIZE_MAX,
    REQUEST_ID_PARAMETER,
    RETRY_AFTER_HEADER,
    error_responses,
    page_parameters,
)
from .serializers import (
    ActionResponseSerializer,
    CreateAccountsInputSerializer,
    CreateAccountsResponseSerializer,
    DeactivateAccountsInputSerializer,
    ItemLogPageSerializer,
    RequestDetailSerializer,
    RequestPageSerializer,
)

NOTE_EXAMPLE = {
    "originSystem": "HR_SYSTEM",
    "businessKey": "BATCH_20250121_001",
    "accountType": "供应商",
    "employeeType": "1",
    "systemList": ["idaas", "welink", "email"],
    "userList": [
        {"employeeNumber": "TEST001", "employeeName": "张三", "departmentCode": "D001",
         "phoneNumber": "13800138001", "partnerCompany": "测试公司", "country": "中国"},
        {"employeeNumber": "TEST002", "employeeName": "李四", "departmentCode": "D002",
         "phoneNumber": "13800138002", "partnerCompany": "测试公司", "country": "中国"},
    ],
}

SUBMITTED_MESSAGE = "请求已提交，正在处理中"
RESUBMITTED_MESSAGE = "该业务键的请求已存在，返回原请求"

LOCATION_HEADER = OpenApiParameter(
    "Location", {"type": "string", "pattern": f"^/account-creation/requests/{REQUEST_ID_PATTERN[1:-1]}/$"},
    OpenApiParameter.HEADER, required=True, response=[200, 202],
    description="The status URL of the request.",
)


def status_url(request_id: str) -> str:
    return reverse("account-creation-request-detail", kwargs={"request_id": request_id})


def submitted(account_request: AccountCreationRequest, created: bool, message: str) -> Response:
    """The answer to a submission: 202 with the status URL, or 200 with the original request."""
    body = {
        "success": True,
        "requestId": account_request.request_id,
        "status": account_request.status,
        "totalUsers": account_request.total_users,
        "message": message if created else RESUBMITTED_MESSAGE,
    }
    return Response(body, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
                    headers={"Location": status_url(account_request.request_id)})


class CreateAccountsView(APIView):
    permission_classes = [IsOriginClient]

    @extend_schema(
        operation_id="create_accounts",
        summary="Submit a batch of people to provision",
        request=CreateAccountsInputSerializer,
        parameters=[LOCATION_HEADER, RETRY_AFTER_HEADER],
        responses={
            202: OpenApiResponse(CreateAccountsResponseSerializer, description="Stored; processing follows."),
            200: OpenApiResponse(CreateAccountsResponseSerializer,
                                 description="The same batch was submitted before: the original request."),
            **error_responses(*BODY_ERRORS, 409),
        },
        examples=[OpenApiExample("The design note's example", value=NOTE_EXAMPLE, request_only=True)],
        description=(
            "Validates the whole batch, stores it and answers 202 with the requestId and a Location header "
            "pointing at the status URL. The same (originSystem, businessKey) with the same payload answers 200 "
            "with the original request; with a different payload, 409. Unknown fields are refused."
        ),
    )
    def post(self, request):
        batch = validate_create_accounts(request.data)
        account_request, created = request_submit(client=request.user, batch=batch)
        return submitted(account_request, created, SUBMITTED_MESSAGE)


DEACTIVATE_EXAMPLE = {
    "originSystem": "HR_SYSTEM",
    "businessKey": "LEAVERS_20250131_001",
    "systemList": ["idaas", "welink", "email"],
    "userList": [{"employeeNumber": "TEST001"}, {"employeeNumber": "TEST002"}],
}
DEACTIVATE_SUBMITTED_MESSAGE = "停用请求已提交，正在处理中"


class DeactivateAccountsView(APIView):
    permission_classes = [IsOriginClient]

    @extend_schema(
        operation_id="deactivate_accounts",
        summary="Disable the accounts of persons who left",
        request=DeactivateAccountsInputSerializer,
        parameters=[LOCATION_HEADER, RETRY_AFTER_HEADER],
        responses={
            202: OpenApiResponse(CreateAccountsResponseSerializer, description="Stored; processing follows."),
            200: OpenApiResponse(CreateAccountsResponseSerializer,
                                 description="The same deactivation was submitted before: the original request."),
            **error_responses(*BODY_ERRORS, 409),
        },
        examples=[OpenApiExample("Two leavers", value=DEACTIVATE_EXAMPLE, request_only=True)],
        description=(
            "Disables (never deletes) the accounts of persons this originSystem submitted, in the systems listed "
            "(absent: every system the person has an account in); creations not yet started are cancelled. "
            "Answers 202 with the requestId and a Location header; the request is tracked by the same status "
            "endpoint as a creation (`requestType: deactivate`). Idempotent on (originSystem, businessKey) like "
            "create_accounts. Every error at once, nothing stored: an employee number this origin did not "
            "submit is refused at its userList entry."
        ),
    )
    def post(self, request):
        batch = validate_deactivate_accounts(request.data)
        account_request, created = deactivation_submit(client=request.user, batch=batch)
        return submitted(account_request, created, DEACTIVATE_SUBMITTED_MESSAGE)


def visible_request(request, request_id: str) -> AccountCreationRequest:
    """The request the caller may see, or 404; a malformed id is refused before it reaches the database."""
    if not REQUEST_ID_RE.fullmatch(request_id):
        raise RequestNotFound(f"请求 {describe_key(request_id)!r} 不存在。")
    return selectors.request_get(client=request.user, request_id=request_id)


class RequestDetailView(APIView):
    permission_classes = [CanReadRequests]

    @extend_schema(
        operation_id="get_request",
        summary="The status of a request, with every item",
        parameters=[REQUEST_ID_PARAMETER, RETRY_AFTER_HEADER],
        responses={200: RequestDetailSerializer, **error_responses(404)},
    )
    def get(self, request, request_id: str):
        return Response(selectors.request_document(visible_request(request, request_id)))


def item_id_from_path(text: str) -> int | None:
    """The item id a path names: a positive integer within a bigint, without leading zeros; else None."""
    if not (text.isascii() and text.isdigit()) or text.startswith("0") or len(text) > len(str(ITEM_ID_MAX)):
        return None
    value = int(text)
    return value if value <= ITEM_ID_MAX else None


class RequestItemLogView(APIView):
    permission_classes = [CanReadRequests]

    @extend_schema(
        operation_id="get_request_item_log",
        summary="Every call made to create the accounts of one item's person, newest first",
        parameters=[REQUEST_ID_PARAMETER, ITEM_ID_PARAMETER, *page_parameters(), RETRY_AFTER_HEADER],
        responses={200: ItemLogPageSerializer, **error_responses(400, 404)},
        description=(
            "The provisioning log of the person behind an item: each call to the request's target systems, "
            "its outcome and the target's code and message (phone numbers masked), across every task, "
            "retried ones included. An item of another request, or of another origin's request: 404."
        ),
    )
    def get(self, request, request_id: str, item_id: str):
        account_request = visible_request(request, request_id)
        item_pk = item_id_from_path(item_id)
        if item_pk is None:
            raise RequestNotFound(f"请求 {account_request.request_id} 中没有请求项 {describe_key(item_id)!r}。")
        query = QueryParams(request)
        query.integer("page", minimum=1, maximum=PAGE_MAX)
        query.integer("page_size", minimum=1, maximum=PAGE_SIZE_MAX)
        query.check()
        item = selectors.request_item_get(request=account_request, item_id=item_pk)
        attempts = selectors.item_attempts(item=item, systems=account_request.system_list)
        paginator = Pagination()
        page = paginator.paginate_queryset(attempts, request, view=self)
        return paginator.get_paginated_response([selectors.attempt_document(a) for a in page])


class RequestListView(APIView):
    permission_classes = [CanReadRequests]

    @extend_schema(
        operation_id="list_requests",
        summary="The caller's requests, newest first",
        parameters=[
            OpenApiParameter("status", str, enum=AccountCreationRequest.Status.values),
            OpenApiParameter("businessKey", {"type": "string", "maxLength": BUSINESS_KEY_MAX,
                                             "pattern": OPTIONAL_TEXT_PATTERN}),
            *page_parameters(),
            RETRY_AFTER_HEADER,
        ],
        responses={200: RequestPageSerializer, **error_responses(400, 404)},
    )
    def get(self, request):
        query = QueryParams(request)
        wanted_status = query.choice("status", AccountCreationRequest.Status.values)
        business_key = query.text("businessKey", max_length=BUSINESS_KEY_MAX)
        query.integer("page", minimum=1, maximum=PAGE_MAX)
        query.integer("page_size", minimum=1, maximum=PAGE_SIZE_MAX)
        query.check()
        queryset = selectors.requests_visible_to(request.user).order_by("-created_at", "-id")
        if wanted_status is not None:
            queryset = queryset.filter(status=wanted_status)
        if business_key is not None:
            queryset = queryset.filter(business_key=business_key)
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response([selectors.request_summary(r) for r in page])


def action_body(account_request: AccountCreationRequest, message: str) -> dict:
    return {
        "success": True,
        "requestId": account_request.request_id,
        "status": account_request.status,
        "status_display": account_request.get_status_display(),
        "message": message,
    }


class RequestCancelView(APIView):
    permission_classes = [CanReadRequests]

    @extend_schema(
        operation_id="cancel_request", summary="Cancel a request", request=None,
        parameters=[REQUEST_ID_PARAMETER, RETRY_AFTER_HEADER],
        responses={200: ActionResponseSerializer, **error_responses(404, 409)},
        description=(
            "A pending request is cancelled at once. A processing one stops every task not yet started and "
            "ends `cancelled` once the calls in flight finish (status stays `processing` until then). "
            "Accounts already created stay and are listed in the status document. A final request: 409."
        ),
    )
    def post(self, request, request_id: str):
        with transaction.atomic():
            account_request = request_cancel(request=visible_request(request, request_id))
            audit_record(actor=request.user, action=Action.REQUEST_CANCEL, target=account_request)
        message = "请求已取消" if account_request.is_final else "正在取消：等待执行中的任务结束"
        return Response(action_body(account_request, message))


class RequestRetryView(APIView):
    permission_classes = [CanReadRequests]

    @extend_schema(
        operation_id="retry_request", summary="Retry the failed items of a request", request=None,
        parameters=[REQUEST_ID_PARAMETER, RETRY_AFTER_HEADER],
        responses={200: ActionResponseSerializer, **error_responses(404, 409)},
        description="Failed items get fresh tasks (attempts from zero; the old attempts stay in the history) "
                    "and the request goes back to `processing`. Without failed items: 409.",
    )
    def post(self, request, request_id: str):
        with transaction.atomic():
            account_request = request_retry(request=visible_request(request, request_id))
            audit_record(actor=request.user, action=Action.REQUEST_RETRY, target=account_request)
        return Response(action_body(account_request, "失败的用户已重新排队处理"))
