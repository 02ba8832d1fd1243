"""Who may call what: origin clients, operator clients and staff."""

from rest_framework.permissions import BasePermission

from ..models import ApiClient


def is_operator_or_staff(principal) -> bool:
    if isinstance(principal, ApiClient):
        return principal.is_active and principal.is_operator
    return bool(principal and principal.is_authenticated and principal.is_active and principal.is_staff)


class IsOriginClient(BasePermission):
    """An API client bound to an origin system."""

    message = "Only an origin-system client may submit requests."

    def has_permission(self, request, view):
        user = request.user
        return isinstance(user, ApiClient) and user.is_active and not user.is_operator


class CanReadRequests(BasePermission):
    """Any API client (scoped to its origin by the selectors), an operator, or staff."""

    message = "Authenticate with an API client token."

    def has_permission(self, request, view):
        user = request.user
        return isinstance(user, ApiClient) and user.is_active or is_operator_or_staff(user)


class IsOperatorOrStaff(BasePermission):
    message = "Only operator clients and staff may do this."

    def has_permission(self, request, view):
        return is_operator_or_staff(request.user)
