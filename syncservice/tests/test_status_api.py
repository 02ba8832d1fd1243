"""GET /account-creation/requests/{id}/ and the request list: fields, visibility, filters."""

import pytest
from django.utils import timezone

from syncservice.models import Account, AccountCreationRequest, HrPerson

from .fixtures import submit

pytestmark = pytest.mark.django_db

SUMMARY_FIELDS = {
    "requestId", "requestType", "originSystem", "businessKey", "accountType", "employeeType", "systemList", "status",
    "status_display", "totalUsers", "processedUsers", "progress", "errorSummary", "errorHistory", "createdAt",
    "updatedAt", "completedAt",
}
ITEM_FIELDS = {
    "id", "employeeNumber", "employeeName", "departmentCode", "phoneNumber", "partnerCompany", "country",
    "status", "status_display", "hrPersonInfo", "accounts", "errorMessage", "createdAt", "updatedAt",
}


def test_status_of_a_new_request_has_the_notes_fields(hr_caller):
    request_id = submit(hr_caller)

    response = hr_caller.get(f"/account-creation/requests/{request_id}/")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == SUMMARY_FIELDS | {"items"}
    assert body["requestId"] == request_id
    assert body["requestType"] == "create"
    assert body["status"] == "pending"
    assert body["status_display"] == "待处理"
    assert body["totalUsers"] == 2
    assert body["processedUsers"] == 0
    assert body["progress"] == "0.0%"
    assert body["errorSummary"] is None
    assert body["completedAt"] is None
    assert body["createdAt"].endswith("Z")
    assert [item["employeeNumber"] for item in body["items"]] == ["TEST001", "TEST002"]
    item = body["items"][0]
    assert set(item) == ITEM_FIELDS
    assert item["employeeName"] == "张三"
    assert item["phoneNumber"] == "13800138001"
    assert item["status_display"] == "待处理"
    assert item["hrPersonInfo"] is None
    assert item["errorMessage"] is None
    assert [a["system"] for a in item["accounts"]] == ["idaas", "welink", "email"]
    assert {a["status"] for a in item["accounts"]} == {"not_created"}


def test_completed_request_shows_progress_labels_person_and_accounts(hr_caller):
    request_id = submit(hr_caller, systemList=["idaas", "email"])
    request = AccountCreationRequest.objects.get(request_id=request_id)
    person = HrPerson.objects.create(person_id=1, employee_number="TEST001", full_name="张三",
                                     email="zhangsan@example.com", created_by="account_creation_api",
                                     last_updated_by="account_creation_api")
    Account.objects.create(person=person, system="idaas", status="created", external_id="scim-1")
    Account.objects.create(person=person, system="email", status="failed", error_message="60102 exists")
    request.items.filter(employee_number="TEST001").update(hr_person=person, status="completed")
    request.items.filter(employee_number="TEST002").update(status="failed", error_message="boom")
    AccountCreationRequest.objects.filter(pk=request.pk).update(
        status="partial_failed", processed_users=2, completed_at=timezone.now(),
        error_summary={"failedUsers": 1})

    body = hr_caller.get(f"/account-creation/requests/{request_id}/").json()

    assert body["status"] == "partial_failed"
    assert body["status_display"] == "部分失败"
    assert body["progress"] == "100.0%"
    assert body["errorSummary"] == {"failedUsers": 1}
    assert body["completedAt"].endswith("Z")
    first, second = body["items"]
    assert first["status_display"] == "已完成"
    assert first["hrPersonInfo"] == {"employeeNumber": "TEST001", "fullName": "张三",
                                     "email": "zhangsan@example.com"}
    no_task = {"attempts": 0, "lastError": None, "lastAttemptAt": None, "nextAttemptAt": None}
    assert first["accounts"] == [
        {"system": "idaas", "status": "created", "status_display": "已创建", "state": "created",
         "state_display": "已创建", "enabled": True, "lastChange": None, "externalId": "scim-1", "error": None,
         **no_task},
        {"system": "email", "status": "failed", "status_display": "失败", "state": "failed", "state_display": "失败",
         "enabled": True, "lastChange": None, "externalId": None, "error": "60102 exists", **no_task},
    ]
    assert second["errorMessage"] == "boom"


def test_progress_is_one_decimal(hr_caller):
    request_id = submit(hr_caller, userList=[
        {"employeeNumber": f"P{i}", "employeeName": "赵六", "departmentCode": "D", "phoneNumber": "13900000000"}
        for i in range(3)
    ])
    AccountCreationRequest.objects.filter(request_id=request_id).update(processed_users=1)
    assert hr_caller.get(f"/account-creation/requests/{request_id}/").json()["progress"] == "33.3%"


def test_another_origins_request_answers_404(make_caller):
    hr = make_caller("HR_SYSTEM")
    supplier = make_caller("SUPPLIER_SYSTEM")
    request_id = submit(hr)

    response = supplier.get(f"/account-creation/requests/{request_id}/")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    missing = supplier.get("/account-creation/requests/req_20250101_000000000000/")
    assert missing.json() == response.json() | {"message": missing.json()["message"]}


def test_operator_reads_every_request(hr_caller, operator_caller):
    request_id = submit(hr_caller)
    assert operator_caller.get(f"/account-creation/requests/{request_id}/").status_code == 200


def test_status_needs_authentication(hr_caller, client):
    request_id = submit(hr_caller)
    assert client.get(f"/account-creation/requests/{request_id}/").status_code == 401


def test_status_document_costs_constant_queries(hr_caller, django_assert_max_num_queries):
    request_id = submit(hr_caller, userList=[
        {"employeeNumber": f"Q{i}", "employeeName": "钱七", "departmentCode": "D", "phoneNumber": "13900000000"}
        for i in range(50)
    ])
    request = AccountCreationRequest.objects.get(request_id=request_id)
    for index, item in enumerate(request.items.all()):
        person = HrPerson.objects.create(person_id=index + 1, employee_number=item.employee_number,
                                         full_name="钱七", created_by="hr_sync", last_updated_by="hr_sync")
        Account.objects.create(person=person, system="idaas", status="created")
        item.hr_person = person
        item.save(update_fields=["hr_person"])
    # Authentication, the shared rate-limit counter, then four queries for the document, whatever its size.
    with django_assert_max_num_queries(10):
        assert hr_caller.get(f"/account-creation/requests/{request_id}/").status_code == 200


def test_list_shows_own_requests_newest_first_with_filters_and_pages(make_caller):
    hr = make_caller("HR_SYSTEM")
    supplier = make_caller("SUPPLIER_SYSTEM")
    ids = [submit(hr, businessKey=f"B{i}") for i in range(3)]
    submit(supplier, originSystem="SUPPLIER_SYSTEM", businessKey="S1")
    AccountCreationRequest.objects.filter(request_id=ids[0]).update(status="completed")

    page = hr.get("/account-creation/requests/").json()
    assert page["count"] == 3
    assert [r["requestId"] for r in page["results"]] == list(reversed(ids))
    assert set(page["results"][0]) == SUMMARY_FIELDS

    completed = hr.get("/account-creation/requests/?status=completed").json()
    assert [r["requestId"] for r in completed["results"]] == [ids[0]]
    by_key = hr.get("/account-creation/requests/?businessKey=B1").json()
    assert [r["requestId"] for r in by_key["results"]] == [ids[1]]

    first_page = hr.get("/account-creation/requests/?page_size=2").json()
    assert len(first_page["results"]) == 2 and first_page["next"]
    second_page = hr.get("/account-creation/requests/?page_size=2&page=2").json()
    assert [r["requestId"] for r in second_page["results"]] == [ids[0]]


def test_list_rejects_an_unknown_status_filter(hr_caller):
    response = hr_caller.get("/account-creation/requests/?status=done")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "status"


def test_list_page_out_of_range_is_404_in_the_error_shape(hr_caller):
    response = hr_caller.get("/account-creation/requests/?page=9")
    assert response.status_code == 404
    assert response.json()["success"] is False


def test_operator_lists_every_origin(make_caller, operator_caller):
    submit(make_caller("HR_SYSTEM"))
    submit(make_caller("SUPPLIER_SYSTEM"), originSystem="SUPPLIER_SYSTEM")
    assert operator_caller.get("/account-creation/requests/").json()["count"] == 2
