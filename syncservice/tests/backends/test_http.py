"""The shared HTTP plumbing: redaction, Retry-After, identity matching, the token cache and the pool."""

import email.utils
import threading
import time

import pytest

from config.logging import mask_phone, mask_phones, redact
from syncservice.backends import get_backend
from syncservice.backends.http import (
    TokenCache,
    national_mobile,
    parse_retry_after,
    record_belongs_to,
    strong_password,
)

from .conftest import make_person


@pytest.mark.parametrize("phone, masked", [
    ("13800138001", "138****8001"), ("+86-13800138001", "138****8001"), ("12345", "****"), ("", "****"),
])
def test_mask_phone(phone, masked):
    assert mask_phone(phone) == masked


def test_phone_numbers_and_query_strings_are_redacted_from_free_text():
    text = "mobile +86-13800138001 and 13912345678 taken; url /cgi-bin/gettoken?corpid=a&corpsecret=S3CRET x"

    redacted = redact(text)

    assert "13800138001" not in redacted and "13912345678" not in redacted and "S3CRET" not in redacted
    assert "+86-138****8001" in redacted and "139****5678" in redacted
    assert mask_phones("order 1234567890123") == "order 1234567890123"   # not a mobile: left alone


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("7") == 7
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= parse_retry_after(in_a_minute) <= 60
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0


def test_national_mobile_accepts_the_usual_spellings():
    assert {national_mobile(p) for p in ("13800138001", "+86-13800138001", "86 138 0013 8001")} == {"13800138001"}


def test_record_belongs_to_prefers_strong_evidence_over_the_name():
    person = make_person(full_name="张三", phone_number="13800138001")

    assert record_belongs_to(person, ids=[person.employee_number])
    assert record_belongs_to(person, mobiles=["+86-13800138001"], names=["别人"])
    assert record_belongs_to(person, emails=[person.email.upper()])
    assert not record_belongs_to(person, ids=["SOMEONE"], emails=["x@example.com"], names=["张三"])
    assert record_belongs_to(person, names=["张三"])
    assert not record_belongs_to(person, names=["李四"])


def test_strong_password_has_every_character_class():
    passwords = {strong_password() for _ in range(50)}

    assert len(passwords) == 50
    for password in passwords:
        assert len(password) == 16
        assert any(c.islower() for c in password) and any(c.isupper() for c in password)
        assert any(c.isdigit() for c in password) and any(not c.isalnum() for c in password)


def test_token_cache_fetches_once_for_many_threads_and_keeps_a_newer_token(backend_settings):
    fetched = []

    def fetch():
        time.sleep(0.05)   # slow enough that every thread arrives while the first fetch runs
        fetched.append(f"token-{len(fetched) + 1}")
        return fetched[-1], 7200

    cache = TokenCache(fetch)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(cache.get())) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == ["token-1"] * 10

    cache.invalidate("token-1")
    assert cache.get() == "token-2"
    cache.invalidate("token-1")   # a late thread reporting the old token must not drop the new one
    assert cache.get() == "token-2"
    assert cache.fetches == 2


def test_token_cache_refreshes_before_expiry(backend_settings):
    backend_settings.TARGET_TOKEN_REFRESH_MARGIN_SECONDS = 300
    issued = iter(["short-1", "short-2"])
    cache = TokenCache(lambda: (next(issued), 0.2))   # 0.2 s lifetime: refreshed after 0.1 s

    assert cache.get() == "short-1"
    time.sleep(0.15)
    assert cache.get() == "short-2"


def test_connection_pool_is_sized_to_the_systems_concurrency(welink_sim, backend_settings):
    backend_settings.BACKEND_CONCURRENCY = {**backend_settings.BACKEND_CONCURRENCY, "welink": 13}

    adapter = get_backend("welink").http.session.get_adapter("https://open.welink.huaweicloud.com")

    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 13
    assert adapter.max_retries.total == 0
