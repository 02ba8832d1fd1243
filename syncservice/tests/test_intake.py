"""POST /account-creation/create_accounts/: validation, storage, idempotency, auth, error shape."""

import json
import re

import pytest
from django.db import connection

from syncservice.models import AccountCreationRequest, AccountCreationRequestItem, ApiClient

from .fixtures import make_users, note_example

pytestmark = pytest.mark.django_db

REQUEST_ID_RE = re.compile(r"^req_\d{8}_[0-9a-f]{12}$")


def assert_nothing_stored():
    assert AccountCreationRequest.objects.count() == 0
    assert AccountCreationRequestItem.objects.count() == 0


def assert_error_shape(response, status: int, code: str):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["errors"], list)
    return body


def error_fields(body) -> dict[str, str]:
    return {error["field"]: error["code"] for error in body["errors"]}


def test_note_example_is_accepted_with_202_location_and_stored(hr_caller):
    response = hr_caller.submit(note_example())

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"success", "requestId", "status", "totalUsers", "message"}
    assert body["success"] is True
    assert REQUEST_ID_RE.match(body["requestId"])
    assert body["status"] == "pending"
    assert body["totalUsers"] == 2
    assert body["message"] == "请求已提交，正在处理中"
    assert response["Location"] == f"/account-creation/requests/{body['requestId']}/"

    request = AccountCreationRequest.objects.get(request_id=body["requestId"])
    assert request.origin_system == "HR_SYSTEM"
    assert request.system_list == ["idaas", "welink", "email"]
    assert request.client == hr_caller.api_client
    items = list(request.items.order_by("employee_number"))
    assert [i.employee_number for i in items] == ["TEST001", "TEST002"]
    assert items[0].employee_name == "张三"
    assert items[0].partner_company == "测试公司"
    assert all(i.status == "pending" for i in items)


@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="SQLite caps statement parameters, so Django splits the bulk insert there")
def test_submission_queries_do_not_grow_with_the_batch(hr_caller):
    from django.test.utils import CaptureQueriesContext

    def queries_for(key: str, count: int) -> int:
        with CaptureQueriesContext(connection) as context:
            response = hr_caller.submit(note_example(businessKey=key, userList=make_users(count, key)))
        assert response.status_code == 202
        return len(context)

    queries_for("WARMUP", 1)  # the first call also records the client's last use and opens its rate counter
    small, large = queries_for("SMALL", 2), queries_for("LARGE", 1000)
    assert large == small <= 16
    assert AccountCreationRequestItem.objects.count() == 1003


def test_resubmitting_same_business_key_returns_original_request(hr_caller):
    first = hr_caller.submit(note_example()).json()
    # Same content, keys in another order and phone written with separators: the same batch.
    payload = note_example()
    payload["userList"][0] = dict(reversed(list(payload["userList"][0].items())))
    payload["userList"][1]["phoneNumber"] = "138-0013-8002"
    second = hr_caller.submit(payload)

    assert second.status_code == 200
    assert second.json()["requestId"] == first["requestId"]
    assert second["Location"].endswith(f"/{first['requestId']}/")
    assert AccountCreationRequest.objects.count() == 1
    assert AccountCreationRequestItem.objects.count() == 2


def test_same_business_key_with_different_payload_is_a_409_naming_the_original(hr_caller):
    first = hr_caller.submit(note_example()).json()
    changed = note_example()
    changed["userList"][1]["employeeName"] = "王五"

    body = assert_error_shape(hr_caller.submit(changed), 409, "business_key_conflict")

    assert body["requestId"] == first["requestId"]
    assert first["requestId"] in body["message"]
    assert AccountCreationRequestItem.objects.count() == 2


def test_same_business_key_from_another_origin_is_a_separate_request(make_caller):
    hr = make_caller("HR_SYSTEM")
    supplier = make_caller("SUPPLIER_SYSTEM")
    assert hr.submit(note_example()).status_code == 202
    assert supplier.submit(note_example(originSystem="SUPPLIER_SYSTEM")).status_code == 202
    assert AccountCreationRequest.objects.count() == 2


def test_priority_defaults_to_the_clients_and_can_be_set(make_caller):
    caller = make_caller("HR_SYSTEM", priority=3)
    default = caller.submit(note_example(businessKey="A")).json()
    explicit = caller.submit(note_example(businessKey="B", priority=-5)).json()
    assert AccountCreationRequest.objects.get(request_id=default["requestId"]).priority == 3
    assert AccountCreationRequest.objects.get(request_id=explicit["requestId"]).priority == -5


# --- Authentication and authorization ------------------------------------------------------------

def test_missing_token_is_401(client):
    response = client.post("/account-creation/create_accounts/", data=json.dumps(note_example()),
                           content_type="application/json")
    assert_error_shape(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert_nothing_stored()


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer", "Bearer a b", "Bearer \u00e9\u00e9"])
def test_invalid_token_is_401(client, hr_caller, header):
    response = client.post("/account-creation/create_accounts/", data=json.dumps(note_example()),
                           content_type="application/json", HTTP_AUTHORIZATION=header)
    assert_error_shape(response, 401, "authentication_failed")
    assert_nothing_stored()


def test_disabled_client_is_refused_at_once(hr_caller):
    ApiClient.objects.filter(pk=hr_caller.api_client.pk).update(is_active=False)
    assert_error_shape(hr_caller.submit(note_example()), 401, "authentication_failed")
    assert_nothing_stored()


def test_submitting_for_another_origin_is_403(hr_caller):
    body = assert_error_shape(hr_caller.submit(note_example(originSystem="SUPPLIER_SYSTEM")), 403,
                              "origin_forbidden")
    assert "SUPPLIER_SYSTEM" in body["message"]
    assert_nothing_stored()


def test_operator_clients_cannot_submit(operator_caller):
    assert_error_shape(operator_caller.submit(note_example()), 403, "permission_denied")
    assert_nothing_stored()


# --- Validation: every rule, every error in one answer, nothing stored -------------------------

def with_user(index: int, **changes) -> dict:
    payload = note_example()
    payload["userList"][index].update(changes)
    for key, value in changes.items():
        if value is ...:
            del payload["userList"][index][key]
    return payload


def without(key: str) -> dict:
    payload = note_example()
    del payload[key]
    return payload


INVALID_PAYLOADS = [
    ("missing originSystem", without("originSystem"), "originSystem", "required"),
    ("missing businessKey", without("businessKey"), "businessKey", "required"),
    ("missing accountType", without("accountType"), "accountType", "required"),
    ("missing employeeType", without("employeeType"), "employeeType", "required"),
    ("missing systemList", without("systemList"), "systemList", "required"),
    ("missing userList", without("userList"), "userList", "required"),
    ("blank businessKey", note_example(businessKey="   "), "businessKey", "blank"),
    ("long businessKey", note_example(businessKey="K" * 129), "businessKey", "too_long"),
    ("long accountType", note_example(accountType="类" * 65), "accountType", "too_long"),
    ("long employeeType", note_example(employeeType="1" * 65), "employeeType", "too_long"),
    ("numeric employeeType", note_example(employeeType=1), "employeeType", "invalid_type"),
    ("originSystem with spaces", note_example(originSystem="HR SYSTEM"), "originSystem", "invalid_format"),
    ("systemList not a list", note_example(systemList="idaas"), "systemList", "invalid_type"),
    ("systemList empty", note_example(systemList=[]), "systemList", "empty"),
    ("systemList repeats", note_example(systemList=["idaas", "idaas"]), "systemList[1]", "duplicate"),
    ("systemList unknown", note_example(systemList=["idaas", "ldap"]), "systemList[1]", "invalid_choice"),
    ("systemList non-string", note_example(systemList=[1]), "systemList[0]", "invalid_choice"),
    ("userList not a list", note_example(userList={"a": 1}), "userList", "invalid_type"),
    ("userList empty", note_example(userList=[]), "userList", "empty"),
    ("user not an object", note_example(userList=["TEST001"]), "userList[0]", "invalid_type"),
    ("missing employeeNumber", with_user(0, employeeNumber=...), "userList[0].employeeNumber", "required"),
    ("bad employeeNumber", with_user(0, employeeNumber="TEST 001"), "userList[0].employeeNumber",
     "invalid_format"),
    ("long employeeNumber", with_user(0, employeeNumber="E" * 65), "userList[0].employeeNumber", "too_long"),
    ("duplicate employeeNumber", with_user(1, employeeNumber="TEST001"), "userList[1].employeeNumber",
     "duplicate"),
    ("duplicate employeeNumber by case", with_user(1, employeeNumber="test001"), "userList[1].employeeNumber",
     "duplicate"),
    ("missing employeeName", with_user(0, employeeName=...), "userList[0].employeeName", "required"),
    ("blank employeeName", with_user(0, employeeName=" "), "userList[0].employeeName", "blank"),
    ("long employeeName", with_user(0, employeeName="张" * 101), "userList[0].employeeName", "too_long"),
    ("missing departmentCode", with_user(0, departmentCode=...), "userList[0].departmentCode", "required"),
    ("missing phoneNumber", with_user(0, phoneNumber=...), "userList[0].phoneNumber", "required"),
    ("short phone", with_user(0, phoneNumber="1380013800"), "userList[0].phoneNumber", "invalid_phone"),
    ("landline-like phone", with_user(0, phoneNumber="12800138001"), "userList[0].phoneNumber", "invalid_phone"),
    ("letters in phone", with_user(0, phoneNumber="1380013800a"), "userList[0].phoneNumber", "invalid_phone"),
    ("full-width digits in phone", with_user(0, phoneNumber="１３８００１３８００１"), "userList[0].phoneNumber",
     "invalid_phone"),
    ("international without plus", with_user(0, phoneNumber="4915112345678"), "userList[0].phoneNumber",
     "invalid_phone"),
    ("numeric phone", with_user(0, phoneNumber=13800138001), "userList[0].phoneNumber", "invalid_type"),
    ("long partnerCompany", with_user(0, partnerCompany="公" * 201), "userList[0].partnerCompany", "too_long"),
    ("unknown user field", with_user(0, email="a@b.c"), "userList[0].email", "unknown_field"),
    ("unknown top-level field", note_example(callback="x"), "callback", "unknown_field"),
    ("right-to-left mark in name", with_user(0, employeeName="张\u200f三"), "userList[0].employeeName",
     "invalid_characters"),
    ("control character in businessKey", note_example(businessKey="A\x00B"), "businessKey",
     "invalid_characters"),
    ("priority out of range", note_example(priority=11), "priority", "out_of_range"),
    ("priority not an integer", note_example(priority="high"), "priority", "invalid_type"),
    ("priority boolean", note_example(priority=True), "priority", "invalid_type"),
]


@pytest.mark.parametrize("payload,field,code", [p[1:] for p in INVALID_PAYLOADS],
                         ids=[p[0] for p in INVALID_PAYLOADS])
def test_invalid_batch_is_400_naming_the_field_and_stores_nothing(hr_caller, payload, field, code):
    body = assert_error_shape(hr_caller.submit(payload), 400, "validation_error")
    assert error_fields(body).get(field) == code, body["errors"]
    assert_nothing_stored()


def test_every_error_is_reported_in_one_answer(hr_caller):
    payload = note_example(systemList=["idaas", "x"], businessKey="")
    payload["userList"][0]["phoneNumber"] = "123"
    payload["userList"][1]["employeeName"] = ""
    payload["userList"].append({"employeeNumber": "TEST001", "employeeName": "王五", "departmentCode": "D9",
                                "phoneNumber": "+8613800138009"})

    body = assert_error_shape(hr_caller.submit(payload), 400, "validation_error")

    assert error_fields(body) == {
        "businessKey": "blank",
        "systemList[1]": "invalid_choice",
        "userList[0].phoneNumber": "invalid_phone",
        "userList[1].employeeName": "blank",
        "userList[2].employeeNumber": "duplicate",
    }
    assert_nothing_stored()


def test_too_many_users_is_one_clear_error(hr_caller, settings):
    settings.MAX_USERS_PER_REQUEST = 5
    body = assert_error_shape(hr_caller.submit(note_example(userList=make_users(6))), 400, "validation_error")
    assert body["errors"] == [{"field": "userList", "code": "too_many_users",
                               "message": "每个请求最多 5 个用户，请拆分批次（收到 6 个）。"}]
    assert_nothing_stored()


def test_ten_thousand_users_past_the_default_limit_is_a_400(hr_caller):
    body = assert_error_shape(hr_caller.submit(note_example(userList=make_users(10_000))), 400,
                              "validation_error")
    assert error_fields(body) == {"userList": "too_many_users"}
    assert_nothing_stored()


def test_optional_fields_may_be_left_out_and_phones_are_normalized(hr_caller):
    payload = note_example()
    del payload["userList"][0]["partnerCompany"]
    del payload["userList"][0]["country"]
    payload["userList"][0]["phoneNumber"] = "+86 138 0013 8001"
    payload["userList"][1]["phoneNumber"] = "+44 20 7946 0958"
    assert hr_caller.submit(payload).status_code == 202
    phones = dict(AccountCreationRequestItem.objects.values_list("employee_number", "phone_number"))
    assert phones == {"TEST001": "13800138001", "TEST002": "+442079460958"}
    first = AccountCreationRequestItem.objects.get(employee_number="TEST001")
    assert (first.partner_company, first.country) == ("", "")


def test_names_are_stored_in_normal_form_and_emoji_are_kept(hr_caller):
    payload = with_user(0, employeeName="Jose\u0301 😀")
    assert hr_caller.submit(payload).status_code == 202
    assert AccountCreationRequestItem.objects.get(employee_number="TEST001").employee_name == "José 😀"


# --- Malformed bodies ----------------------------------------------------------------------------

def test_malformed_json_is_400(hr_caller):
    assert_error_shape(hr_caller.submit('{"originSystem": "HR_SYSTEM",'), 400, "malformed_json")
    assert_nothing_stored()


@pytest.mark.parametrize("body", ["[]", '"text"', "42", "null"])
def test_non_object_body_is_400(hr_caller, body):
    assert_error_shape(hr_caller.submit(body), 400, "invalid_body")
    assert_nothing_stored()


def test_nan_is_not_json(hr_caller):
    assert_error_shape(hr_caller.submit('{"priority": NaN}'), 400, "malformed_json")


def test_deeply_nested_json_is_400_not_500(hr_caller):
    depth = 100_000
    assert_error_shape(hr_caller.submit("[" * depth + "]" * depth), 400, "malformed_json")
    assert_nothing_stored()


def test_wrong_content_type_is_415(hr_caller):
    response = hr_caller.submit(json.dumps(note_example()), content_type="application/x-www-form-urlencoded")
    assert_error_shape(response, 415, "unsupported_media_type")
    response = hr_caller.submit("<xml/>", content_type="text/xml")
    assert_error_shape(response, 415, "unsupported_media_type")
    assert_nothing_stored()


def test_oversized_body_is_413(hr_caller, settings):
    settings.MAX_REQUEST_BODY_BYTES = 1000
    payload = note_example(userList=make_users(20))
    assert_error_shape(hr_caller.submit(payload), 413, "payload_too_large")
    assert_nothing_stored()


def test_invalid_utf8_is_400(hr_caller):
    assert_error_shape(hr_caller.submit(b'{"businessKey": "\xff\xfe"}'), 400, "malformed_json")


def test_wrong_method_is_405_in_the_error_shape(hr_caller):
    assert_error_shape(hr_caller.get("/account-creation/create_accounts/"), 405, "method_not_allowed")


# --- Inbound rate limiting ---------------------------------------------------------------------------

def test_a_client_flooding_the_intake_gets_429_with_retry_after(make_caller):
    flood = make_caller("FLOOD_SYSTEM")
    ApiClient.objects.filter(pk=flood.api_client.pk).update(throttle_rate="5/min")
    calm = make_caller("HR_SYSTEM")

    answers = [flood.submit(note_example(originSystem="FLOOD_SYSTEM", businessKey=f"K{i}")) for i in range(7)]

    assert [a.status_code for a in answers] == [202] * 5 + [429] * 2
    body = assert_error_shape(answers[-1], 429, "rate_limited")
    assert 0 < int(answers[-1]["Retry-After"]) <= 60
    assert "限流" in body["message"]
    assert AccountCreationRequest.objects.count() == 5
    # The limit is per client: another client is not affected.
    assert calm.submit(note_example()).status_code == 202


def test_the_default_rate_applies_without_a_client_override(make_caller, settings):
    settings.API_THROTTLE_RATE = "2/min"
    caller = make_caller("HR_SYSTEM")
    codes = [caller.get("/account-creation/requests/").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_an_invalid_throttle_rate_is_refused_by_validation():
    from django.core.exceptions import ValidationError

    client = ApiClient(name="x", origin_system="X", throttle_rate="lots")
    client.set_new_token()
    with pytest.raises(ValidationError):
        client.full_clean()
