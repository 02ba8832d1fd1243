"""The API speaks one language, as the design note's example does: every `message` in Chinese, success and
error alike, beside the stable English `code`s callers branch on."""

import re

import pytest

from .fixtures import Caller, note_example, run_pipeline, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]

CJK = re.compile(r"[\u4e00-\u9fff]")
CODE = re.compile(r"^[a-z_]+$")


def assert_chinese(body: dict) -> None:
    assert CJK.search(body["message"]), body
    for error in body.get("errors", []):
        assert CJK.search(error["message"]), error
        assert CODE.fullmatch(error["code"]), error
    if "code" in body:
        assert CODE.fullmatch(body["code"]), body


def test_every_kind_of_answer_carries_a_chinese_message_and_an_english_code(hr_caller, operator_caller, client):
    bad_users = [{"employeeNumber": "-x", "employeeName": " ", "departmentCode": "D", "phoneNumber": "12",
                  "extra": 1}] * 2
    request_id = submit(hr_caller)
    run_pipeline()
    answers = {
        "submitted": hr_caller.submit(note_example(businessKey="NEW")),
        "resubmitted": hr_caller.submit(note_example(businessKey="NEW")),
        "invalid": hr_caller.submit(note_example(userList=bad_users, priority="high", systemList=["x", "x"],
                                                 callbackUrl="http://10.0.0.1/")),
        "not_json": hr_caller.post_json("/account-creation/create_accounts/", "{"),
        "not_an_object": hr_caller.submit([]),
        "conflict": hr_caller.submit(note_example(businessKey="NEW", accountType="other")),
        "other_origin": hr_caller.submit(note_example(originSystem="SUPPLIER")),
        "no_token": Caller(client, None).get(f"/account-creation/requests/{request_id}/"),
        "bad_token": Caller(client, "aps_wrong").get(f"/account-creation/requests/{request_id}/"),
        "not_found": hr_caller.get("/account-creation/requests/req_20260101_000000000000/"),
        "no_endpoint": hr_caller.get("/account-creation/nope/"),
        "bad_query": hr_caller.get("/account-creation/requests/?page=0&page=x"),
        "cancel_final": hr_caller.post_json(f"/account-creation/requests/{request_id}/cancel/", {}),
        "retry_nothing": hr_caller.post_json(f"/account-creation/requests/{request_id}/retry/", {}),
        "staff_only": hr_caller.post_json("/task-management/sync_hr_persons/", {"mode": "run"}),
        "bad_mode": operator_caller.post_json("/task-management/sync_hr_persons/", {"mode": "now", "x": 1}),
        "method": hr_caller.client.put("/account-creation/create_accounts/",
                                       HTTP_AUTHORIZATION=f"Bearer {hr_caller.token}"),
        "media_type": hr_caller.post_json("/account-creation/create_accounts/", "a=1",
                                          content_type="application/x-www-form-urlencoded"),
    }
    expected = {"submitted": 202, "resubmitted": 200, "invalid": 400, "not_json": 400, "not_an_object": 400,
                "conflict": 409, "other_origin": 403, "no_token": 401, "bad_token": 401, "not_found": 404,
                "no_endpoint": 404, "bad_query": 400, "cancel_final": 409, "retry_nothing": 409,
                "staff_only": 403, "bad_mode": 400, "method": 405, "media_type": 415}
    assert {name: answer.status_code for name, answer in answers.items()} == expected
    for name, answer in answers.items():
        body = answer.json()
        assert_chinese(body)
        assert body.get("success", True) is (answer.status_code < 400), name
    assert len(answers["invalid"].json()["errors"]) >= 8
