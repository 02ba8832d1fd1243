"""The OpenAPI schema and docs page, and the admin pages operators use."""

import pytest

from syncservice.api.schema import PAGE_MAX
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


@pytest.mark.parametrize(("path", "asset"), [
    ("/api/docs/", "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"),
    ("/api/redoc/", "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"),
])
def test_docs_pages_load_their_scripts_from_this_servers_static_files(client, path, asset):
    page = client.get(path).content.decode()
    assert f'src="{asset}"' in page
    assert "https://" not in page and "cdn" not in page


def schema(client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


LIST_ENDPOINTS = [("/account-creation/requests/", "hr_caller"), ("/task-management/runs/", "operator_caller")]


@pytest.mark.parametrize(("path", "caller"), LIST_ENDPOINTS)
def test_the_page_parameter_states_the_maximum_the_list_accepts(client, request, path, caller):
    page = next(p for p in schema(client)["paths"][path]["get"]["parameters"] if p["name"] == "page")
    assert page["schema"] == {"type": "integer", "minimum": 1, "maximum": PAGE_MAX}
    caller = request.getfixturevalue(caller)
    # The maximum is accepted: a page past the last one, the documented 404.
    past_the_end = caller.get(f"{path}?page={PAGE_MAX}")
    assert past_the_end.status_code == 404 and past_the_end.json()["code"] == "not_found"
    # Past it, and however many digits the number has, it is out of range rather than "not an integer".
    for number in (PAGE_MAX + 1, 886297896441173, "9" * 40):
        refused = caller.get(f"{path}?page={number}")
        assert refused.status_code == 400, refused.content
        assert refused.json()["errors"] == [
            {"field": "page", "code": "out_of_range", "message": f"必须在 1 到 {PAGE_MAX} 之间。"}]


def test_the_schema_states_that_a_batch_names_each_employee_once(client, hr_caller):
    user_list = schema(client)["components"]["schemas"]["CreateAccountsInputRequest"]["properties"]["userList"]
    description = user_list["description"]
    assert "employeeNumber at most once" in description and "case-insensitively" in description
    assert "`duplicate`" in description and "`userList[i].employeeNumber`" in description
    # What the description says is what the API does.
    users = note_example()["userList"]
    repeated = {**users[0], "employeeNumber": users[0]["employeeNumber"].lower()}
    response = hr_caller.submit(note_example(userList=[users[0], repeated]))
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "userList[1].employeeNumber", "code": "duplicate",
         "message": f"员工编号 {repeated['employeeNumber']} 已出现在 userList[0]。"}]


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
