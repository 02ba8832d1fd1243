"""Corporate mailboxes over the Tencent Exmail API: read the address back before and after creating it.

Settings: EXMAIL_API_URL, EXMAIL_CORP_ID, EXMAIL_CORP_SECRET (environment), EXMAIL_DEPARTMENT_ID. The
mailbox's userid is the person's allocated address, which is also the account's external id. An address
that already belongs to someone else ends the task with code ``email_taken`` and
``state["reallocate_email"]``: the process stage gives the person the next free address
(``services.email_reallocation``) and tries again. A change is one ``user/update`` of name, mobile and
``enable``; the address itself never changes (the mailbox is made first, every other target follows it).
Reconciliation reads the members of EXMAIL_DEPARTMENT_ID and its sub-departments (``user/list``), which the
API answers in one piece: the backend fetches it once per listing and pages over the copy it keeps.
"""

import secrets
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from .base import (
    AccountChange,
    AccountPage,
    ListingFailed,
    Outcome,
    PersonSnapshot,
    TargetAccount,
    TargetBackend,
    orphan_snapshot,
)
from .http import (
    HttpClient,
    TargetError,
    TokenCache,
    json_object,
    listing_failure,
    log_vendor_answer,
    national_mobile,
    same_mobile,
    same_text,
    service_mobile,
    strong_password,
)

DEFAULT_URL = "https://api.exmail.qq.com"

OK = 0
# 45009: API calls over the frequency limit; 45033: too many concurrent calls.
RATE_LIMIT_CODES = (45009, 45033)
AUTH_CODES = {40014, 42001}          # invalid access_token, access_token expired: refresh once
TRANSIENT_CODES = {-1, 45009, 45033}  # system busy, call frequency and concurrency limits
USER_EXISTS = 60102
USER_NOT_FOUND = 60111
EMAIL_TAKEN = "email_taken"
BATCHCHECK_PATH = "/cgi-bin/user/batchcheck"
MAX_BATCHCHECK = 20   # addresses per user/batchcheck call
# user/batchcheck's answer per address: -1 invalid, 0 free, 1 a mailbox, 2 an alias, 3 a mail group.
ADDRESS_INVALID, ADDRESS_FREE, ADDRESS_MAILBOX = -1, 0, 1

# A fetched member list lives as long as its listing reads pages: it is dropped after the last page, or
# this long after the latest one (an abandoned listing). A cursor that outlives it (a restart, another
# process) fetches the list again and goes on from its offset.
LISTING_IDLE_SECONDS = 900.0
MAX_LISTINGS = 4   # listings kept at once (per backend, so per process); the least recently read goes first


def exmail_error(body) -> tuple[str, str]:
    if not isinstance(body, dict) or "errcode" not in body:
        return "", ""
    return str(body.get("errcode")), str(body.get("errmsg", ""))


def _errcode(body: dict) -> int:
    try:
        return int(body.get("errcode", OK))
    except (TypeError, ValueError):
        return -1


def target_account(user: dict) -> TargetAccount:
    """A member of user/list as reconciliation compares it. `enable` comes as "1" in user/list's documented
    answer and as 1 in user/get's; a member without it is not reported as disabled."""
    address = str(user.get("userid") or "")
    return TargetAccount(
        external_id=address, key=str(user.get("extid") or ""), email=address,
        full_name=str(user.get("name") or ""), phone_number=service_mobile(str(user.get("mobile") or "")),
        department_code=None, active=str(user.get("enable", 1)).strip() == "1",
    )


@dataclass
class _Listing:
    accounts: list[TargetAccount]
    read_at: float   # time.monotonic() of the latest page


class ExmailBackend(TargetBackend):
    system = "email"

    def __init__(self, **options):
        super().__init__(**options)
        self.http = HttpClient(system=self.system, url_setting="EXMAIL_API_URL", default_url=DEFAULT_URL,
                               error_fields=exmail_error)
        self.tokens = TokenCache(self._fetch_token)
        self._listings: dict[str, _Listing] = {}   # listing token → the member list it pages over
        self._listings_lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    # --- Transport -------------------------------------------------------------------------------

    def _fetch_token(self) -> tuple[str, float]:
        response = self.http.request("GET", "/cgi-bin/gettoken", params={
            "corpid": settings.EXMAIL_CORP_ID, "corpsecret": settings.EXMAIL_CORP_SECRET,
        })
        body = json_object(response, self.system)
        if _errcode(body) != OK or not body.get("access_token"):
            raise TargetError(Outcome.transient(str(body.get("errcode", f"http_{response.status_code}")),
                                                f"Exmail refused the token request: {body.get('errmsg', '')}"))
        return str(body["access_token"]), float(body.get("expires_in") or 7200)

    def _call(self, method: str, path: str, *, params: dict | None = None, **kwargs) -> dict:
        for attempt in (1, 2):
            token = self.tokens.get()
            response = self.http.request(method, path, params={**(params or {}), "access_token": token}, **kwargs)
            body = json_object(response, self.system)
            errcode = _errcode(body)
            if errcode in AUTH_CODES:
                self.tokens.invalidate(token)
                if attempt == 1:
                    continue
            if errcode in AUTH_CODES or errcode in TRANSIENT_CODES:
                retry_after = None
                if errcode in RATE_LIMIT_CODES:
                    retry_after = 1.0
                    self.http.rate_limited(retry_after, f"Exmail {errcode}", path)
                raise TargetError(Outcome.transient(str(errcode), str(body.get("errmsg", "")),
                                                    retry_after=retry_after,
                                                    rate_limited=errcode in RATE_LIMIT_CODES))
            return body
        raise AssertionError("unreachable")

    def _get(self, address: str, person: PersonSnapshot) -> dict | None:
        body = self._call("GET", "/cgi-bin/user/get", params={"userid": address})
        errcode = _errcode(body)
        if errcode == USER_NOT_FOUND:
            return None
        if errcode != OK:
            log_vendor_answer(self.system, "user/get", person, errcode, body.get("errmsg", ""))
            raise TargetError(Outcome.permanent(str(errcode), str(body.get("errmsg", ""))))
        return body

    # --- The contract -----------------------------------------------------------------------------

    def batch_size(self) -> int:
        return MAX_BATCHCHECK

    def ensure_account(self, person: PersonSnapshot, state: dict) -> Outcome:
        address = (person.email or "").strip()
        if not address:
            return Outcome.permanent("no_email", "the person has no allocated email address yet")
        try:
            return self._ensure(address, person, state)
        except TargetError as e:
            return e.outcome

    def _ensure(self, address: str, person: PersonSnapshot, state: dict) -> Outcome:
        existing = self._get(address, person)
        if existing is not None:
            return self._resolve_existing(existing, person, state, "the mailbox existed already")
        return self._create(address, person, state)

    def ensure_accounts(self, items: list[tuple[PersonSnapshot, dict]]) -> list[Outcome]:
        """Several persons: one user/batchcheck call tells for up to 20 addresses whether each is free, so
        that user/create is the only cgi with a call per person; only an address that holds a mailbox is
        read back (user/get) to tell whose it is. One outcome per person."""
        if len(items) == 1:
            return [self.ensure_account(*items[0])]
        outcomes: list[Outcome | None] = [None] * len(items)
        deadline = time.monotonic() + settings.TASK_LEASE_SECONDS / 4
        checked = []
        for index, (person, _) in enumerate(items):
            if (person.email or "").strip():
                checked.append(index)
            else:
                outcomes[index] = Outcome.permanent("no_email", "the person has no allocated email address yet")
        for start in range(0, len(checked), MAX_BATCHCHECK):
            batch = checked[start:start + MAX_BATCHCHECK]
            try:
                kinds = self._batchcheck([items[i][0].email.strip() for i in batch])
            except TargetError as e:
                for index in batch:
                    outcomes[index] = e.outcome
                continue
            for index in batch:
                person, state = items[index]
                if time.monotonic() > deadline:
                    # The creations are paced (user/create is near its limit): the batch must not outlast its
                    # tasks' leases, or another worker would call for them again. The rest wait their turn,
                    # as after a "slow down", without using an attempt.
                    outcomes[index] = Outcome.transient(
                        "batch_deadline", "not called: the batch's calls took a quarter of the task lease",
                        rate_limited=True, retry_after=0)
                    continue
                address = person.email.strip()
                try:
                    outcomes[index] = self._after_check(address, person, state, kinds.get(address.casefold()))
                except TargetError as e:
                    outcomes[index] = e.outcome
        return outcomes

    def _batchcheck(self, addresses: list[str]) -> dict[str, int]:
        """casefolded address → its type in user/batchcheck's answer (an address it leaves out is absent)."""
        body = self._call("POST", BATCHCHECK_PATH, json={"userlist": addresses})
        errcode = _errcode(body)
        if errcode != OK:
            # A code for the whole call fails none of its persons for good (it may be about the call itself);
            # each tries again, the code kept verbatim.
            raise TargetError(Outcome.transient(str(errcode), f"user/batchcheck: {body.get('errmsg', '')}"))
        kinds = {}
        for entry in body.get("list") or []:
            if isinstance(entry, dict) and entry.get("user"):
                try:
                    kinds[str(entry["user"]).casefold()] = int(entry.get("type"))
                except (TypeError, ValueError):
                    continue
        return kinds

    def _after_check(self, address: str, person: PersonSnapshot, state: dict, kind: int | None) -> Outcome:
        if kind == ADDRESS_FREE:
            return self._create(address, person, state)
        if kind == ADDRESS_INVALID:
            log_vendor_answer(self.system, "user/batchcheck", person, kind, f"invalid address {address}")
            return Outcome.permanent("invalid_address", f"Exmail answered user/batchcheck type -1 (invalid) "
                                                        f"for {address}")
        if kind in (2, 3):
            # An alias or a mail group holds the address: no mailbox to compare, and it is not the person's.
            return self._taken(address, state, f"user/batchcheck type {kind} (an alias or a mail group)")
        # A mailbox holds it (or the answer left it out): read it back, as the single path does.
        return self._ensure(address, person, state)

    def _create(self, address: str, person: PersonSnapshot, state: dict) -> Outcome:
        department = settings.EXMAIL_DEPARTMENT_ID
        user = {
            "userid": address,
            "name": person.full_name,
            "department": [int(department) if str(department).isdigit() else department],
            "password": strong_password(),
            "mobile": national_mobile(person.phone_number),
            "extid": person.employee_number,
            "cpwd_login": 1,
        }
        body = self._call("POST", "/cgi-bin/user/create", json=user)
        errcode = _errcode(body)
        if errcode == OK:
            return Outcome.created(address)
        log_vendor_answer(self.system, "user/create", person, errcode, body.get("errmsg", ""))
        if errcode == USER_EXISTS:
            # Created by our own earlier call whose answer was lost, or the address is someone else's.
            existing = self._get(address, person)
            if existing is None:
                return Outcome.transient(str(errcode), f"{body.get('errmsg', '')} (but user/get finds no "
                                                        f"mailbox {address}: try again)")
            return self._resolve_existing(existing, person, state, f"60102 {body.get('errmsg', '')}".strip())
        return Outcome.permanent(str(errcode), str(body.get("errmsg", "")))

    def _resolve_existing(self, user: dict, person: PersonSnapshot, state: dict, context: str) -> Outcome:
        address = str(user.get("userid") or person.email)
        if same_mobile(str(user.get("mobile", "")), person.phone_number) or \
                same_text(str(user.get("extid", "")), person.employee_number):
            return Outcome.linked(address, message=context)
        return self._taken(address, state, f"{context}: mailbox {address} belongs to someone else (extid "
                                           f"{user.get('extid', '')!r})")

    @staticmethod
    def _taken(address: str, state: dict, reason: str) -> Outcome:
        """The address is someone else's: the person needs the next free one."""
        refused = sorted({*state.get("refused_emails", []), address.lower()})
        return Outcome.permanent(
            EMAIL_TAKEN, f"{reason}; the person needs the next free address",
            state={**state, "reallocate_email": True, "taken_email": address, "refused_emails": refused},
        )

    def apply_change(self, person: PersonSnapshot, change: AccountChange, state: dict) -> Outcome:
        """One user/update with the current name, mobile and enable: a "set", so a replay after a lost answer
        changes nothing twice. The department stays where the create put it (EXMAIL_DEPARTMENT_ID)."""
        address = (change.external_id or "").strip()
        if not address:
            return Outcome.permanent("invalid_change", "the mailbox has no userid (address) to change")
        if "email" in change.fields and not same_text(address, person.email):
            return Outcome.permanent(
                "email_change_unsupported",
                f"user/update cannot move the mailbox {address} to {person.email!r}: the userid is the address. "
                f"Addresses are confirmed by the mailbox first and never change afterwards; move it in Exmail by hand")
        user = {
            "userid": address,
            "name": person.full_name,
            "mobile": national_mobile(person.phone_number),
            "enable": 1 if change.active else 0,
        }
        return self._update(person, user)

    can_disable_accounts = True

    def disable_account(self, account: TargetAccount) -> Outcome:
        """user/update with `enable` 0 alone: the name and mobile stay as Exmail holds them."""
        address = (account.external_id or "").strip()
        if not address:
            return Outcome.permanent("invalid_change", "the mailbox has no userid (address) to disable")
        return self._update(orphan_snapshot(account), {"userid": address, "enable": 0})

    def _update(self, person: PersonSnapshot, user: dict) -> Outcome:
        address = user["userid"]
        try:
            body = self._call("POST", "/cgi-bin/user/update", json=user)
        except TargetError as e:
            return e.outcome
        errcode = _errcode(body)
        if errcode == OK:
            return Outcome.applied(address, code=str(errcode), message=str(body.get("errmsg", "")))
        log_vendor_answer(self.system, "user/update", person, errcode, body.get("errmsg", ""))
        if errcode == USER_NOT_FOUND:
            return Outcome.permanent("account_missing",
                                     f"{errcode} {body.get('errmsg', '')}: Exmail has no mailbox {address}")
        return Outcome.permanent(str(errcode), str(body.get("errmsg", "")))

    # --- Reading the accounts (reconciliation) -------------------------------------------------

    def list_accounts(self, *, cursor: str | None, page_size: int) -> AccountPage:
        """A page of the member list, by offset; the cursor is "<listing token>:<offset>". The first page
        fetches the list, the last one lets it go."""
        if cursor is None:
            token, offset = secrets.token_hex(8), 0
        else:
            token, _, raw_offset = cursor.partition(":")
            offset = int(raw_offset)
        accounts = self._listing(token).accounts
        page = accounts[offset:offset + page_size]
        if offset + page_size < len(accounts):
            return AccountPage(accounts=page, next_cursor=f"{token}:{offset + page_size}")
        with self._listings_lock:
            self._listings.pop(token, None)
        return AccountPage(accounts=page, next_cursor=None)

    def _fetch_members(self) -> list[TargetAccount]:
        """Every mailbox under EXMAIL_DEPARTMENT_ID, sub-departments included, once each, ordered by address."""
        try:
            body = self._call("GET", "/cgi-bin/user/list",
                              params={"department_id": settings.EXMAIL_DEPARTMENT_ID, "fetch_child": 1})
        except TargetError as e:
            raise listing_failure(e) from e
        errcode = _errcode(body)
        if errcode != OK:
            raise ListingFailed(str(body.get("errcode", errcode)), str(body.get("errmsg", "")))
        members = {}
        # A member of two departments may come twice with fetch_child: one account per address.
        for user in body.get("userlist") or []:
            if isinstance(user, dict) and user.get("userid"):
                members.setdefault(str(user["userid"]).casefold(), user)
        return [target_account(members[address]) for address in sorted(members)]

    def _listing(self, token: str) -> _Listing:
        """The listing's member list: kept from its first page, fetched again if it is gone."""
        now = time.monotonic()
        with self._listings_lock:
            for idle in [t for t, kept in self._listings.items() if now - kept.read_at > LISTING_IDLE_SECONDS]:
                del self._listings[idle]
            listing = self._listings.get(token)
            if listing is not None:
                listing.read_at = now
                return listing
        listing = _Listing(self._fetch_members(), time.monotonic())
        with self._listings_lock:
            while len(self._listings) >= MAX_LISTINGS:
                del self._listings[min(self._listings, key=lambda t: self._listings[t].read_at)]
            self._listings[token] = listing
        return listing
