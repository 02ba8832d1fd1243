"""HTTP plumbing shared by the real backends: pooled sessions, timeouts, error mapping, tokens, redaction.

Every call goes through ``HttpClient.request``: it sets the timeout, turns transport failures (timeouts,
refused connections, 5xx, 429) into a ``TargetError`` carrying a transient Outcome that honours
``Retry-After``, and logs one line per call with no query string (Exmail puts the access token there), no
header and no body, so that secrets, tokens and phone numbers never reach a log.
"""

import datetime as dt
import email.utils
import logging
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

from config.logging import RedactingFilter, mask_phones, redact

from .base import ListingFailed, Outcome, PersonSnapshot
from .pacing import pace, pause

logger = logging.getLogger("syncservice.backends.http")

DEFAULT_RETRY_AFTER_SECONDS = 1.0
MAX_BODY_IN_MESSAGE = 500


class TargetError(Exception):
    """A call to a target system did not give an answer the backend can use; carries the Outcome to return."""

    def __init__(self, outcome: Outcome):
        super().__init__(f"[{outcome.code}] {outcome.message}")
        self.outcome = outcome

    def with_state(self, state: dict) -> "TargetError":
        return TargetError(replace(self.outcome, state=state))


# urllib3's debug lines ("GET /path?access_token=… 200") carry the full URL: cut the query before any handler.
logging.getLogger("urllib3.connectionpool").addFilter(RedactingFilter(drop_query_strings=True))


# --- Person identity helpers ------------------------------------------------------------------------

def national_mobile(phone: str) -> str:
    """The 11-digit national form of a mainland mobile number (+86-138…, 86138…, 138 0013 8001 → 138…)."""
    digits = re.sub(r"\D", "", phone or "")
    if len(digits) == 13 and digits.startswith("86"):
        return digits[2:]
    return digits


def service_mobile(phone: str) -> str:
    """A number a target holds, in the form the service stores: 11 digits for a mainland mobile (+86-138…,
    86138… → 138…), +<digits> for an international one (+44-20… → +4420…), so that it compares with ours."""
    phone = (phone or "").strip()
    digits = re.sub(r"\D", "", phone)
    if not digits:
        return ""
    if phone.startswith("+"):
        return digits[2:] if digits.startswith("86") else f"+{digits}"
    return national_mobile(digits)


def same_mobile(a: str, b: str) -> bool:
    a, b = national_mobile(a), national_mobile(b)
    return bool(a) and a == b


def same_text(a: str, b: str) -> bool:
    return bool(a) and bool(b) and a.strip().casefold() == b.strip().casefold()


def record_belongs_to(person: PersonSnapshot, *, ids=(), emails=(), mobiles=(), names=()) -> bool:
    """Whether an account found on a target is this person's.

    Strong evidence first: an id we set (employee number, person id), the allocated address or the mobile.
    If the record carries any of these, one must match. A record with none of them (made by hand, say) is
    ours only when its name is the person's.
    """
    our_ids = {person.employee_number, str(person.person_id)}
    ids = [i for i in ids if i]
    emails = [e for e in emails if e]
    mobiles = [m for m in mobiles if m]
    if ids or emails or mobiles:
        return (any(str(i) in our_ids for i in ids)
                or any(same_text(e, person.email) for e in emails)
                or any(same_mobile(m, person.phone_number) for m in mobiles))
    names = [n for n in names if n]
    return not names or any(same_text(n, person.full_name) for n in names)


def strong_password(length: int = 16) -> str:
    """A random password with every character class; it is sent once and never stored or logged."""
    alphabet = string.ascii_letters + string.digits + "!@#$%^&*-_=+"
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        if (any(c.islower() for c in password) and any(c.isupper() for c in password)
                and any(c.isdigit() for c in password) and any(not c.isalnum() for c in password)):
            return password


# --- Retry-After and rate limiting -----------------------------------------------------------------

def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


# --- Tokens ------------------------------------------------------------------------------------------

class TokenCache:
    """One access token per backend, fetched by one thread at a time and kept until shortly before expiry."""

    def __init__(self, fetch: Callable[[], tuple[str, float]]):
        self._fetch = fetch
        self._lock = threading.Lock()
        self._token: str | None = None
        self._valid_until = 0.0
        self.fetches = 0

    def get(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._valid_until:
                token, expires_in = self._fetch()
                self.fetches += 1
                # Refresh early (5 minutes by default), but never spend more than half a short lifetime.
                margin = min(float(settings.TARGET_TOKEN_REFRESH_MARGIN_SECONDS), expires_in / 2)
                self._token = token
                self._valid_until = time.monotonic() + max(0.0, expires_in - margin)
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` after the target refused it; a newer token another thread fetched is kept."""
        with self._lock:
            if self._token == token:
                self._token = None


# --- The client --------------------------------------------------------------------------------------

class HttpClient:
    """One pooled requests.Session for one target system, with the base URL and timeout read per call."""

    def __init__(self, *, system: str, url_setting: str, default_url: str = "",
                 error_fields: Callable[[object], tuple[str, str]] | None = None):
        self.system = system
        self.url_setting = url_setting
        self.default_url = default_url
        self.error_fields = error_fields or (lambda body: ("", ""))
        pool_size = max(1, int(settings.BACKEND_CONCURRENCY.get(system, 4)))
        self.session = requests.Session()
        # Every worker thread of this system gets a kept-alive connection; no transparent retries: a
        # create that reached the target must not be sent twice behind the backend's back.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @property
    def base_url(self) -> str:
        url = getattr(settings, self.url_setting, "") or self.default_url
        if not url:
            raise TargetError(Outcome.transient("not_configured", f"{self.url_setting} is not set"))
        return url.rstrip("/")

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, *, passthrough: tuple[int, ...] = (), **kwargs) -> requests.Response:
        """Send one request; answers 429 and 5xx and transport failures raise a transient TargetError.

        `passthrough` names statuses the caller reads itself: SCIM's 501 says "no PATCH here", not "later".
        """
        timeout = float(settings.TARGET_HTTP_TIMEOUT_SECONDS)
        url = self.base_url + path
        # The endpoint's (and the system's) shared rate, every worker process together, decides when this
        # call may leave.
        pace(self.system, path)
        started = time.monotonic()
        try:
            response = self.session.request(method, url, timeout=timeout, **kwargs)
        except requests.Timeout as e:
            self._log(method, path, started, "timeout")
            raise TargetError(Outcome.transient(
                "timeout", f"{self.system} did not answer {method} {path} within {timeout:g} s")) from e
        except requests.ConnectionError as e:
            self._log(method, path, started, "connection error")
            raise TargetError(Outcome.transient(
                "connection_error", f"{self.system} {method} {path}: {_describe(e)}")) from e
        except requests.RequestException as e:
            self._log(method, path, started, type(e).__name__)
            raise TargetError(Outcome.transient(
                "request_error", f"{self.system} {method} {path}: {_describe(e)}")) from e
        status = response.status_code
        if (status == 429 or status >= 500) and status not in passthrough:
            code, message = self.error_fields(safe_json(response))
            self._log(method, path, started, status, code)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 429:
                retry_after = DEFAULT_RETRY_AFTER_SECONDS if retry_after is None else retry_after
                self.rate_limited(retry_after, f"HTTP 429 {code}".strip(), path)
            raise TargetError(Outcome.transient(
                code or f"http_{status}", message or f"HTTP {status}: {body_excerpt(response)}",
                retry_after=retry_after, rate_limited=status == 429))
        self._log(method, path, started, status, self.error_fields(safe_json(response))[0])
        return response

    def rate_limited(self, retry_after: float, reason: str, path: str = "") -> None:
        """The target said slow down: pause this endpoint (or system) for every worker, not only this task."""
        pause(self.system, retry_after, reason, endpoint=path)

    def _log(self, method, path, started, result, code="") -> None:
        took = int((time.monotonic() - started) * 1000)
        vendor_code = code not in ("", None, "0", 0)
        suffix = f" code {code}" if vendor_code else ""
        # Plain successes are routine (debug); anything with a vendor code or failure is worth a line.
        level = logging.DEBUG if isinstance(result, int) and result < 400 and not vendor_code else logging.INFO
        logger.log(level, "%s %s %s -> %s%s (%d ms)", self.system, method, path, result, suffix, took)


def _describe(exc: Exception) -> str:
    # requests puts the URL, query string included, in its messages: strip it before it travels on.
    return f"{type(exc).__name__}: {redact(str(exc), drop_query_strings=True)}"[:MAX_BODY_IN_MESSAGE]


def safe_json(response: requests.Response):
    try:
        return response.json()
    except ValueError:
        return None


def body_excerpt(response: requests.Response) -> str:
    return (response.text or "").strip()[:MAX_BODY_IN_MESSAGE]


def json_object(response: requests.Response, system: str) -> dict:
    """The JSON object of a 2xx/4xx answer; anything else (an HTML error page from a proxy) is transient."""
    body = safe_json(response)
    if not isinstance(body, dict):
        raise TargetError(Outcome.transient(
            "bad_response", f"{system} answered HTTP {response.status_code} without a JSON object: "
                            f"{body_excerpt(response)[:200]}"))
    return body


def listing_failure(error: TargetError) -> ListingFailed:
    """What a listing raises for a call that gave no usable answer: the outcome's code and message, verbatim."""
    outcome = error.outcome
    return ListingFailed(outcome.code, outcome.message, retry_after=outcome.retry_after)


def log_vendor_answer(system: str, operation: str, person: PersonSnapshot, code, message: str) -> None:
    """One line per non-zero vendor code, verbatim but with phone numbers masked."""
    logger.warning("%s %s for %s: code %s: %s", system, operation, person.employee_number, code,
                   mask_phones(str(message))[:MAX_BODY_IN_MESSAGE])
