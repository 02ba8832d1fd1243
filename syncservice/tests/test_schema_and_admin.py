"""The OpenAPI schema and docs page, and the admin pages operators use."""

import pytest

from syncservice.models import AccountCreationRequestItem

from .fixtures import note_example

pytestmark = pytest.mark.django_db


def test_schema_documents_the_endpoints_auth_and_the_notes_example(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert {"/account-creation/create_accounts/", "/account-creation/requests/",
            "/account-creation/requests/{request_id}/"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    post = schema["paths"]["/account-creation/create_accounts/"]["post"]
    assert {"202", "200", "400", "409"} <= set(post["responses"])
    example = next(iter(post["requestBody"]["content"]["application/json"]["examples"].values()))
    assert example["value"]["userList"][0]["employeeName"] == "张三"


def test_docs_page_is_served(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


ADMIN_PAGES = [
    "apiclient", "hrperson", "account", "accountcreationrequest", "accountcreationrequestitem",
    "accountcreationtask", "taskattempt", "hrsyncstate",
]


@pytest.mark.parametrize("model", ADMIN_PAGES)
def test_admin_changelists_load_for_staff(staff_client, hr_caller, model):
    hr_caller.submit(note_example())
    response = staff_client.get(f"/admin/syncservice/{model}/")
    assert response.status_code == 200


def test_admin_masks_phone_numbers_and_shows_progress(staff_client, hr_caller):
    request_id = hr_caller.submit(note_example()).json()["requestId"]
    items_page = staff_client.get("/admin/syncservice/accountcreationrequestitem/").content.decode()
    assert "138****8001" in items_page
    assert "13800138001" not in items_page
    request_pk = AccountCreationRequestItem.objects.first().request_id
    detail = staff_client.get(f"/admin/syncservice/accountcreationrequest/{request_pk}/change/").content.decode()
    assert request_id in detail
    assert "138****8001" in detail and "13800138001" not in detail
    search = staff_client.get("/admin/syncservice/accountcreationrequest/?q=TEST002").content.decode()
    assert request_id in search


def test_admin_needs_a_staff_login(client):
    response = client.get("/admin/syncservice/accountcreationrequest/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_operators_disable_a_client_in_the_admin_and_it_is_refused_at_once(staff_client, hr_caller):
    from syncservice.models import ApiClient

    assert hr_caller.get("/account-creation/requests/").status_code == 200
    response = staff_client.post("/admin/syncservice/apiclient/",
                                 {"action": "disable_clients", "_selected_action": [hr_caller.api_client.pk]})
    assert response.status_code == 302
    assert not ApiClient.objects.get(pk=hr_caller.api_client.pk).is_active
    assert hr_caller.get("/account-creation/requests/").status_code == 401


def test_admin_task_page_shows_every_attempt_with_the_targets_code_and_message(staff_client):
    from django.utils import timezone

    from syncservice.models import AccountCreationTask, HrPerson, TaskAttempt

    person = HrPerson.objects.create(person_id=1, employee_number="E1", full_name="张三", created_by="hr_sync",
                                     last_updated_by="hr_sync")
    task = AccountCreationTask.objects.create(person=person, system="welink", status="failed", attempts=2)
    for number, code, message in [(1, "48503", "flow control"), (2, "47120", "mobile already registered")]:
        TaskAttempt.objects.create(task=task, attempt_number=number, outcome="transient", code=code,
                                   message=message, started_at=timezone.now())

    page = staff_client.get(f"/admin/syncservice/accountcreationtask/{task.pk}/change/").content.decode()

    assert "48503" in page and "flow control" in page
    assert "47120" in page and "mobile already registered" in page
