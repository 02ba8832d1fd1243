"""IDaaS over SCIM 2.0 (RFC 7643/7644): look the user up by userName, create it, resolve 409 by a lookup.

Settings: IDAAS_SCIM_URL (the base URL, the one that ends before /Users) and IDAAS_SCIM_TOKEN (a static
bearer token, from the environment). The account's external id is the SCIM `id` the server assigned.
A change is a PATCH of `replace` operations (RFC 7644 §3.5.2); a server without PATCH gets GET + PUT.
Reconciliation reads every user by index paging, `GET /Users?startIndex=&count=` (RFC 7644 §3.4.2.4).
"""

import json
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

from django.conf import settings
from django.db import connections

from .base import (
    CHANGE_FIELDS,
    AccountChange,
    AccountPage,
    ListingFailed,
    Operation,
    Outcome,
    PersonSnapshot,
    TargetAccount,
    TargetBackend,
    keyed_persons,
    orphan_snapshot,
)
from .http import (
    HttpClient,
    TargetError,
    body_excerpt,
    json_object,
    listing_failure,
    log_vendor_answer,
    record_belongs_to,
    safe_json,
    service_mobile,
)

logger = logging.getLogger(__name__)

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_OP_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_REQUEST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
LOOKUP_BATCH = 20   # userNames per batched lookup (`userName eq "a" or userName eq "b" …`)
CONFIG_SECONDS = 300.0   # how long the announced bulk support is believed before it is read again
# A /Bulk answer that says no operation ran (RFC 7644 §3.7.3: 413 too large; 400 a malformed request).
REFUSED_AS_A_WHOLE = (400, 413)
FAILED_CONFIG_SECONDS = 60.0   # a /ServiceProviderConfig that did not answer is asked again this much later
BULK_DISCOVERY_WAIT = 2.0      # the longest a run's start waits for it
SCIM_MEDIA_TYPE = "application/scim+json"
NO_PATCH_STATUSES = (405, 501)   # Method Not Allowed / Not Implemented: ServiceProviderConfig patch.supported false


def scim_error(body) -> tuple[str, str]:
    """(scimType, detail) of a SCIM error message (RFC 7644 §3.12); its `status` only repeats the HTTP one."""
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("scimType") or ""), str(body.get("detail") or "")


def user_attributes(person: PersonSnapshot, fields) -> list[tuple[str, object]]:
    """(path, value) of the SCIM attributes that hold `fields`; None clears one. A multi-valued attribute
    is replaced as a whole (RFC 7644 §3.5.2.3 without a filter): every server takes that form."""
    attributes = []
    if "full_name" in fields:
        attributes += [("displayName", person.full_name or None), ("name.formatted", person.full_name or None)]
    if "email" in fields:
        attributes.append(("emails", [{"value": person.email, "type": "work", "primary": True}]
                           if person.email else None))
    if "phone_number" in fields:
        attributes.append(("phoneNumbers", [{"value": person.phone_number, "type": "mobile"}]
                           if person.phone_number else None))
    if "department_code" in fields:
        attributes.append((f"{ENTERPRISE_SCHEMA}:department", person.department_code or None))
    return attributes


def set_attribute(user: dict, path: str, value) -> None:
    """Set (or, with None, drop) one of user_attributes' paths in a whole resource, for a PUT."""
    if path.startswith(ENTERPRISE_SCHEMA + ":"):
        parent, name = ENTERPRISE_SCHEMA, path.removeprefix(ENTERPRISE_SCHEMA + ":")
    elif "." in path:
        parent, name = path.split(".", 1)
    else:
        parent, name = None, path
    container = user
    if parent is not None:
        container = user[parent] = user.get(parent) if isinstance(user.get(parent), dict) else {}
    if value is None:
        container.pop(name, None)
    else:
        container[name] = value
    if parent == ENTERPRISE_SCHEMA:
        # An extension's attributes come with its URN in `schemas`, and an empty extension without both.
        schemas = [s for s in user.get("schemas") or [USER_SCHEMA] if s != ENTERPRISE_SCHEMA]
        if container:
            schemas.append(ENTERPRISE_SCHEMA)
        else:
            user.pop(ENTERPRISE_SCHEMA)
        user["schemas"] = schemas


def filter_string(value: str) -> str:
    """A SCIM filter string literal: JSON string rules (RFC 7644 §3.4.2.2)."""
    return json.dumps(value, ensure_ascii=False)


def target_account(user: dict) -> TargetAccount:
    """A SCIM user as reconciliation compares it: the primary email (else the first), the first phone."""
    emails = [e for e in user.get("emails") or [] if isinstance(e, dict) and e.get("value")]
    email = next((e for e in emails if e.get("primary") is True), emails[0] if emails else {})
    phones = [p for p in user.get("phoneNumbers") or [] if isinstance(p, dict) and p.get("value")]
    name = user.get("name") if isinstance(user.get("name"), dict) else {}
    enterprise = user.get(ENTERPRISE_SCHEMA) if isinstance(user.get(ENTERPRISE_SCHEMA), dict) else {}
    return TargetAccount(
        external_id=str(user.get("id") or ""),
        key=str(user.get("userName") or ""),
        email=str(email.get("value") or ""),
        full_name=str(user.get("displayName") or name.get("formatted") or ""),
        phone_number=service_mobile(str(phones[0]["value"])) if phones else "",
        department_code=str(enterprise.get("department") or ""),
        # RFC 7643 leaves `active` optional: a user without it is not reported as disabled.
        active=user.get("active") not in (False, "false", "False"),
    )


@dataclass(frozen=True)
class BulkSupport:
    """What /ServiceProviderConfig announces of POST /Bulk (RFC 7643 §5)."""

    supported: bool
    max_operations: int
    max_payload_size: int


NO_BULK = BulkSupport(False, 0, 0)


def bulk_support(body) -> BulkSupport:
    bulk = body.get("bulk") if isinstance(body, dict) else None
    if not isinstance(bulk, dict) or bulk.get("supported") is not True:
        return NO_BULK
    try:
        return BulkSupport(True, int(bulk.get("maxOperations") or 0), int(bulk.get("maxPayloadSize") or 0))
    except (TypeError, ValueError):
        return NO_BULK


class ScimIdaasBackend(TargetBackend):
    system = "idaas"

    def __init__(self, **options):
        super().__init__(**options)
        self.http = HttpClient(system=self.system, url_setting="IDAAS_SCIM_URL", error_fields=scim_error)
        self.patch_supported = True   # until the server answers a PATCH with 501 or 405
        self._bulk: tuple[BulkSupport, float] | None = None   # (support, time.monotonic() it expires)
        self._bulk_lock = threading.Lock()

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

    # --- Batches: POST /Bulk where the server announces it --------------------------------------

    def batch_size(self) -> int:
        """IDAAS_SCIM_BATCH_SIZE where the server takes POST /Bulk; otherwise one person per call, so that
        the threads call side by side instead of one thread calling a batch in turn.

        Asked by the executor's main thread as a run starts: the discovery runs in a thread of its own and
        is waited for BULK_DISCOVERY_WAIT seconds at most, so that a slow or paused IDaaS never holds the
        other targets' lanes back (the run then goes one by one; a later run knows)."""
        answer: list[BulkSupport] = []
        done = threading.Event()

        def discover():
            try:
                answer.append(self.bulk())
            finally:
                connections.close_all()  # this thread's own, if pacing opened one
                done.set()

        threading.Thread(target=discover, name="scim-bulk-discovery", daemon=True).start()
        supported = done.wait(BULK_DISCOVERY_WAIT) and bool(answer) and answer[0].supported
        return max(1, int(settings.IDAAS_SCIM_BATCH_SIZE)) if supported else 1

    def bulk(self) -> BulkSupport:
        """The server's bulk support, read from /ServiceProviderConfig and kept for a few minutes; a
        server that does not answer it is taken as one without bulk (the one-by-one path), and asked
        again a minute later."""
        with self._bulk_lock:
            if self._bulk is not None and time.monotonic() < self._bulk[1]:
                return self._bulk[0]
            try:
                response = self.http.request("GET", "/ServiceProviderConfig", headers=self._headers())
            except TargetError:
                self._bulk = (NO_BULK, time.monotonic() + FAILED_CONFIG_SECONDS)
                return NO_BULK
            support = bulk_support(safe_json(response)) if response.status_code == 200 else NO_BULK
            self._bulk = (support, time.monotonic() + CONFIG_SECONDS)
            return support

    def ensure_accounts(self, items: list[tuple[PersonSnapshot, dict]]) -> list[Outcome]:
        """Several persons: the lookups in batched filters, the creations through POST /Bulk within the
        server's maxOperations and maxPayloadSize, each operation's result for its person (RFC 7644 §3.7).
        Without bulk support (or for one person), one person at a time."""
        try:
            support = self.bulk() if len(items) > 1 else NO_BULK
        except TargetError as e:
            return [e.outcome] * len(items)
        if not support.supported or support.max_operations < 2:
            return [self.ensure_account(person, state) for person, state in items]
        outcomes, wanted = keyed_persons(items, "SCIM userName")
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start:start + LOOKUP_BATCH]
            persons = [items[i][0] for i in batch]
            try:
                found = self._find_many(persons)
            except TargetError as e:
                for index in batch:
                    outcomes[index] = e.outcome
                continue
            create = []
            for index, person in zip(batch, persons):
                users = found.get(person.employee_number.casefold(), [])
                if len(users) > 1:
                    outcomes[index] = Outcome.permanent(
                        "ambiguous", f"{len(users)} SCIM users have userName {person.employee_number}")
                elif users:
                    outcomes[index] = self._link(users[0], person, "the user existed already")
                else:
                    create.append(index)
            for index, outcome in self._create_in_bulk([(i, items[i][0]) for i in create], support).items():
                outcomes[index] = outcome
        return outcomes

    def _find_many(self, persons: list[PersonSnapshot]) -> dict[str, list[dict]]:
        """One search for several userNames: casefolded userName → the users the server holds with it."""
        expression = " or ".join(f"userName eq {filter_string(p.employee_number)}" for p in persons)
        response = self.http.request("GET", "/Users", headers=self._headers(),
                                     params={"filter": expression, "count": len(persons) * 2})
        if response.status_code == 404:
            return {}
        if response.status_code != 200:
            raise TargetError(self._failure(response, persons[0], "lookup"))
        body = json_object(response, self.system)
        wanted = {p.employee_number.casefold() for p in persons}
        found: dict[str, list[dict]] = {}
        for user in body.get("Resources") or []:
            if isinstance(user, dict) and str(user.get("userName", "")).casefold() in wanted:
                found.setdefault(str(user["userName"]).casefold(), []).append(user)
        return found

    def _create_in_bulk(self, persons: list[tuple[int, PersonSnapshot]], support: BulkSupport) -> dict:
        """POST /Bulk for these persons, in requests within maxOperations and maxPayloadSize; index → outcome."""
        outcomes: dict[int, Outcome] = {}
        request: list[tuple[int, PersonSnapshot, dict]] = []
        size = 0
        for index, person in persons:
            operation = {"method": "POST", "path": "/Users", "bulkId": person.employee_number,
                         "data": self._user(person)}
            length = len(json.dumps(operation, ensure_ascii=False).encode("utf-8")) + 1
            limit = support.max_payload_size - 200   # the request's envelope
            if request and (len(request) >= support.max_operations or (support.max_payload_size and
                                                                       size + length > limit)):
                outcomes.update(self._send_bulk(request))
                request, size = [], 0
            request.append((index, person, operation))
            size += length
        if request:
            outcomes.update(self._send_bulk(request))
        return outcomes

    def _send_bulk(self, request: list[tuple[int, PersonSnapshot, dict]]) -> dict:
        body = {"schemas": [BULK_REQUEST_SCHEMA], "Operations": [operation for _, _, operation in request]}
        try:
            response = self.http.request("POST", "/Bulk", headers=self._headers(),
                                         data=json.dumps(body, ensure_ascii=False).encode("utf-8"))
            if response.status_code in REFUSED_AS_A_WHOLE:
                # The server refused the request itself (its size, its form), so no operation ran: each person
                # goes one by one, and bulk rests until the support is read again.
                logger.warning("SCIM /Bulk refused as a whole (HTTP %s): %d person(s) one by one",
                               response.status_code, len(request))
                with self._bulk_lock:
                    self._bulk = (NO_BULK, time.monotonic() + CONFIG_SECONDS)
                return {index: self.ensure_account(person, {}) for index, person, _ in request}
            if response.status_code != 200:
                raise TargetError(self._failure(response, request[0][1], "bulk"))
            answer = json_object(response, self.system)
        except TargetError as e:
            # Nothing is known of any operation: each person is looked up again before another create.
            return {index: e.outcome for index, _, _ in request}
        results = {str(r.get("bulkId")): r for r in answer.get("Operations") or [] if isinstance(r, dict)}
        outcomes = {}
        for index, person, _ in request:
            try:
                outcomes[index] = self._bulk_outcome(person, results.get(person.employee_number))
            except TargetError as e:
                outcomes[index] = e.outcome
        return outcomes

    def _bulk_outcome(self, person: PersonSnapshot, result: dict | None) -> Outcome:
        """One operation's result (RFC 7644 §3.7.3): 201 created (its id from `location`), 409 uniqueness
        resolved by a lookup like a single create's, other answers per person."""
        if result is None:
            return Outcome.transient("bulk_incomplete", "the Bulk answer has no result for this operation")
        try:
            status = int(str(result.get("status", "")).strip()[:3])
        except ValueError:
            status = 0
        detail = result.get("response") if isinstance(result.get("response"), dict) else {}
        if status in (200, 201):
            user_id = str(detail.get("id") or str(result.get("location") or "").rstrip("/").rpartition("/")[2])
            if not user_id:
                return Outcome.transient("bad_response", "SCIM created the user in a Bulk request but gave no id")
            return Outcome.created(user_id)
        scim_type, message = scim_error(detail)
        log_vendor_answer(self.system, "bulk", person, f"{status} {scim_type}".strip(), message)
        if status == 409:
            return self._after_conflict(person, scim_type, message)
        if status == 429 or status >= 500 or status == 401:
            return Outcome.transient(scim_type or f"http_{status}", message or f"Bulk operation answered {status}",
                                     rate_limited=status == 429)
        return Outcome.permanent(scim_type or f"http_{status}", message or f"Bulk operation answered {status}")

    def list_accounts(self, *, cursor: str | None, page_size: int) -> AccountPage:
        """One page from `startIndex` (1-based; the cursor is the next one). The server may answer fewer
        users than `count`: the next page starts after those it sent. Index paging is not a snapshot: a
        user created or deleted between pages shifts the rest by one (reconciliation reads again next run)."""
        start = int(cursor) if cursor is not None else 1
        try:
            response = self.http.request("GET", "/Users", headers=self._headers(),
                                         params={"startIndex": start, "count": page_size})
        except TargetError as e:
            raise listing_failure(e) from e
        if response.status_code != 200:
            scim_type, detail = scim_error(safe_json(response))
            raise ListingFailed(scim_type or f"http_{response.status_code}", detail or body_excerpt(response))
        try:
            body = json_object(response, self.system)
        except TargetError as e:
            raise listing_failure(e) from e
        resources = body.get("Resources") or []
        answered_start = body.get("startIndex")
        if resources and answered_start is not None and str(answered_start) != str(start):
            # A server that ignores startIndex would hand out its first page forever.
            raise ListingFailed("bad_paging", f"asked for startIndex {start}, SCIM answered {answered_start}")
        next_start = start + len(resources)
        try:
            total = int(body.get("totalResults"))
        except (TypeError, ValueError):
            total = None   # without a total, the empty page after the last one ends the listing
        done = not resources or (total is not None and next_start > total)
        return AccountPage(accounts=[target_account(u) for u in resources if isinstance(u, dict)],
                           next_cursor=None if done else str(next_start))

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

    @staticmethod
    def _user(person: PersonSnapshot) -> dict:
        """The SCIM user a creation sends."""
        user = {
            "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA] if person.department_code else [USER_SCHEMA],
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
        if person.department_code:
            user[ENTERPRISE_SCHEMA] = {"department": person.department_code}
        return user

    def _create(self, person: PersonSnapshot) -> Outcome:
        user = self._user(person)
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
            return self._after_conflict(person, scim_type, detail or body_excerpt(response))
        return self._failure(response, person, "create")

    def _after_conflict(self, person: PersonSnapshot, scim_type: str, detail: str) -> Outcome:
        """A create answered 409: another request made the user first (ours, after a lost answer, or someone
        else's). The lookup tells which; a single create and a Bulk operation resolve it alike."""
        existing = self._find(person)
        if existing is not None:
            return self._link(existing, person, detail or "409 uniqueness")
        return Outcome.permanent(scim_type or "http_409", detail or "409")

    def apply_change(self, person: PersonSnapshot, change: AccountChange, state: dict) -> Outcome:
        """Replace the changed attributes and set `active`. Replace is a "set": a replay after a lost
        answer writes the same values again. An enable sends every attribute, the account comes back true."""
        if not change.external_id:
            return Outcome.permanent("invalid_change", "the account has no SCIM id to change")
        fields = CHANGE_FIELDS if change.operation == Operation.ENABLE else change.fields
        attributes = [*user_attributes(person, fields), ("active", change.active)]
        try:
            if self.patch_supported:
                outcome = self._patch(person, change, attributes)
                if outcome is not None:
                    return outcome
                self.patch_supported = False
            return self._put(person, change, attributes)
        except TargetError as e:
            return e.outcome

    can_disable_accounts = True

    def disable_account(self, account: TargetAccount) -> Outcome:
        """`active` false and nothing else (PATCH, or PUT of the user as the server holds it)."""
        change = AccountChange(operation=Operation.DISABLE, external_id=account.external_id, active=False)
        return self.apply_change(orphan_snapshot(account), change, {})

    def _user_path(self, change: AccountChange) -> str:
        return f"/Users/{quote(change.external_id, safe='')}"

    def _patch(self, person: PersonSnapshot, change: AccountChange, attributes) -> Outcome | None:
        """PATCH /Users/{id}; None when the server has no PATCH (the caller falls back to PUT)."""
        operations = [{"op": "replace", "path": path, "value": value} if value is not None
                      else {"op": "remove", "path": path} for path, value in attributes]
        body = {"schemas": [PATCH_OP_SCHEMA], "Operations": operations}
        response = self.http.request("PATCH", self._user_path(change), headers=self._headers(),
                                     passthrough=NO_PATCH_STATUSES,
                                     data=json.dumps(body, ensure_ascii=False).encode("utf-8"))
        if response.status_code in (200, 204):
            return Outcome.applied(change.external_id, code=str(response.status_code),
                                   message="PATCH " + ", ".join(path for path, _ in attributes))
        if response.status_code in NO_PATCH_STATUSES:
            _, detail = scim_error(safe_json(response))
            log_vendor_answer(self.system, "patch", person, response.status_code, detail or "no PATCH support")
            return None
        return self._change_failure(response, person, change, "patch")

    def _put(self, person: PersonSnapshot, change: AccountChange, attributes) -> Outcome:
        """GET the whole user, change the values, PUT it back under the ETag the GET gave (if any)."""
        path = self._user_path(change)
        response = self.http.request("GET", path, headers=self._headers())
        if response.status_code != 200:
            return self._change_failure(response, person, change, "get")
        user = json_object(response, self.system)
        user.pop("meta", None)   # read-only: the server keeps its own
        for attribute, value in attributes:
            set_attribute(user, attribute, value)
        headers = self._headers()
        if response.headers.get("ETag"):
            # Someone else's write between the GET and the PUT is not overwritten: 412, and the retry re-reads.
            headers["If-Match"] = response.headers["ETag"]
        response = self.http.request("PUT", path, headers=headers,
                                     data=json.dumps(user, ensure_ascii=False).encode("utf-8"))
        if response.status_code in (200, 204):
            body = safe_json(response)
            external_id = str(body.get("id") or change.external_id) if isinstance(body, dict) else change.external_id
            return Outcome.applied(external_id, code=str(response.status_code),
                                   message="PUT " + ", ".join(path for path, _ in attributes))
        if response.status_code == 412:
            scim_type, detail = scim_error(safe_json(response))
            return Outcome.transient(scim_type or "http_412", detail or "the user changed since it was read")
        return self._change_failure(response, person, change, "put")

    def _change_failure(self, response, person: PersonSnapshot, change: AccountChange, operation: str) -> Outcome:
        if response.status_code == 404:
            _, detail = scim_error(safe_json(response))
            log_vendor_answer(self.system, operation, person, 404, detail)
            return Outcome.permanent("account_missing", f"SCIM has no user {change.external_id}: "
                                                        f"{detail or body_excerpt(response)}")
        return self._failure(response, person, operation)

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
