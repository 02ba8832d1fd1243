"""Bad input at scale: huge strings and unicode edge cases in every field, odd keys, odd paths and query
strings, and names with no pinyin reading carried through the whole pipeline to a valid, unique address."""

import json
import re
import sys
import unicodedata

import pytest
from django.core.validators import validate_email

from syncservice import validation
from syncservice.models import AccountCreationRequest, AccountCreationRequestItem, HrPerson, LocalTargetAccount

from .fixtures import note_example, run_pipeline

pytestmark = pytest.mark.django_db

# Every field of a create_accounts body: its JSON path, and how to put a value there.
TOP_FIELDS = ["originSystem", "businessKey", "accountType", "employeeType", "callbackUrl"]
USER_FIELDS = ["employeeNumber", "employeeName", "departmentCode", "phoneNumber", "partnerCompany", "country"]
ALL_FIELDS = [*TOP_FIELDS, "systemList[0]", *[f"userList[0].{name}" for name in USER_FIELDS]]


def with_value(path: str, value, payload: dict | None = None) -> dict:
    payload = payload or note_example()
    if path.startswith("userList[0]."):
        payload["userList"][0][path.split(".", 1)[1]] = value
    elif path == "systemList[0]":
        payload["systemList"][0] = value
    else:
        payload[path] = value
    return payload


def post(caller, payload):
    """POST the payload as JSON with every non-ASCII character escaped, so lone surrogates travel as \\ud800."""
    return caller.submit(json.dumps(payload, ensure_ascii=True))


def errors_of(response) -> dict[str, str]:
    return {error["field"]: error["code"] for error in response.json()["errors"]}


# --- Huge strings ---------------------------------------------------------------------------------------

MEGABYTE = 1_000_000


@pytest.mark.parametrize("path", ALL_FIELDS)
def test_a_megabyte_in_any_field_is_a_clear_400_naming_it(hr_caller, path):
    response = post(hr_caller, with_value(path, "x" * MEGABYTE))
    assert response.status_code == 400, response.content[:500]
    assert list(errors_of(response)) == [path]
    assert len(response.content) < 2_000  # the value is not echoed back
    assert not AccountCreationRequest.objects.exists()


def test_a_megabyte_of_multibyte_text_is_a_400_not_a_413(hr_caller):
    response = hr_caller.submit(with_value("userList[0].employeeName", "张" * MEGABYTE))  # 3 MB of UTF-8
    assert response.status_code == 400
    assert errors_of(response) == {"userList[0].employeeName": "too_long"}


def test_huge_strings_in_every_field_at_once_are_all_named(hr_caller):
    payload = note_example()
    for path in ALL_FIELDS:
        with_value(path, "y" * 300_000, payload)
    response = hr_caller.submit(payload)
    assert response.status_code == 400
    assert set(errors_of(response)) == set(ALL_FIELDS)


def test_a_body_past_the_limit_is_413(hr_caller, settings):
    response = hr_caller.submit(with_value("businessKey", "x" * (settings.MAX_REQUEST_BODY_BYTES + 1)))
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


def test_a_huge_number_is_a_400(hr_caller):
    response = hr_caller.submit('{"priority": ' + "9" * MEGABYTE + "}")
    assert response.status_code == 400 and response.json()["code"] == "malformed_json"
    response = hr_caller.submit(json.dumps(note_example(priority=10 ** 400)))
    assert errors_of(response) == {"priority": "out_of_range"}
    response = hr_caller.submit(json.dumps(note_example(priority="HUGE")).replace('"HUGE"', "1e400"))
    assert errors_of(response) == {"priority": "invalid_type"}


@pytest.mark.parametrize("key", ["k" * MEGABYTE, "\ud800", "\x00", "a\u202eb"])
@pytest.mark.parametrize("where", ["top", "user"])
def test_an_unknown_key_of_any_size_or_character_is_named_safely(hr_caller, key, where):
    payload = note_example()
    (payload if where == "top" else payload["userList"][0])[key] = 1
    response = post(hr_caller, payload)
    assert response.status_code == 400, response.content[:300]
    [error] = response.json()["errors"]
    assert error["code"] == "unknown_field"
    assert len(error["field"]) < 100
    assert not validation.has_forbidden_chars(error["field"])


def test_nesting_deep_inside_a_field_is_a_400(hr_caller):
    nested = json.loads("[" * 500 + "]" * 500)
    response = post(hr_caller, with_value("userList[0].employeeName", nested))
    assert errors_of(response) == {"userList[0].employeeName": "invalid_type"}


# --- Unicode edge cases in every field -----------------------------------------------------------------

UNICODE_CASES = {
    "combining": "Jose\u0301 Mu\u0308ller",
    "fullwidth_digits": "１３８００１３８００１",
    "fullwidth_letters": "ＡＢＣＤ",
    "emoji": "😀👍🏽",
    "emoji_zwj": "👨\u200d👩\u200d👧",
    "rtl_mark": "abc\u200f",
    "rtl_override": "\u202eabc",
    "zero_width_space": "a\u200bb",
    "nul": "a\u0000b",
    "lone_surrogate": "a\ud800b",
    "bom": "\ufeffabc",
    "hangul_filler": "\u3164",
    "wide_spaces": "\u3000abc\u00a0",
    "arabic": "محمد",
    "cjk_extension_b": "𠀀𠀁",
}
TEXT_FIELDS = {"businessKey", "accountType", "employeeType", "userList[0].employeeName",
               "userList[0].departmentCode", "userList[0].partnerCompany", "userList[0].country"}
INVISIBLE = {"emoji_zwj", "rtl_mark", "rtl_override", "zero_width_space", "nul", "lone_surrogate", "bom",
             "hangul_filler"}

STORED = {
    "businessKey": lambda r, i: r.business_key, "accountType": lambda r, i: r.account_type,
    "employeeType": lambda r, i: r.employee_type, "userList[0].employeeName": lambda r, i: i.employee_name,
    "userList[0].departmentCode": lambda r, i: i.department_code,
    "userList[0].partnerCompany": lambda r, i: i.partner_company, "userList[0].country": lambda r, i: i.country,
}


def expected_outcome(path: str, case: str) -> str:
    """What each field does with each case: a 400 code, or "stored"."""
    if case in INVISIBLE:
        return "invalid_callback_url" if path == "callbackUrl" else (
            "invalid_choice" if path == "systemList[0]" else "invalid_characters")
    if path in TEXT_FIELDS:
        return "stored"
    return {"originSystem": "invalid_format", "userList[0].employeeNumber": "invalid_format",
            "userList[0].phoneNumber": "invalid_phone", "systemList[0]": "invalid_choice",
            "callbackUrl": "invalid_callback_url"}[path]


def callback_value(value: str) -> str:
    # An IP literal: no DNS lookup; TEST-NET-3 is refused as not public when nothing else is wrong first.
    return f"https://203.0.113.5/{value}"


@pytest.mark.parametrize("case", list(UNICODE_CASES))
@pytest.mark.parametrize("path", ALL_FIELDS)
def test_unicode_edge_cases_are_refused_naming_the_field_or_stored_sensibly(hr_caller, path, case):
    raw = UNICODE_CASES[case]
    value = callback_value(raw) if path == "callbackUrl" else raw
    response = post(hr_caller, with_value(path, value))
    expected = expected_outcome(path, case)
    if expected != "stored":
        assert response.status_code == 400, response.content
        assert errors_of(response) == {path: expected}
        assert not AccountCreationRequest.objects.exists()
        return
    assert response.status_code == 202, response.content
    request = AccountCreationRequest.objects.get()
    item = request.items.get(employee_number="TEST001")
    stored = STORED[path](request, item)
    assert stored == unicodedata.normalize("NFC", raw.strip())
    assert unicodedata.is_normalized("NFC", stored) and not validation.has_forbidden_chars(stored)
    # What is stored is what the status document shows.
    document = hr_caller.get(f"/account-creation/requests/{request.request_id}/").json()
    if path.startswith("userList[0]."):
        assert document["items"][0][path.split(".", 1)[1]] == stored


def test_combining_characters_are_stored_composed(hr_caller):
    assert post(hr_caller, with_value("userList[0].employeeName", "Jose\u0301")).status_code == 202
    assert AccountCreationRequestItem.objects.get(employee_number="TEST001").employee_name == "José"


def test_the_schema_whitespace_is_exactly_what_strip_removes():
    forbidden = {c for lo, hi in validation.FORBIDDEN_CHAR_RANGES for c in range(lo, hi + 1)}
    whitespace = {c for lo, hi in validation.WHITESPACE_RANGES for c in range(lo, hi + 1)}
    python_whitespace = {c for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert python_whitespace - forbidden == whitespace


@pytest.mark.parametrize("value,ok", [
    (" 138 0013 8001 ", True), ("+86 (138) 0013-8001", True), ("\u3000+44 20 7946 0958", True),
    ("+8613800138001", True), ("138-0013-8001\u00a0", True), ("1380013800", False), ("+0123456789", False),
    ("138001380011", False), ("１３８００１３８００１", False), ("13800138001\u200b", False),
])
def test_the_phone_pattern_in_the_schema_agrees_with_the_validation(value, ok):
    errors = validation._Errors()
    validation._validate_user(errors, {"employeeNumber": "E1", "employeeName": "n", "departmentCode": "d",
                                       "phoneNumber": value}, 0)
    assert (not errors.items) is ok, errors.items
    assert bool(re.search(validation.PHONE_PATTERN, value)) is ok
    assert len(value) <= validation.PHONE_RAW_MAX


def test_identifiers_with_surrounding_spaces_are_refused_as_the_schema_says(hr_caller):
    response = post(hr_caller, with_value("userList[0].employeeNumber", " TEST001"))
    assert errors_of(response) == {"userList[0].employeeNumber": "invalid_format"}


def test_an_integral_float_priority_is_an_integer(hr_caller):
    assert hr_caller.submit(json.dumps(note_example(priority=5.0))).status_code == 202
    assert AccountCreationRequest.objects.get().priority == 5
    assert errors_of(hr_caller.submit(json.dumps(note_example(businessKey="B", priority=5.5)))) == {
        "priority": "invalid_type"}


# --- Odd paths and query strings -----------------------------------------------------------------------

@pytest.mark.parametrize("query", ["businessKey=%00", "businessKey=a%E2%80%AEb", "status=%00", "page=%00",
                                   "page=0", "page=1.0", "page= 1", "page_size=201", "page_size=null",
                                   "page=1&page=2", "businessKey=" + "k" * 129])
def test_hostile_query_strings_are_a_400(hr_caller, query):
    response = hr_caller.get(f"/account-creation/requests/?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize("request_id", ["a%00b", "a%2Fb", "..", "%F0%9F%98%80", "req_20250101_XYZ", "x" * 300,
                                        "req_20250121_0123456789ab%00"])
@pytest.mark.parametrize("suffix", ["", "cancel/", "retry/"])
def test_hostile_request_ids_are_a_json_404(hr_caller, request_id, suffix):
    path = f"/account-creation/requests/{request_id}/{suffix}"
    response = hr_caller.post_json(path, {}) if suffix else hr_caller.get(path)
    assert response.status_code == 404, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"


def test_an_empty_request_id_is_a_json_404(hr_caller):
    response = hr_caller.get("/account-creation/requests//")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_an_unexpected_error_is_a_json_500_and_logged(hr_caller, settings, caplog):
    settings.MAX_USERS_PER_REQUEST = None  # a broken configuration: the validation raises a TypeError
    hr_caller.client.raise_request_exception = False
    response = hr_caller.submit(note_example())
    assert response.status_code == 500
    assert response.json() == {"success": False, "code": "server_error",
                               "message": "发生意外错误，已记录日志。", "errors": []}
    assert any(record.levelname == "ERROR" and record.exc_info for record in caplog.records)


# --- Names with no pinyin reading, through the whole pipeline -------------------------------------------

HOSTILE_NAMES = [
    ("EMOJI-1", "😀"), ("EMOJI-2", "😀😀😀"), ("LATIN-1", "José Müller"), ("LATIN-2", "O'Brien-Smith"),
    ("CYRILLIC", "Иван Петров"), ("ARABIC", "محمد علي"), ("GREEK", "Ωμέγα"), ("KOREAN", "김철수"),
    ("KANA", "たなか"), ("MIXED-1", "张Ivan😀"), ("MIXED-2", "Ivan 张"), ("FULLWIDTH", "ＪＯＨＮ ＳＭＩＴＨ"),
    ("ESZETT", "ß"), ("POLISH", "Łukasz Søby"), ("DIGIT-FIRST", "1张三"), ("VIETNAMESE", "Nguyễn Văn A"),
    ("COMBINING", "Zoe\u0308"), ("HAN-EXT-B", "𠀀𠀁"), ("SAME-1", "José Müller"), ("SAME-2", "😀"),
    ("L" * 64, "🙂"), ("L" * 63 + "X", "🙂"), ("L.ONG-" + "9" * 58, "🙃"),
]
LOCAL_PART = re.compile(r"^[a-z0-9]{1,64}$")


# Transactional: on PostgreSQL the process stage's threads write through connections of their own.
@pytest.mark.django_db(transaction=True)
def test_names_without_a_pinyin_reading_get_valid_unique_addresses_through_the_pipeline(hr_caller, settings):
    settings.TASK_RETRY_BASE_SECONDS = 0
    users = [{"employeeNumber": number, "employeeName": name, "departmentCode": "D001",
              "phoneNumber": f"139{index:08d}", "partnerCompany": "🏢 公司", "country": "🇨🇳"}
             for index, (number, name) in enumerate(HOSTILE_NAMES)]
    response = hr_caller.submit(note_example(userList=users))
    assert response.status_code == 202, response.content

    run_pipeline(rounds=2)

    request = AccountCreationRequest.objects.get()
    assert request.status == "completed", request.error_summary
    persons = list(HrPerson.objects.all())
    assert len(persons) == len(HOSTILE_NAMES)
    emails = [person.email for person in persons]
    assert len(set(emails)) == len(emails)
    for person in persons:
        validate_email(person.email)
        local, domain = person.email.split("@")
        assert domain == settings.EMAIL_DOMAIN and LOCAL_PART.match(local), person.email
        mailbox = LocalTargetAccount.objects.get(system="email", employee_number=person.employee_number)
        assert mailbox.email == person.email
    by_number = {person.employee_number: person.email for person in persons}
    assert by_number["LATIN-1"] == "josemuller@example.com"
    assert by_number["SAME-1"] == "josemuller2@example.com"
    assert by_number["POLISH"] == "lukaszsoby@example.com"
    assert by_number["FULLWIDTH"] == "johnsmith@example.com"
    assert by_number["MIXED-1"] == "zhangivan@example.com"
    assert by_number["EMOJI-1"] == "useremoji1@example.com"
    # Long employee numbers without a reading: cut to the same 48 characters, told apart by the suffix.
    assert by_number["L" * 64] != by_number["L" * 63 + "X"]
    assert all(len(by_number[n].split("@")[0]) <= 64 for n in by_number)
