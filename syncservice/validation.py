"""Validation of the create_accounts payload: every error in one pass, nothing stored before it passes.

Hand-written rather than a nested DRF serializer: a 1,000-user batch is validated in a few milliseconds,
and every error carries the JSON path of the offending field (``userList[3].phoneNumber``).
"""

import hashlib
import ipaddress
import json
import re
import socket
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

from .errors import PayloadInvalid

# Field limits, shared with the OpenAPI serializers in api/serializers.py.
ORIGIN_SYSTEM_MAX = 64
BUSINESS_KEY_MAX = 128
ACCOUNT_TYPE_MAX = 64
EMPLOYEE_TYPE_MAX = 64
EMPLOYEE_NUMBER_MAX = 64
EMPLOYEE_NAME_MAX = 100
DEPARTMENT_CODE_MAX = 64
PARTNER_COMPANY_MAX = 200
COUNTRY_MAX = 64
PHONE_MAX = 20
PRIORITY_MIN = -10
PRIORITY_MAX = 10
CALLBACK_URL_MAX = 2048

PHONE_RAW_MAX = PHONE_MAX + 10  # room for separators: "+86 (138) 0013-8001"


def _char_class(ranges: list[tuple[int, int]]) -> str:
    r"""The inside of a regex character class, as \uXXXX escapes that Python, ECMA-262 and the JSON Schema
    validators all read the same way."""
    return "".join(f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in ranges)


# Control characters, invisible formatting (zero-width, bidi marks and overrides, BOM, the combining grapheme
# joiner), the Hangul fillers that render as nothing, and lone surrogates: never meaningful in a name or a
# key, and a classic way to make two values look alike or a name look empty.
FORBIDDEN_CHAR_RANGES = [
    (0x00, 0x1F), (0x7F, 0x9F), (0xAD, 0xAD), (0x34F, 0x34F), (0x61C, 0x61C), (0x115F, 0x1160),
    (0x180E, 0x180E), (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB),
]
SURROGATE_RANGE = (0xD800, 0xDFFF)  # cannot be written in a schema pattern: no JSON Schema validator can hold one
# The whitespace that is left once the forbidden characters are out (what str.strip() removes around text).
WHITESPACE_RANGES = [(0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x202F, 0x202F),
                     (0x205F, 0x205F), (0x3000, 0x3000)]
_F = _char_class(FORBIDDEN_CHAR_RANGES)
_W = _char_class(WHITESPACE_RANGES)
_S = f"[{_W}\\-()]"  # phone separators: whitespace, '-' and parentheses

# Patterns the published schema states and the validation below enforces, on the value as sent.
# Identifiers: exactly these characters, nothing around them.
ORIGIN_SYSTEM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
EMPLOYEE_NUMBER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# Free text: no forbidden character, and (when required) at least one visible one; whitespace around it is
# dropped before storing.
TEXT_PATTERN = f"^[^{_F}]*[^{_F}{_W}][^{_F}]*$"
OPTIONAL_TEXT_PATTERN = f"^[^{_F}]*$"
# A mainland mobile (optionally +86) or a '+'-prefixed international number, separators anywhere.
PHONE_PATTERN = f"^{_S}*(1{_S}*[3-9]({_S}*[0-9]){{9}}|\\+{_S}*[1-9]({_S}*[0-9]){{6,14}}){_S}*$"
# Blank (no callback) or an http(s) URL without whitespace; the callback policy checks the rest.
CALLBACK_URL_PATTERN = f"^[{_W}]*$|^[{_W}]*[hH][tT][tT][pP][sS]?://[^{_F}{_W}]+[{_W}]*$"
REQUEST_ID_PATTERN = r"^req_[0-9]{8}_[0-9a-f]{12}$"
MAINLAND_MOBILE_PATTERN = r"^1[3-9][0-9]{9}$"
INTERNATIONAL_PHONE_PATTERN = r"^\+[1-9][0-9]{6,14}$"

ORIGIN_SYSTEM_RE = re.compile(ORIGIN_SYSTEM_PATTERN)
REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
_employee_number_re = re.compile(EMPLOYEE_NUMBER_PATTERN)
_phone_re = re.compile(PHONE_PATTERN)
_mainland_re = re.compile(MAINLAND_MOBILE_PATTERN)
_international_re = re.compile(INTERNATIONAL_PHONE_PATTERN)
_phone_separators_re = re.compile(r"[\s\-()]")
_forbidden_chars_re = re.compile(f"[{_F}{_char_class([SURROGATE_RANGE])}]")
KEY_DISPLAY_MAX = 64


def has_forbidden_chars(value: str) -> bool:
    return _forbidden_chars_re.search(value) is not None


def describe_key(key) -> str:
    """A caller's unknown key as it may be echoed in an error: short, printable and encodable."""
    text = str(key)
    shown = _forbidden_chars_re.sub(lambda m: f"\\u{ord(m.group()):04x}", text[:KEY_DISPLAY_MAX])
    return shown + ("…" if len(text) > KEY_DISPLAY_MAX else "")


TOP_LEVEL_FIELDS = {
    "originSystem", "businessKey", "accountType", "employeeType", "systemList", "userList",
    "priority", "callbackUrl",
}
USER_FIELDS = {"employeeNumber", "employeeName", "departmentCode", "phoneNumber", "partnerCompany", "country"}


@dataclass
class ValidatedBatch:
    origin_system: str
    business_key: str
    account_type: str
    employee_type: str
    system_list: list[str]
    users: list[dict]
    priority: int | None = None
    callback_url: str = ""
    fingerprint: str = field(default="")


class _Errors:
    def __init__(self):
        self.items: list[dict] = []

    def add(self, path: str, code: str, message: str) -> None:
        self.items.append({"field": path, "code": code, "message": message})


def _text(errors: _Errors, data: dict, key: str, path: str, *, max_length: int, required: bool,
          pattern: re.Pattern | None = None, pattern_message: str = "") -> str:
    """One string field, checked as the schema states it: length and characters of the value as sent.

    With a `pattern` (identifiers) the value must match exactly, surrounding whitespace included; free text
    loses its surrounding whitespace and is stored in normal form C. An optional field may be null.
    """
    value = data.get(key)
    if value is None:
        if required:
            errors.add(path, "required", "此字段为必填项。")
        return ""
    if not isinstance(value, str):
        errors.add(path, "invalid_type", "必须是字符串。")
        return ""
    if len(value) > max_length:
        errors.add(path, "too_long", f"最多 {max_length} 个字符。")
        return ""
    if _forbidden_chars_re.search(value):
        errors.add(path, "invalid_characters", "含有控制字符或不可见的格式字符。")
        return ""
    if not value.strip():
        if required:
            errors.add(path, "blank", "不能为空白。")
        return ""
    if pattern is not None:
        if not pattern.fullmatch(value):
            errors.add(path, "invalid_format", pattern_message)
            return ""
        return value
    value = value.strip()
    if not unicodedata.is_normalized("NFC", value):
        value = unicodedata.normalize("NFC", value)
        if len(value) > max_length:  # a few characters expand under NFC; the column holds max_length
            errors.add(path, "too_long", f"按 NFC 规范化后最多 {max_length} 个字符。")
            return ""
    return value


def normalize_phone(value: str) -> str | None:
    """Return the phone number in its stored form, or None when it is not a valid number."""
    compact = _phone_separators_re.sub("", value)
    if _mainland_re.fullmatch(compact):
        return compact
    if compact.startswith("+86") and _mainland_re.fullmatch(compact[3:]):
        return compact[3:]
    if _international_re.fullmatch(compact):
        return compact
    return None


def _validate_user(errors: _Errors, user, index: int) -> dict | None:
    prefix = f"userList[{index}]"
    if not isinstance(user, dict):
        errors.add(prefix, "invalid_type", "每个用户必须是一个对象。")
        return None
    for key in sorted(user.keys() - USER_FIELDS):
        errors.add(f"{prefix}.{describe_key(key)}", "unknown_field", "未知字段。")
    employee_number = _text(
        errors, user, "employeeNumber", f"{prefix}.employeeNumber", max_length=EMPLOYEE_NUMBER_MAX, required=True,
        pattern=_employee_number_re,
        pattern_message="只能包含字母、数字、“.”、“_”和“-”，且以字母或数字开头。",
    )
    employee_name = _text(errors, user, "employeeName", f"{prefix}.employeeName",
                          max_length=EMPLOYEE_NAME_MAX, required=True)
    department_code = _text(errors, user, "departmentCode", f"{prefix}.departmentCode",
                            max_length=DEPARTMENT_CODE_MAX, required=True)
    raw_phone = _text(errors, user, "phoneNumber", f"{prefix}.phoneNumber", max_length=PHONE_RAW_MAX,
                      required=True)
    phone = ""
    if raw_phone:
        phone = normalize_phone(raw_phone) or ""
        if not phone:
            errors.add(f"{prefix}.phoneNumber", "invalid_phone",
                       "必须是中国大陆手机号（11 位，以 13–19 开头）或以“+”开头的国际号码。")
    partner_company = _text(errors, user, "partnerCompany", f"{prefix}.partnerCompany",
                            max_length=PARTNER_COMPANY_MAX, required=False)
    country = _text(errors, user, "country", f"{prefix}.country", max_length=COUNTRY_MAX, required=False)
    return {
        "employee_number": employee_number,
        "employee_name": employee_name,
        "department_code": department_code,
        "phone_number": phone,
        "partner_company": partner_company,
        "country": country,
    }


def _validate_priority(errors: _Errors, data: dict) -> int | None:
    value = data.get("priority")
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema counts 5.0 as an integer, and so does the API
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add("priority", "invalid_type", "必须是整数。")
        return None
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        errors.add("priority", "out_of_range", f"必须在 {PRIORITY_MIN} 到 {PRIORITY_MAX} 之间。")
        return None
    return value


class CallbackUrlRejected(ValueError):
    """The callback URL breaks the callback policy; the message tells the caller why."""


class CallbackHostUnresolved(CallbackUrlRejected):
    """The callback host did not resolve: refused at intake, worth another try at delivery."""


@dataclass(frozen=True)
class CallbackTarget:
    """Where a callback goes: the checked URL split into what a connection needs."""

    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, lower case, without brackets
    port: int
    path: str  # path and query, at least "/"
    addresses: tuple[str, ...]  # the checked addresses to connect to; empty: connect by name (allow-listed)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.scheme == "https" else 80
        return host if self.port == default_port else f"{host}:{self.port}"


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the host name resolves to (A and AAAA)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise CallbackHostUnresolved(f"无法解析主机 {host!r}。") from e
    return list(dict.fromkeys(info[4][0] for info in infos))


def forbidden_address(address: str) -> bool:
    """True for addresses a callback must never reach: private, loopback, link-local, reserved and the like."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") names no new address
    if ip.version == 6:
        # IPv4 embedded in IPv6 (mapped, 6to4, Teredo) reaches the IPv4 host: judge that one too.
        embedded = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if any(inner is not None and forbidden_address(str(inner)) for inner in embedded):
            return True
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
            or ip.is_multicast or ip.is_unspecified)


def _allowed_hosts() -> set[str]:
    return {host.strip().lower().rstrip(".") for host in settings.CALLBACK_ALLOWED_HOSTS if host.strip()}


def check_callback_url(url: str) -> CallbackTarget:
    """Apply the callback policy to a URL, resolving its host; raise CallbackUrlRejected when it fails.

    https only, or http for a host on CALLBACK_ALLOWED_HOSTS; no credentials; and unless the host is
    allow-listed or CALLBACK_ALLOW_PRIVATE_NETWORKS is on, every address the host resolves to must be a
    public one. Called at intake and again right before each delivery, because DNS answers change.
    """
    if len(url) > CALLBACK_URL_MAX:
        raise CallbackUrlRejected(f"最多 {CALLBACK_URL_MAX} 个字符。")
    if any(ch.isspace() for ch in url) or _forbidden_chars_re.search(url):
        raise CallbackUrlRejected("不能包含空格或控制字符。")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise CallbackUrlRejected(f"不是有效的 URL：{e}。") from e
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise CallbackUrlRejected("必须是 https:// 地址。")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise CallbackUrlRejected("不能包含用户名和密码（user:password@）。")
    raw_host = (parts.hostname or "").rstrip(".")
    if not raw_host:
        raise CallbackUrlRejected("必须包含主机名。")
    try:
        host = raw_host.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise CallbackUrlRejected(f"{raw_host!r} 不是有效的主机名。") from e
    if port == 0:
        raise CallbackUrlRejected("端口 0 不是有效端口。")
    port = port or (443 if scheme == "https" else 80)
    allow_listed = host in _allowed_hosts()
    if scheme == "http" and not allow_listed:
        raise CallbackUrlRejected("必须是 https:// 地址（仅白名单中的主机可用 http）。")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if allow_listed or settings.CALLBACK_ALLOW_PRIVATE_NETWORKS:
        return CallbackTarget(scheme, host, port, path, addresses=())
    try:
        addresses = [str(ipaddress.ip_address(host))]
        verb = "是"
    except ValueError:
        addresses = resolve_host(host, port)
        verb = "解析到"
    refused = [address for address in addresses if forbidden_address(address)]
    if refused:
        raise CallbackUrlRejected(
            f"主机 {host!r} {verb}私有、回环、链路本地或保留地址（{', '.join(refused)}）；"
            "回调只能发往公网地址。"
        )
    return CallbackTarget(scheme, host, port, path, addresses=tuple(addresses))


def _validate_callback_url(errors: _Errors, data: dict) -> str:
    value = data.get("callbackUrl")
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.add("callbackUrl", "invalid_type", "必须是字符串。")
        return ""
    # Length and characters of the value as sent, as the schema states them; the policy checks the rest.
    if len(value) > CALLBACK_URL_MAX:
        errors.add("callbackUrl", "invalid_callback_url", f"最多 {CALLBACK_URL_MAX} 个字符。")
        return ""
    if _forbidden_chars_re.search(value):
        errors.add("callbackUrl", "invalid_callback_url", "不能包含空格或控制字符。")
        return ""
    value = value.strip()
    if not value:
        return ""
    try:
        check_callback_url(value)
    except CallbackUrlRejected as e:
        errors.add("callbackUrl", "invalid_callback_url", str(e))
        return ""
    return value


def _user_list(errors: _Errors, data: dict, *, empty_message: str) -> list:
    """The userList as sent when it is a list of an acceptable size; else an error and nothing to check."""
    raw_users = data.get("userList")
    max_users = settings.MAX_USERS_PER_REQUEST
    if raw_users is None:
        errors.add("userList", "required", "此字段为必填项。")
    elif not isinstance(raw_users, list):
        errors.add("userList", "invalid_type", "必须是列表。")
    elif not raw_users:
        errors.add("userList", "empty", empty_message)
    elif len(raw_users) > max_users:
        # Do not validate each user of an oversized batch: one clear error is more useful than thousands.
        errors.add("userList", "too_many_users",
                   f"每个请求最多 {max_users} 个用户，请拆分批次（收到 {len(raw_users)} 个）。")
    else:
        return raw_users
    return []


def _check_unique(errors: _Errors, seen: dict[str, int], number: str, index: int) -> bool:
    """Each employee number at most once in a batch, case-insensitively; True for a valid first one."""
    if not number:
        return False
    folded = number.upper()
    if folded in seen:
        errors.add(f"userList[{index}].employeeNumber", "duplicate",
                   f"员工编号 {number} 已出现在 userList[{seen[folded]}]。")
        return False
    seen[folded] = index
    return True


def validate_create_accounts(data) -> ValidatedBatch:
    """Validate and normalize a create_accounts body; raise PayloadInvalid with every error found."""
    if not isinstance(data, dict):
        raise PayloadInvalid("请求体必须是 JSON 对象。", code="invalid_body")
    errors = _Errors()
    for key in sorted(data.keys() - TOP_LEVEL_FIELDS):
        errors.add(describe_key(key), "unknown_field", "未知字段。")

    origin_system = _text(errors, data, "originSystem", "originSystem", max_length=ORIGIN_SYSTEM_MAX,
                          required=True, pattern=ORIGIN_SYSTEM_RE,
                          pattern_message="只能包含字母、数字、“.”、“_”和“-”。")
    business_key = _text(errors, data, "businessKey", "businessKey", max_length=BUSINESS_KEY_MAX, required=True)
    account_type = _text(errors, data, "accountType", "accountType", max_length=ACCOUNT_TYPE_MAX, required=True)
    employee_type = _text(errors, data, "employeeType", "employeeType", max_length=EMPLOYEE_TYPE_MAX,
                          required=True)
    priority = _validate_priority(errors, data)
    callback_url = _validate_callback_url(errors, data)

    system_list = _validate_system_list(errors, data.get("systemList"), required=True)

    users: list[dict] = []
    seen: dict[str, int] = {}
    for index, raw_user in enumerate(_user_list(errors, data, empty_message="请至少提交一个用户。")):
        user = _validate_user(errors, raw_user, index)
        if user is None:
            continue
        _check_unique(errors, seen, user["employee_number"], index)
        users.append(user)

    if errors.items:
        raise PayloadInvalid(
            f"请求中有 {len(errors.items)} 个字段无效。", errors=errors.items,
        )
    batch = ValidatedBatch(
        origin_system=origin_system, business_key=business_key, account_type=account_type,
        employee_type=employee_type, system_list=system_list, users=users, priority=priority,
        callback_url=callback_url,
    )
    batch.fingerprint = fingerprint(batch)
    return batch


def fingerprint(batch: ValidatedBatch) -> str:
    """A digest of the normalized payload: equal for resubmissions of the same batch."""
    document = {
        "originSystem": batch.origin_system,
        "businessKey": batch.business_key,
        "accountType": batch.account_type,
        "employeeType": batch.employee_type,
        "systemList": batch.system_list,
        "users": batch.users,
        "priority": batch.priority,
    }
    if batch.callback_url:
        # Only when given: batches without a callback keep the fingerprints they were stored with.
        document["callbackUrl"] = batch.callback_url
    canonical = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- deactivate_accounts --------------------------------------------------------------------------

DEACTIVATE_FIELDS = {"originSystem", "businessKey", "systemList", "userList", "priority", "callbackUrl"}
DEACTIVATE_USER_FIELDS = {"employeeNumber"}


@dataclass
class ValidatedDeactivation:
    origin_system: str
    business_key: str
    system_list: list[str]      # empty: every system the person has an account in
    employee_numbers: list[str]
    priority: int | None = None
    callback_url: str = ""
    fingerprint: str = field(default="")


def _validate_system_list(errors: _Errors, raw_systems, *, required: bool) -> list[str]:
    systems = settings.PROVISIONING_SYSTEMS
    system_list: list[str] = []
    if raw_systems is None:
        if required:
            errors.add("systemList", "required", "此字段为必填项。")
    elif not isinstance(raw_systems, list):
        errors.add("systemList", "invalid_type", "必须是列表。")
    elif not raw_systems:
        errors.add("systemList", "empty", "请至少指定一个系统。")
    else:
        for index, system in enumerate(raw_systems):
            if not isinstance(system, str) or system not in systems:
                errors.add(f"systemList[{index}]", "invalid_choice", f"必须是以下之一：{', '.join(systems)}。")
            elif system in system_list:
                errors.add(f"systemList[{index}]", "duplicate", f"“{system}”重复出现。")
            else:
                system_list.append(system)
    return system_list


def validate_deactivate_accounts(data) -> ValidatedDeactivation:
    """Validate a deactivate_accounts body; raise PayloadInvalid with every error found.

    Whether each person was submitted by this origin is checked against the database at intake."""
    if not isinstance(data, dict):
        raise PayloadInvalid("请求体必须是 JSON 对象。", code="invalid_body")
    errors = _Errors()
    for key in sorted(data.keys() - DEACTIVATE_FIELDS):
        errors.add(describe_key(key), "unknown_field", "未知字段。")
    origin_system = _text(errors, data, "originSystem", "originSystem", max_length=ORIGIN_SYSTEM_MAX,
                          required=True, pattern=ORIGIN_SYSTEM_RE,
                          pattern_message="只能包含字母、数字、“.”、“_”和“-”。")
    business_key = _text(errors, data, "businessKey", "businessKey", max_length=BUSINESS_KEY_MAX, required=True)
    priority = _validate_priority(errors, data)
    callback_url = _validate_callback_url(errors, data)
    system_list = _validate_system_list(errors, data.get("systemList"), required=False)
    numbers: list[str] = []
    seen: dict[str, int] = {}
    for index, user in enumerate(_user_list(errors, data, empty_message="请至少指定一个用户。")):
        prefix = f"userList[{index}]"
        if not isinstance(user, dict):
            errors.add(prefix, "invalid_type", "每个用户必须是一个对象。")
            continue
        for key in sorted(user.keys() - DEACTIVATE_USER_FIELDS):
            errors.add(f"{prefix}.{describe_key(key)}", "unknown_field", "未知字段。")
        number = _text(errors, user, "employeeNumber", f"{prefix}.employeeNumber",
                       max_length=EMPLOYEE_NUMBER_MAX, required=True, pattern=_employee_number_re,
                       pattern_message="只能包含字母、数字、“.”、“_”和“-”，且以字母或数字开头。")
        if _check_unique(errors, seen, number, index):
            numbers.append(number)
    if errors.items:
        raise PayloadInvalid(f"请求中有 {len(errors.items)} 个字段无效。", errors=errors.items)
    batch = ValidatedDeactivation(origin_system=origin_system, business_key=business_key, system_list=system_list,
                                  employee_numbers=numbers, priority=priority, callback_url=callback_url)
    document = {"requestType": "deactivate", "originSystem": origin_system, "businessKey": business_key,
                "systemList": system_list, "userList": numbers, "priority": priority, "callbackUrl": callback_url}
    canonical = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    batch.fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return batch
