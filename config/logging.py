"""Logs as one JSON object per line, with the request (or stage run) id, and the masking of secrets and phones."""

import contextvars
import datetime as dt
import json
import logging
import re
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_SECRET_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+"), r"\1***"),
    (re.compile(r"aps_[A-Za-z0-9_\-]{8,}"), "aps_***"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"), "whsec_***"),
    (re.compile(r"(?i)((?:access_token|corpsecret|client_secret|secret|password|token)[\"']?\s*[=:]\s*[\"']?)"
                r"[^&\s\"',;}]+"), r"\1***"),
    (re.compile(r"(?i)(x-wlk-authorization[\"']?\s*[=:]\s*[\"']?)[^\s\"',;}]+"), r"\1***"),
]
# Mainland mobiles (optionally +86) keep their first 3 and last 4 digits, international numbers their first
# 3 and last 3.
_PHONE = re.compile(r"(?<![0-9])(\+?86[- ]?)?(1[3-9][0-9])([0-9]{4})([0-9]{4})(?![0-9])")
_INTL_PHONE = re.compile(r"(?<![0-9A-Za-z])\+([1-9][0-9]{2})[0-9]{3,9}([0-9]{3})(?![0-9])")
_QUERY_STRING = re.compile(r"\?[^\s'\"]*")


def mask_phone(phone: str) -> str:
    """138****8001 for one phone number: enough to recognise it, not enough to call it.

    Separators and a mainland +86 are dropped first; a value too short to hold back more than it shows
    (under 11 digits) is only "****".
    """
    digits = re.sub(r"[^0-9]", "", phone or "")
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if len(digits) < 11:
        return "****"
    return f"{digits[:3]}****{digits[-4:]}"


def mask_phones(text: str) -> str:
    """Mask every phone number inside a free text; other digits (order numbers, ids) are left alone."""
    text = _PHONE.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}****{m.group(4)}", text or "")
    return _INTL_PHONE.sub(lambda m: f"+{m.group(1)}****{m.group(2)}", text)


def redact(text: str, *, drop_query_strings: bool = False) -> str:
    """Mask secrets and phone numbers; with drop_query_strings, cut every URL's query to "?…" as well.

    Dropping suits text whose URLs may carry any parameter (urllib3's request lines, transport errors):
    a query can hold a token under a name no pattern here knows.
    """
    text = text or ""
    if drop_query_strings:
        text = _QUERY_STRING.sub("?…", text)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return mask_phones(text)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class RedactingFilter(logging.Filter):
    """Applied to every record before any handler formats it (and to urllib3's, dropping query strings)."""

    def __init__(self, name: str = "", *, drop_query_strings: bool = False):
        super().__init__(name)
        self.drop_query_strings = drop_query_strings

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = str(record.msg)
        record.msg = redact(message, drop_query_strings=self.drop_query_strings)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, drop_query_strings=self.drop_query_strings)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


_INCOMING_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


class RequestIdMiddleware:
    """Tags every log line of a request with an id: the caller's X-Request-ID if sane, else a new one."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _INCOMING_ID.match(incoming) else new_request_id()
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response
