"""Who may call what: origin clients, operator clients and staff."""

from rest_framework.permissions import BasePermission

from ..models import ApiClient


def is_operator_or_staff(principal) -> bool:
    if isinstance(principal, ApiClient):
        return principal.is_active and principal.is_operator
    return bool(principal and principal.is_authenticated and principal.is_active and principal.is_staff)


class IsOriginClient(BasePermission):
    """An API client bound to an origin system."""

    message = "只有来源系统客户端可以提交请求。"

    def has_permission(self, request, view):
        user = request.user
        return isinstance(user, ApiClient) and user.is_active and not user.is_operator


class CanReadRequests(BasePermission):
    """Any API client (scoped to its origin by the selectors), an operator, or staff."""

    message = "请使用 API 客户端令牌认证。"

    def has_permission(self, request, view):
        user = request.user
        return isinstance(user, ApiClient) and user.is_active or is_operator_or_staff(user)


class IsOperatorOrStaff(BasePermission):
    message = "只有运维客户端和员工可以执行此操作。"

    def has_permission(self, request, view):
        return is_operator_or_staff(request.user)
