"""Read side: the documents the API returns for requests and their items, and counts over them."""

import datetime as dt
from collections.abc import Iterable

from django.db.models import Count, Q, QuerySet

from .errors import RequestNotFound
from .models import Account, AccountCreationRequest, AccountCreationRequestItem, ApiClient


def iso_utc(value: dt.datetime | None) -> str | None:
    """Timestamps as the note shows them: UTC, second precision, 'Z' suffix."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def requests_visible_to(client) -> QuerySet[AccountCreationRequest]:
    """Operators and staff see every request; an origin client sees only its own origin's."""
    queryset = AccountCreationRequest.objects.all()
    if isinstance(client, ApiClient) and not client.is_operator:
        queryset = queryset.filter(origin_system=client.origin_system)
    return queryset


def request_get(*, client, request_id: str) -> AccountCreationRequest:
    try:
        return requests_visible_to(client).get(request_id=request_id)
    except AccountCreationRequest.DoesNotExist:
        # Another origin's request answers exactly like one that does not exist.
        raise RequestNotFound(f"No request {request_id!r}.") from None


def request_summary(request: AccountCreationRequest) -> dict:
    return {
        "requestId": request.request_id,
        "originSystem": request.origin_system,
        "businessKey": request.business_key,
        "accountType": request.account_type,
        "employeeType": request.employee_type,
        "systemList": request.system_list,
        "status": request.status,
        "status_display": request.get_status_display(),
        "totalUsers": request.total_users,
        "processedUsers": request.processed_users,
        "progress": request.progress,
        "errorSummary": request.error_summary or None,
        "createdAt": iso_utc(request.created_at),
        "updatedAt": iso_utc(request.updated_at),
        "completedAt": iso_utc(request.completed_at),
    }


def item_document(item: AccountCreationRequestItem, system_list: list[str],
                   accounts: dict[tuple[int, str], Account]) -> dict:
    person = item.hr_person
    account_documents = []
    for system in system_list:
        account = accounts.get((person.pk, system)) if person else None
        status = account.status if account else Account.Status.NOT_CREATED
        account_documents.append({
            "system": system,
            "status": status,
            "status_display": Account.Status(status).label,
            "externalId": (account.external_id or None) if account else None,
            "error": (account.error_message or None) if account else None,
        })
    return {
        "id": item.pk,
        "employeeNumber": item.employee_number,
        "employeeName": item.employee_name,
        "departmentCode": item.department_code,
        "phoneNumber": item.phone_number,
        "partnerCompany": item.partner_company,
        "country": item.country,
        "status": item.status,
        "status_display": item.get_status_display(),
        "hrPersonInfo": {
            "employeeNumber": person.employee_number,
            "fullName": person.full_name,
            "email": person.email,
        } if person else None,
        "accounts": account_documents,
        "errorMessage": item.error_message or None,
        "createdAt": iso_utc(item.created_at),
        "updatedAt": iso_utc(item.updated_at),
    }


def request_document(request: AccountCreationRequest) -> dict:
    """The full status document of GET /account-creation/requests/{id}/, in three queries."""
    items = list(request.items.select_related("hr_person").order_by("id"))
    accounts = {}
    if any(item.hr_person_id for item in items):
        accounts = {
            (account.person_id, account.system): account
            for account in Account.objects.filter(
                person_id__in=request.items.values("hr_person_id"), system__in=request.system_list
            )
        }
    document = request_summary(request)
    document["items"] = [item_document(item, request.system_list, accounts) for item in items]
    return document


def item_counts_by_request(*, request_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Ended items per request, in one query: {request pk: {"completed": n, "failed": n, "cancelled": n}}.

    Every request asked about has an entry, with zeros while none of its items has ended.
    """
    Status = AccountCreationRequestItem.Status
    counts = {pk: {"completed": 0, "failed": 0, "cancelled": 0} for pk in request_ids}
    if not counts:
        return counts
    rows = (
        AccountCreationRequestItem.objects
        .filter(request_id__in=list(counts), status__in=AccountCreationRequestItem.FINAL_STATUSES)
        .values("request_id")
        .annotate(completed=Count("id", filter=Q(status=Status.COMPLETED)),
                  failed=Count("id", filter=Q(status=Status.FAILED)),
                  cancelled=Count("id", filter=Q(status=Status.CANCELLED)))
        .values_list("request_id", "completed", "failed", "cancelled")
    )
    for request_id, completed, failed, cancelled in rows:
        counts[request_id] = {"completed": completed, "failed": failed, "cancelled": cancelled}
    return counts
