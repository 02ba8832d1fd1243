"""Read-side queries shared by the services: item counts per request."""

import pytest

from syncservice.models import AccountCreationRequest, AccountCreationRequestItem
from syncservice.selectors import item_counts_by_request

pytestmark = pytest.mark.django_db


def request_with_items(business_key: str, statuses: list[str]) -> AccountCreationRequest:
    request = AccountCreationRequest.objects.create(
        request_id=f"req_20250101_{business_key:0>12}", origin_system="HR_SYSTEM", business_key=business_key,
        account_type="供应商", employee_type="1", system_list=["idaas"], status="processing",
        total_users=len(statuses), payload_fingerprint="-",
    )
    AccountCreationRequestItem.objects.bulk_create(
        AccountCreationRequestItem(request=request, employee_number=f"E{i:06d}", employee_name="王小明",
                                   phone_number="13800138001", status=status)
        for i, status in enumerate(statuses))
    return request


def test_item_counts_by_request_counts_ended_items_per_request_in_one_query(django_assert_num_queries):
    mixed = request_with_items("1", ["completed", "completed", "failed", "cancelled", "pending", "task_created"])
    done = request_with_items("2", ["completed"])
    waiting = request_with_items("3", ["synced", "pending"])
    request_with_items("4", ["failed"])  # not asked about

    with django_assert_num_queries(1):
        counts = item_counts_by_request(request_ids=[mixed.pk, done.pk, waiting.pk])

    assert counts == {
        mixed.pk: {"completed": 2, "failed": 1, "cancelled": 1},
        done.pk: {"completed": 1, "failed": 0, "cancelled": 0},
        waiting.pk: {"completed": 0, "failed": 0, "cancelled": 0},
    }


def test_item_counts_by_request_asks_nothing_for_no_request(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert item_counts_by_request(request_ids=[]) == {}
