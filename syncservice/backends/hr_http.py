"""The HR source over HTTP: pages of persons changed since a cursor, keyset-paged by (last_update_date, person_id).

Settings: HR_API_URL, HR_API_TOKEN (environment, sent as a bearer token), HR_HTTP_RETRIES. The endpoint
contract is in docs/backends.md. A page that cannot be read raises HrSourceError: the sync run fails and
its watermark stays where it was.
"""

import logging
import time

from django.conf import settings

from .base import HrPage, HrSourceBackend
from .http import HttpClient, TargetError, body_excerpt, json_object

logger = logging.getLogger(__name__)

MAX_RETRY_WAIT_SECONDS = 30.0


class HrSourceError(RuntimeError):
    """The HR source could not give a page; the message says why (never with the token)."""


def hr_error(body) -> tuple[str, str]:
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("code") or body.get("error") or ""), str(body.get("message") or body.get("detail") or "")


def parse_cursor(raw) -> tuple | None:
    """The next cursor as (updated_after ISO, after_id); the endpoint may send an object or a pair."""
    if raw in (None, "", [], {}):
        return None
    if isinstance(raw, dict):
        updated_after, after_id = raw.get("updated_after"), raw.get("after_id")
    elif isinstance(raw, (list, tuple)) and len(raw) == 2:
        updated_after, after_id = raw
    else:
        raise HrSourceError(f"HR answered an unreadable next_cursor: {raw!r}"[:300])
    if not updated_after or after_id is None:
        raise HrSourceError(f"HR answered an incomplete next_cursor: {raw!r}"[:300])
    return str(updated_after), int(after_id)


class HttpHrBackend(HrSourceBackend):
    def __init__(self, **options):
        self.options = options
        self.http = HttpClient(system="hr", url_setting="HR_API_URL", error_fields=hr_error)

    def close(self) -> None:
        self.http.close()

    def fetch_changed_persons(self, *, updated_after: str | None, after_id: int | None, limit: int) -> HrPage:
        params: dict = {"limit": limit}
        if updated_after:
            params["updated_after"] = updated_after
        if after_id is not None:
            params["after_id"] = after_id
        body = self._get_page(params)
        persons = body.get("persons")
        if not isinstance(persons, list):
            raise HrSourceError("HR answered without a `persons` list")
        next_cursor = parse_cursor(body.get("next_cursor"))
        if next_cursor is not None and next_cursor == (updated_after, after_id):
            raise HrSourceError(f"HR answered the same cursor it was given ({next_cursor}): it would loop")
        return HrPage(persons=persons, next_cursor=next_cursor)

    def _get_page(self, params: dict) -> dict:
        """GET /persons, retrying transient failures a few times: the read is idempotent."""
        retries = max(0, int(settings.HR_HTTP_RETRIES))
        headers = {"Authorization": f"Bearer {settings.HR_API_TOKEN}", "Accept": "application/json"}
        for attempt in range(retries + 1):
            try:
                response = self.http.request("GET", "/persons", params=params, headers=headers)
                if response.status_code != 200:
                    code, message = hr_error(json_object(response, "hr") if _is_json(response) else None)
                    raise HrSourceError(f"HR answered HTTP {response.status_code}"
                                        f"{f' [{code}]' if code else ''}: {message or body_excerpt(response)}")
                return json_object(response, "hr")
            except TargetError as e:
                if attempt == retries:
                    raise HrSourceError(f"HR source unavailable: [{e.outcome.code}] {e.outcome.message}") from e
                retry_after = e.outcome.retry_after
                wait = min(0.5 * 2 ** attempt if retry_after is None else retry_after, MAX_RETRY_WAIT_SECONDS)
                logger.info("HR page failed ([%s]); retrying in %.1f s", e.outcome.code, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")


def _is_json(response) -> bool:
    return "json" in response.headers.get("Content-Type", "")
