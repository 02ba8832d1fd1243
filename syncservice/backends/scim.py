"""IDaaS over SCIM 2.0 (RFC 7643/7644): look the user up by userName, create it, resolve 409 by a lookup.

Settings: IDAAS_SCIM_URL (the base URL, the one that ends before /Users) and IDAAS_SCIM_TOKEN (a static
bearer token, from the environment). The account's external id is the SCIM `id` the server assigned.
"""

import json

from django.conf import settings

from .base import Outcome, PersonSnapshot, TargetBackend
from .http import HttpClient, TargetError, body_excerpt, json_object, log_vendor_answer, record_belongs_to, safe_json

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_MEDIA_TYPE = "application/scim+json"


def scim_error(body) -> tuple[str, str]:
    """(scimType, detail) of a SCIM error message (RFC 7644 §3.12); its `status` only repeats the HTTP one."""
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("scimType") or ""), str(body.get("detail") or "")


def filter_string(value: str) -> str:
    """A SCIM filter string literal: JSON string rules (RFC 7644 §3.4.2.2)."""
    return json.dumps(value, ensure_ascii=False)


class ScimIdaasBackend(TargetBackend):
    system = "idaas"

    def __init__(self, **options):
        super().__init__(**options)
        self.http = HttpClient(system=self.system, url_setting="IDAAS_SCIM_URL", error_fields=scim_error)

    def close(self) -> None:
        self.http.close()

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {settings.IDAAS_SCIM_TOKEN}", "Accept": SCIM_MEDIA_TYPE,
                "Content-Type": SCIM_MEDIA_TYPE}

    def ensure_account(self, person: PersonSnapshot, state: dict) -> Outcome:
        if not person.employee_number:
            return Outcome.permanent("invalid_person", "the person has no employee number (the SCIM userName)")
        try:
            existing = self._find(person)
            if existing is not None:
                return self._link(existing, person, "the user existed already")
            return self._create(person)
        except TargetError as e:
            return e.outcome

    def _find(self, person: PersonSnapshot) -> dict | None:
        response = self.http.request(
            "GET", "/Users", headers=self._headers(),
            params={"filter": f"userName eq {filter_string(person.employee_number)}"},
        )
        if response.status_code == 404:
            return None  # some servers answer an empty search with 404 instead of an empty ListResponse
        if response.status_code != 200:
            raise TargetError(self._failure(response, person, "lookup"))
        body = json_object(response, self.system)
        users = [u for u in body.get("Resources") or [] if isinstance(u, dict)]
        # userName is case-insensitive in SCIM (caseExact false): compare the same way.
        users = [u for u in users if str(u.get("userName", "")).casefold() == person.employee_number.casefold()]
        if len(users) > 1:
            raise TargetError(Outcome.permanent(
                "ambiguous", f"{len(users)} SCIM users have userName {person.employee_number}"))
        return users[0] if users else None

    def _create(self, person: PersonSnapshot) -> Outcome:
        user = {
            "schemas": [USER_SCHEMA],
            "userName": person.employee_number,
            "externalId": person.employee_number,
            "name": {"formatted": person.full_name},
            "displayName": person.full_name,
            "active": True,
        }
        if person.email:
            user["emails"] = [{"value": person.email, "type": "work", "primary": True}]
        if person.phone_number:
            user["phoneNumbers"] = [{"value": person.phone_number, "type": "mobile"}]
        response = self.http.request("POST", "/Users", headers=self._headers(),
                                     data=json.dumps(user, ensure_ascii=False).encode("utf-8"))
        if response.status_code in (200, 201):
            body = json_object(response, self.system)
            if not body.get("id"):
                raise TargetError(Outcome.transient("bad_response", "SCIM created the user but returned no id"))
            return Outcome.created(str(body["id"]))
        if response.status_code == 409:
            scim_type, detail = scim_error(safe_json(response))
            log_vendor_answer(self.system, "create", person, f"409 {scim_type}", detail)
            # 409 means another request created the user first (ours, after a lost answer, or someone else).
            existing = self._find(person)
            if existing is not None:
                return self._link(existing, person, detail or "409 uniqueness")
            return Outcome.permanent(scim_type or "http_409", detail or body_excerpt(response))
        return self._failure(response, person, "create")

    def _link(self, user: dict, person: PersonSnapshot, context: str) -> Outcome:
        emails = [e.get("value", "") for e in user.get("emails") or [] if isinstance(e, dict)]
        phones = [p.get("value", "") for p in user.get("phoneNumbers") or [] if isinstance(p, dict)]
        name = user.get("name") if isinstance(user.get("name"), dict) else {}
        if record_belongs_to(person, ids=[user.get("externalId")], emails=emails, mobiles=phones,
                             names=[user.get("displayName"), name.get("formatted")]):
            return Outcome.linked(str(user.get("id", "")), message=context)
        return Outcome.permanent(
            "uniqueness", f"{context}: SCIM user {user.get('id')} with userName {person.employee_number} "
                          f"belongs to someone else (externalId {user.get('externalId')!r})")

    def _failure(self, response, person: PersonSnapshot, operation: str) -> Outcome:
        scim_type, detail = scim_error(safe_json(response))
        code = scim_type or f"http_{response.status_code}"
        message = detail or body_excerpt(response)
        log_vendor_answer(self.system, operation, person, code, message)
        if response.status_code == 401:
            # A rejected static token is a configuration fault an operator can fix: let the task wait for it.
            return Outcome.transient(code, message)
        return Outcome.permanent(code, message)
