"""One JSON error shape for every API error: {success: false, code, message, errors}."""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from django.urls import reverse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

from ..errors import ServiceError
from .parsers import PayloadTooLarge

logger = logging.getLogger(__name__)

DRF_CODES = {
    exceptions.ParseError: "malformed_json",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "validation_error",
}


def error_body(code: str, message: str, errors: list[dict] | None = None, **extra) -> dict:
    body = {"success": False, "code": code, "message": message, "errors": errors or []}
    body.update(extra)
    return body


def _flatten(detail, path: str = "") -> list[dict]:
    if isinstance(detail, dict):
        found = []
        for key, value in detail.items():
            found += _flatten(value, f"{path}.{key}" if path else str(key))
        return found
    if isinstance(detail, list):
        found = []
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                found += _flatten(value, f"{path}[{index}]")
            else:
                found += _flatten(value, path)
        return found
    return [{"field": path or "non_field_errors", "code": getattr(detail, "code", "invalid"), "message": str(detail)}]


def api_exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.code, exc.message, exc.errors, **exc.extra), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        # Django refuses a body past DATA_UPLOAD_MAX_MEMORY_SIZE before the parser sees it: still a 413.
        exc = PayloadTooLarge(f"请求体超过 {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} 字节。")
    elif isinstance(exc, SuspiciousOperation):
        exc = exceptions.ParseError(f"请求被拒绝：{exc}")
    response = exception_handler(exc, context)
    if response is None:
        return _server_error(exc, context)
    code = next((c for cls, c in DRF_CODES.items() if type(exc) is cls), None)
    if code is None:
        code = getattr(exc, "default_code", "error")
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(code, "请求无效。", _flatten(exc.detail))
    else:
        message = str(exc.detail) if not isinstance(exc.detail, (dict, list)) else "请求失败。"
        response.data = error_body(code, message)
    return response


def _server_error(exc, context):
    """An unexpected exception: a 500 in the API's error shape, logged with its traceback like Django would.

    With DEBUG on it propagates instead, to Django's technical error page.
    """
    if settings.DEBUG:
        return None
    request = context.get("request")
    path = getattr(request, "path", "?")
    logger.error("Internal Server Error: %s", path, exc_info=(type(exc), exc, exc.__traceback__))
    set_rollback()
    return Response(error_body("server_error", "发生意外错误，已记录日志。"), status=500)


# Where config/urls.py mounts the API. A path under them that names no endpoint is still the API's: it answers
# in the API's error shape, which its callers parse, rather than with an HTML page.
API_PATH_PREFIXES = ("/account-creation/", "/task-management/")


def page_not_found(request, exception):
    """Django's handler404: the API's JSON 404 under the API's paths, Django's own 404 page anywhere else."""
    if not request.path_info.startswith(API_PATH_PREFIXES):
        return defaults.page_not_found(request, exception)
    body = error_body("not_found", f"此路径没有接口；{reverse('schema')} 列出了 API 的全部接口。")
    return JsonResponse(body, status=404)
