"""WeLink (open.welink.huaweicloud.com): bulk user sync, asynchronous; poll the status endpoint until opened.

Settings: WELINK_API_URL, WELINK_CLIENT_ID, WELINK_CLIENT_SECRET (environment); WELINK_BULK_SIZE,
WELINK_STATUS_BATCH_SIZE; WELINK_MAX_CALLS_PER_SECOND_PER_API (and the system-wide WELINK_MAX_CALLS_PER_SECOND)
and WELINK_MAX_CONCURRENCY hold across every worker (backends/pacing.py).
The user is keyed by corpUserId = employee number. Creations go in batches of WELINK_BULK_SIZE (≤ 10):
one users/status call for the batch (the poll of submitted jobs, and "not found" for new persons), a lookup
only of a corpUserId WeLink knows already, then one users/bulk call for those to submit; each person's
outcome comes from its own entry. A job is polled until 47109 (created); the external id is the userId the
answer carries, else the corpUserId. A change (update, disable, enable)
is the same upsert with every current value and ``valid`` "1" or "0", polled the same way.
WeLink lists users only department by department, so reconciliation does not list it (``can_list`` False):
it looks its own persons up one corpUserId at a time, and cannot see orphans (docs/backends.md).
"""

from dataclasses import dataclass

from django.conf import settings

from .base import (
    AccountChange,
    ListingFailed,
    Outcome,
    PersonSnapshot,
    TargetAccount,
    TargetBackend,
    keyed_persons,
)
from .http import (
    DEFAULT_RETRY_AFTER_SECONDS,
    HttpClient,
    TargetError,
    TokenCache,
    json_object,
    listing_failure,
    log_vendor_answer,
    national_mobile,
    parse_retry_after,
    record_belongs_to,
    service_mobile,
)

DEFAULT_URL = "https://open.welink.huaweicloud.com"
TOKEN_PATH = "/api/auth/v2/tickets"
USERS_PATH = "/api/contact/v1/users"
BULK_PATH = "/api/contact/v1/users/bulk"
STATUS_PATH = "/api/contact/v1/users/status"

OK = "0"
AUTH_CODES = {"47101", "47103", "1000"}          # token malformed, expired, invalid: refresh once
RATE_LIMITED = "48503"
TRANSIENT_CODES = {RATE_LIMITED, "500", "43999", "41502", "55004"}   # system errors: worth retrying
# A person a users/status answer leaves out: nothing is known of them.
NO_ENTRY = ""
NOT_FOUND_CODES = {"47111", "47012", "43051"}   # account not exist, no data, user not exist
OPENED = "47109"
PENDING_CODES = {"47100", "47104", "47108", "47112", "47113"}
SAVED_NOT_OPENED = "47107"                       # in the directory, no account: a submission opens it
OPEN_STATUS = "3"


MAX_BULK_SIZE = 10                               # persons per users/bulk call, WeLink's own limit


def _whole_answer_failure(code: str, message: str, persons: int) -> Outcome:
    """A code on a whole answer, not per person. For one person it is that person's (permanent, as
    before); for several it may be about the call itself (too many persons, one bad corpUserId), so none of
    them fails for it: each tries again, and the code is kept verbatim for the operator."""
    if persons == 1:
        return Outcome.permanent(code, message)
    return Outcome.transient(code, f"{message} (a code for the whole call of {persons} persons)")


def _no_status(person: PersonSnapshot) -> Outcome:
    """A submitted person the users/status answer left out: nothing learnt, asked again later."""
    return Outcome.transient("no_status", f"users/status did not answer for {person.employee_number}")


@dataclass(frozen=True)
class _Submit:
    """The person must be submitted, with this state."""

    state: dict


def welink_error(body) -> tuple[str, str]:
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("code", "")), str(body.get("message", ""))


def welink_mobile(phone: str) -> str:
    """WeLink wants +<country code>-<number>: +86-13800138001 for a mainland number."""
    if phone.startswith("+") and "-" in phone:
        return phone
    return f"+86-{national_mobile(phone)}"


def holds_values(record: dict, person: PersonSnapshot) -> bool:
    """Whether a looked-up user carries every value the bulk sync sends of the person."""
    return (str(record.get("userNameCn", "")) == person.full_name
            and national_mobile(str(record.get("mobileNumber", ""))) == national_mobile(person.phone_number)
            and str(record.get("userEmail", "")).casefold() == (person.email or "").casefold()
            and str(record.get("corpDeptCode", "")) == person.department_code)


def target_account(record: dict) -> TargetAccount:
    """A looked-up user as reconciliation compares it: open is userStatus "3" with valid "1" (a lookup
    without `valid` is taken as valid), the mobile without WeLink's +86-."""
    corp_user_id = str(record.get("corpUserId") or "")
    return TargetAccount(
        external_id=str(record.get("userId") or corp_user_id), key=corp_user_id,
        email=str(record.get("userEmail") or ""), full_name=str(record.get("userNameCn") or ""),
        phone_number=service_mobile(str(record.get("mobileNumber") or "")),
        department_code=str(record.get("corpDeptCode") or ""),
        active=str(record.get("userStatus", "")) == OPEN_STATUS and str(record.get("valid", "1")) == "1",
    )


def record_of(body: dict, corp_user_id: str) -> dict | None:
    """The lookup's record of this corpUserId: in `data` (an object or a one-element list) or at the top level."""
    data = body.get("data")
    candidates = data if isinstance(data, list) else [data] if isinstance(data, dict) else [body]
    for record in candidates:
        if isinstance(record, dict) and str(record.get("corpUserId", "")) == corp_user_id:
            return record
    return None


class WelinkBackend(TargetBackend):
    system = "welink"
    # The open API lists users per department only (user/users?deptCode=, 50 a page), with no call for the
    # whole tenant and no documented rule for sub-departments: a listing could not promise every account.
    can_list = False

    def __init__(self, **options):
        super().__init__(**options)
        self.http = HttpClient(system=self.system, url_setting="WELINK_API_URL", default_url=DEFAULT_URL,
                               error_fields=welink_error)
        self.tokens = TokenCache(self._fetch_token)

    def close(self) -> None:
        self.http.close()

    # --- Transport -------------------------------------------------------------------------------

    def _fetch_token(self) -> tuple[str, float]:
        response = self.http.request("POST", TOKEN_PATH, json={
            "client_id": settings.WELINK_CLIENT_ID, "client_secret": settings.WELINK_CLIENT_SECRET,
        })
        body = json_object(response, self.system)
        code = str(body.get("code", OK))
        if code != OK or not body.get("access_token"):
            # Wrong credentials are an operator's fix, not the person's fault: retry later, say why.
            raise TargetError(Outcome.transient(code or f"http_{response.status_code}",
                                                f"WeLink refused the token request: {body.get('message', '')}"))
        return str(body["access_token"]), float(body.get("expires_in") or 7200)

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One authenticated call; refreshes the token once on an auth code; maps rate limits and system errors."""
        for attempt in (1, 2):
            token = self.tokens.get()
            response = self.http.request(method, path, headers={"x-wlk-Authorization": token}, **kwargs)
            body = json_object(response, self.system)
            code = str(body.get("code", OK))
            auth_failed = code in AUTH_CODES or (response.status_code == 401 and code == OK)
            if auth_failed:
                self.tokens.invalidate(token)
                if attempt == 1:
                    continue
                raise TargetError(Outcome.transient(code, str(body.get("message", "token refused twice"))))
            if code in TRANSIENT_CODES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if code == RATE_LIMITED:
                    retry_after = DEFAULT_RETRY_AFTER_SECONDS if retry_after is None else retry_after
                    self.http.rate_limited(retry_after, f"WeLink {code}", path)
                raise TargetError(Outcome.transient(code, str(body.get("message", "")), retry_after=retry_after,
                                                    rate_limited=code == RATE_LIMITED))
            if response.status_code >= 400 and code == OK:
                raise TargetError(Outcome.permanent(f"http_{response.status_code}", str(body)[:500]))
            return body
        raise AssertionError("unreachable")

    # --- The three operations -------------------------------------------------------------------

    def _lookup(self, person: PersonSnapshot) -> dict | None:
        body = self._call("GET", USERS_PATH, params={"corpUserId": person.employee_number})
        code = str(body.get("code", OK))
        if code in NOT_FOUND_CODES:
            return None
        if code != OK:
            log_vendor_answer(self.system, "lookup", person, code, body.get("message", ""))
            raise TargetError(Outcome.permanent(code, str(body.get("message", ""))))
        return record_of(body, person.employee_number)

    def _statuses(self, persons: list[PersonSnapshot]) -> dict[str, tuple[str, str, dict]]:
        """One users/status call for several persons: corpUserId → (code, message, entry); a person the
        answer leaves out reads as NO_ENTRY: nothing is known of them (not "no job", which would submit a
        person over a user of someone else's without the lookup)."""
        body = self._call("POST", STATUS_PATH, json={"personInfo": [{"corpUserId": p.employee_number}
                                                                    for p in persons]})
        code = str(body.get("code", OK))
        if code != OK:
            for person in persons:
                log_vendor_answer(self.system, "status", person, code, body.get("message", ""))
            raise TargetError(_whole_answer_failure(code, str(body.get("message", "")), len(persons)))
        entries = self._entries(body)
        return {p.employee_number: self._entry(entries, p, default=(NO_ENTRY, "no status for this corpUserId"))
                for p in persons}

    def _poll(self, person: PersonSnapshot) -> tuple[str, str]:
        code, message, _ = self._statuses([person])[person.employee_number]
        if code == NO_ENTRY:
            raise TargetError(_no_status(person))
        return code, message

    @staticmethod
    def _person_info(person: PersonSnapshot, *, active: bool = True) -> dict:
        """Every value WeLink holds of the person: the bulk sync replaces them all, a create or a change."""
        return {
            "corpUserId": person.employee_number,
            "userNameCn": person.full_name,
            "mobileNumber": welink_mobile(person.phone_number),
            "corpDeptCode": person.department_code,
            "userEmail": person.email,
            "isOpenAccount": "1" if active else "0",
            "valid": "1" if active else "0",
        }

    def _bulk(self, person: PersonSnapshot, state: dict, info: dict) -> tuple[str, str]:
        """Submit one person; the per-user (code, message) of the answer."""
        try:
            body = self._call("POST", BULK_PATH, json={"personInfo": [info]})
        except TargetError as e:
            # The job may have been accepted even though no answer came back: poll before submitting again.
            raise e.with_state({**state, "submit_sent": True}) from e
        code = str(body.get("code", OK))
        if code != OK:
            log_vendor_answer(self.system, "bulk", person, code, body.get("message", ""))
            raise TargetError(Outcome.permanent(code, str(body.get("message", ""))))
        code, message, _ = self._entry(self._entries(body), person, default=("47100", "accepted"))
        return code, message

    @staticmethod
    def _entries(body: dict) -> dict[str, dict]:
        """The per-user entries of a bulk or status answer, by corpUserId (read once per answer; the first
        entry of a corpUserId counts)."""
        entries: dict[str, dict] = {}
        for entry in body.get("data") or []:
            if isinstance(entry, dict):
                entries.setdefault(str(entry.get("corpUserId", "")), entry)
        return entries

    @staticmethod
    def _entry(entries: dict[str, dict], person: PersonSnapshot, default: tuple[str, str]) -> tuple[str, str, dict]:
        """The person's (code, message, entry) in an answer's entries; `default` when it is left out."""
        entry = entries.get(person.employee_number)
        if entry is None:
            return (*default, {})
        return str(entry.get("code", "")), str(entry.get("message", "")).strip(), entry

    def _job_outcome(self, person: PersonSnapshot, state: dict, code: str, message: str, *, entry: dict,
                     record: dict | None = None) -> Outcome | None:
        """What a per-user job code means; None when there is no job (47111: submit it). `record` is the
        lookup of a user that existed before this job was ours (the outcome is then linked, not created).

        The external id of an opened account is the userId the answer (or the lookup) carries, else the
        corpUserId: every call addresses the user by corpUserId, and reconciliation matches on it first,
        so no lookup is spent on an id nothing needs."""
        if code == OPENED:
            external_id = str(entry.get("userId") or (record or {}).get("userId") or person.employee_number)
            return Outcome.created(external_id, code=code, message=message) if record is None else \
                Outcome.linked(external_id, code=code, message=message)
        if code in PENDING_CODES or code == OK:
            return Outcome.in_progress(code=code, message=message, state={**state, "submitted": True})
        if code in NOT_FOUND_CODES:
            return None
        # 47110 (opening failed) and 47120 (login mobile already registered) are documented failures; an
        # undocumented code is not retried blindly either: the operator sees it verbatim.
        log_vendor_answer(self.system, "job", person, code, message)
        return Outcome.permanent(code, message)

    # --- The contract -----------------------------------------------------------------------------

    @staticmethod
    def bulk_size() -> int:
        return min(MAX_BULK_SIZE, max(1, int(settings.WELINK_BULK_SIZE)))

    def batch_size(self) -> int:
        """Persons per batch: one users/status call covers them all, users/bulk takes them 10 at a time."""
        return max(self.bulk_size(), int(settings.WELINK_STATUS_BATCH_SIZE))

    def ensure_account(self, person: PersonSnapshot, state: dict) -> Outcome:
        return self.ensure_accounts([(person, state)])[0]

    def ensure_accounts(self, items: list[tuple[PersonSnapshot, dict]]) -> list[Outcome]:
        """Persons in batches of WELINK_STATUS_BATCH_SIZE: one users/status call says for each of them whether WeLink
        knows a job or a user (the poll of a submitted job, and the lookup's "not found" of a new person),
        then one users/bulk call submits those WeLink does not know; only a user that exists already is
        looked up, to tell whose it is. users/bulk takes WELINK_BULK_SIZE at a time. One outcome per person,
        from the vendor's per-person code."""
        outcomes, valid = keyed_persons(items, "corpUserId")
        size = self.batch_size()
        for start in range(0, len(valid), size):
            batch = valid[start:start + size]
            for index, outcome in zip(batch, self._ensure_batch([items[i] for i in batch])):
                outcomes[index] = outcome
        return outcomes

    def _ensure_batch(self, items: list[tuple[PersonSnapshot, dict]]) -> list[Outcome]:
        try:
            statuses = self._statuses([person for person, _ in items])
        except TargetError as e:
            # Nothing was learnt of anyone: each keeps its state and tries again.
            return [e.outcome] * len(items)
        outcomes: list[Outcome | None] = []
        submit: list[tuple[int, PersonSnapshot, dict]] = []
        for person, state in items:
            code, message, entry = statuses[person.employee_number]
            try:
                outcome = self._after_status(person, state, code, message, entry)
            except TargetError as e:
                outcome = e.outcome
            if isinstance(outcome, _Submit):
                submit.append((len(outcomes), person, outcome.state))
                outcome = None
            outcomes.append(outcome)
        size = self.bulk_size()
        for start in range(0, len(submit), size):
            chunk = submit[start:start + size]
            for (index, _, _), outcome in zip(chunk, self._submit([(p, s) for _, p, s in chunk])):
                outcomes[index] = outcome
        return outcomes

    def _after_status(self, person: PersonSnapshot, state: dict, code: str, message: str,
                      entry: dict) -> "Outcome | _Submit":
        """What the person's status means: an outcome, or _Submit when the person must be submitted."""
        if state.get("submitted") or state.get("submit_sent"):
            if code == NO_ENTRY:  # nothing learnt of this job: ask again later
                return _no_status(person)
            # The job is ours even when the answer to the submission was lost: 47109 means we created it.
            outcome = self._job_outcome(person, state, code, message, entry=entry)
            if outcome is not None:
                return outcome
            # No job at WeLink: the submission never arrived. Submit again (the upsert makes it safe).
            return _Submit({k: v for k, v in state.items() if k not in ("submitted", "submit_sent")})
        if code in NOT_FOUND_CODES:
            return _Submit(state)
        # WeLink knows this corpUserId already: only the user's own attributes tell whose it is.
        record = self._lookup(person)
        if record is None:
            return _Submit(state)
        if not record_belongs_to(person, emails=[record.get("userEmail", "")],
                                 mobiles=[record.get("mobileNumber", "")],
                                 names=[record.get("userNameCn", "")]):
            return Outcome.permanent(
                "conflict", f"WeLink user {person.employee_number} belongs to someone else "
                            f"({record.get('userNameCn', '')})")
        if str(record.get("userStatus", "")) == OPEN_STATUS:
            return Outcome.linked(str(record.get("userId") or person.employee_number),
                                  message="the account was open already")
        # Saved but not open: a job of ours whose answer was lost may be running (its status says so).
        if code not in (SAVED_NOT_OPENED, NO_ENTRY):
            outcome = self._job_outcome(person, state, code, message, entry=entry, record=record)
            if outcome is not None:
                return outcome
        return _Submit(state)

    def _submit(self, items: list[tuple[PersonSnapshot, dict]]) -> list[Outcome]:
        """One users/bulk call for these persons; an outcome per person from its entry in the answer."""
        try:
            body = self._call("POST", BULK_PATH, json={"personInfo": [self._person_info(p) for p, _ in items]})
        except TargetError as e:
            # The call may have been accepted even though no answer came back: each person polls before
            # being submitted again.
            return [e.with_state({**state, "submit_sent": True}).outcome for _, state in items]
        code = str(body.get("code", OK))
        if code != OK:
            for person, _ in items:
                log_vendor_answer(self.system, "bulk", person, code, body.get("message", ""))
            return [_whole_answer_failure(code, str(body.get("message", "")), len(items))] * len(items)
        outcomes, entries = [], self._entries(body)
        for person, state in items:
            entry_code, message, entry = self._entry(entries, person, default=("47100", "accepted"))
            outcome = self._job_outcome(person, state, entry_code, message, entry=entry)
            if outcome is None:
                log_vendor_answer(self.system, "bulk", person, entry_code, message)
                outcome = Outcome.permanent(entry_code, message)
            outcomes.append(outcome)
        return outcomes

    def apply_change(self, person: PersonSnapshot, change: AccountChange, state: dict) -> Outcome:
        """Submit every current value again with ``valid`` for `change.active`, and poll the job. The upsert
        sets values, so a replay after a lost answer applies nothing twice."""
        if not person.employee_number:
            return Outcome.permanent("invalid_person", "the person has no employee number (the corpUserId)")
        try:
            return self._change(person, change, state)
        except TargetError as e:
            return e.outcome

    def _change(self, person: PersonSnapshot, change: AccountChange, state: dict) -> Outcome:
        if state.get("submitted") or state.get("submit_sent"):
            code, message = self._poll(person)
            outcome = self._change_outcome(person, change, state, code, message)
            if outcome is not None:
                return outcome
            state = {k: v for k, v in state.items() if k not in ("submitted", "submit_sent")}
        # The bulk sync creates a corpUserId it does not know: a change must not bring a deleted user back.
        if self._lookup(person) is None:
            return Outcome.permanent("account_missing", f"WeLink has no user {person.employee_number} any more")
        code, message = self._bulk(person, state, self._person_info(person, active=change.active))
        outcome = self._change_outcome(person, change, {**state, "submitted": True}, code, message)
        if outcome is None:
            log_vendor_answer(self.system, "bulk", person, code, message)
            return Outcome.permanent(code, message)
        return outcome

    def _change_outcome(self, person: PersonSnapshot, change: AccountChange, state: dict, code: str,
                        message: str) -> Outcome | None:
        """What a per-user job code means for a change; None to submit (again): WeLink knows no job, or the
        answer to the submission was lost and the status is still the old one (it may never have arrived)."""
        if code in PENDING_CODES or code == OK:
            return Outcome.in_progress(code=code, message=message, state={**state, "submitted": True})
        if code in NOT_FOUND_CODES:
            return None
        if code in (OPENED, SAVED_NOT_OPENED):
            if self._change_reached(person, change, state, code):
                return Outcome.applied(change.external_id or person.employee_number, code=code, message=message)
            if not state.get("submitted"):
                return None
            if not change.active:
                log_vendor_answer(self.system, "job", person, code, message)
                return Outcome.permanent("still_open", f"WeLink answered {code} {message!r} to closing the "
                                                       f"account, but the lookup still shows it open")
        log_vendor_answer(self.system, "job", person, code, message)
        return Outcome.permanent(code, message)

    def _change_reached(self, person: PersonSnapshot, change: AccountChange, state: dict, code: str) -> bool:
        """Whether the account is in the wanted state. Assumed (docs/backends.md): our job ends 47109 for an
        open account, like a create, and 47107 (saved, not opened) for a closed one. Any other final answer,
        or one after a lost submission (47109 also describes an account nobody changed), is believed only
        when the lookup shows the wanted state, and then, after a lost submission, the person's values."""
        accepted = bool(state.get("submitted"))
        if accepted and code == (OPENED if change.active else SAVED_NOT_OPENED):
            return True
        record = self._lookup(person)
        if record is None or (str(record.get("userStatus", "")) == OPEN_STATUS) != change.active:
            return False
        return accepted or holds_values(record, person)

    # --- Reading the accounts (reconciliation) -------------------------------------------------

    def lookup_accounts(self, keys: list[str]) -> list[TargetAccount]:
        """One lookup per employee number, paced like every call; a not-found code means no account."""
        accounts = []
        for key in dict.fromkeys(k for k in keys if k):
            try:
                body = self._call("GET", USERS_PATH, params={"corpUserId": key})
            except TargetError as e:
                raise listing_failure(e) from e
            code = str(body.get("code", OK))
            if code in NOT_FOUND_CODES:
                continue
            if code != OK:
                raise ListingFailed(code, str(body.get("message", "")))
            record = record_of(body, key)
            if record is not None:
                accounts.append(target_account(record))
        return accounts
