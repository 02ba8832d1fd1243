"""The intake and status endpoints origin systems call."""

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from ..errors import PayloadInvalid
from ..models import AccountCreationRequest
from ..services.intake import request_submit
from ..services.lifecycle import request_cancel, request_retry
from ..validation import validate_create_accounts
from .permissions import CanReadRequests, IsOriginClient
from .serializers import (
    CreateAccountsInputSerializer,
    CreateAccountsResponseSerializer,
    ErrorSerializer,
    RequestDetailSerializer,
    RequestSummarySerializer,
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

ERROR_RESPONSES = {
    400: ErrorSerializer, 401: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer,
    409: ErrorSerializer, 413: ErrorSerializer, 415: ErrorSerializer, 429: ErrorSerializer,
}


def status_url(request_id: str) -> str:
    return reverse("account-creation-request-detail", kwargs={"request_id": request_id})


class CreateAccountsView(APIView):
    permission_classes = [IsOriginClient]

    @extend_schema(
        operation_id="create_accounts",
        summary="Submit a batch of people to provision",
        request=CreateAccountsInputSerializer,
        responses={202: CreateAccountsResponseSerializer, 200: CreateAccountsResponseSerializer, **ERROR_RESPONSES},
        examples=[OpenApiExample("The design note's example", value=NOTE_EXAMPLE, request_only=True)],
        description=(
            "Validates the whole batch, stores it and answers 202 with the requestId and a Location header "
            "pointing at the status URL. The same (originSystem, businessKey) with the same payload answers 200 "
            "with the original request; with a different payload, 409."
        ),
    )
    def post(self, request):
        batch = validate_create_accounts(request.data)
        account_request, created = request_submit(client=request.user, batch=batch)
        body = {
            "success": True,
            "requestId": account_request.request_id,
            "status": account_request.status,
            "totalUsers": account_request.total_users,
            "message": SUBMITTED_MESSAGE if created else RESUBMITTED_MESSAGE,
        }
        return Response(
            body,
            status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
            headers={"Location": status_url(account_request.request_id)},
        )


class RequestDetailView(APIView):
    permission_classes = [CanReadRequests]

    @extend_schema(
        operation_id="get_request",
        summary="The status of a request, with every item",
        responses={200: RequestDetailSerializer, **ERROR_RESPONSES},
    )
    def get(self, request, request_id: str):
        account_request = selectors.request_get(client=request.user, request_id=request_id)
        return Response(selectors.request_document(account_request))


class RequestPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class RequestListView(APIView):
    permission_classes = [CanReadRequests]

    @extend_schema(
        operation_id="list_requests",
        summary="The caller's requests, newest first",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=AccountCreationRequest.Status.values),
            OpenApiParameter("businessKey", OpenApiTypes.STR),
            OpenApiParameter("page", OpenApiTypes.INT),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="At most 200."),
        ],
        responses={
            200: inline_serializer("RequestPage", {
                "count": serializers.IntegerField(),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
                "results": RequestSummarySerializer(many=True),
            }),
            **ERROR_RESPONSES,
        },
    )
    def get(self, request):
        queryset = selectors.requests_visible_to(request.user).order_by("-created_at", "-id")
        wanted_status = request.query_params.get("status")
        if wanted_status is not None:
            if wanted_status not in AccountCreationRequest.Status.values:
                raise PayloadInvalid(
                    "Unknown status filter.",
                    errors=[{"field": "status", "code": "invalid_choice",
                             "message": f"Must be one of: {', '.join(AccountCreationRequest.Status.values)}."}],
                )
            queryset = queryset.filter(status=wanted_status)
        business_key = request.query_params.get("businessKey")
        if business_key is not None:
            queryset = queryset.filter(business_key=business_key)
        paginator = RequestPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response([selectors.request_summary(r) for r in page])


class ActionResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    requestId = serializers.CharField()
    status = serializers.ChoiceField(choices=AccountCreationRequest.Status.choices)
    status_display = serializers.CharField()
    message = serializers.CharField()


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
        responses={200: ActionResponseSerializer, **ERROR_RESPONSES},
        description=(
            "A pending request is cancelled at once. A processing one stops every task not yet started and "
            "ends `cancelled` once the calls in flight finish (status stays `processing` until then). "
            "Accounts already created stay and are listed in the status document. A final request: 409."
        ),
    )
    def post(self, request, request_id: str):
        account_request = selectors.request_get(client=request.user, request_id=request_id)
        account_request = request_cancel(request=account_request)
        message = "请求已取消" if account_request.is_final else "正在取消：等待执行中的任务结束"
        return Response(action_body(account_request, message))


class RequestRetryView(APIView):
    permission_classes = [CanReadRequests]

    @extend_schema(
        operation_id="retry_request", summary="Retry the failed items of a request", request=None,
        responses={200: ActionResponseSerializer, **ERROR_RESPONSES},
        description="Failed items get fresh tasks (attempts from zero; the old attempts stay in the history) "
                    "and the request goes back to `processing`. Without failed items: 409.",
    )
    def post(self, request, request_id: str):
        account_request = selectors.request_get(client=request.user, request_id=request_id)
        account_request = request_retry(request=account_request)
        return Response(action_body(account_request, "失败的用户已重新排队处理"))
