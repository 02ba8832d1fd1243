"""The OpenAPI schema and docs page, and the admin pages operators use."""

import pytest
from django.contrib.auth import get_user_model

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


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


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
