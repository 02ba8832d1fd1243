"""Corporate mailboxes over the Tencent Exmail API: read the address back before and after creating it.

Settings: EXMAIL_API_URL, EXMAIL_CORP_ID, EXMAIL_CORP_SECRET (environment), EXMAIL_DEPARTMENT_ID. The
mailbox's userid is the person's allocated address, which is also the account's external id. An address
that already belongs to someone else ends the task with code ``email_taken`` and
``state["reallocate_email"]``: the process stage gives the person the next free address
(``services.email_reallocation``) and tries again. A change is one ``user/update`` of name, mobile and
``enable``; the address itself never changes (the mailbox is made first, every other target follows it).
"""

from django.conf import settings

from .base import AccountChange, Outcome, PersonSnapshot, TargetBackend
from .http import (
    HttpClient,
    TargetError,
    TokenCache,
    json_object,
    log_vendor_answer,
    national_mobile,
    same_mobile,
    same_text,
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


def exmail_error(body) -> tuple[str, str]:
    if not isinstance(body, dict) or "errcode" not in body:
        return "", ""
    return str(body.get("errcode")), str(body.get("errmsg", ""))


def _errcode(body: dict) -> int:
    try:
        return int(body.get("errcode", OK))
    except (TypeError, ValueError):
        return -1


class ExmailBackend(TargetBackend):
    system = "email"

    def __init__(self, **options):
        super().__init__(**options)
        self.http = HttpClient(system=self.system, url_setting="EXMAIL_API_URL", default_url=DEFAULT_URL,
                               error_fields=exmail_error)
        self.tokens = TokenCache(self._fetch_token)

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
                    self.http.rate_limited(retry_after, f"Exmail {errcode}")
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

    def ensure_account(self, person: PersonSnapshot, state: dict) -> Outcome:
        address = (person.email or "").strip()
        if not address:
            return Outcome.permanent("no_email", "the person has no allocated email address yet")
        try:
            existing = self._get(address, person)
            if existing is not None:
                return self._resolve_existing(existing, person, state, "the mailbox existed already")
            return self._create(address, person, state)
        except TargetError as e:
            return e.outcome

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
        refused = sorted({*state.get("refused_emails", []), address.lower()})
        return Outcome.permanent(
            EMAIL_TAKEN, f"{context}: mailbox {address} belongs to someone else (extid "
                         f"{user.get('extid', '')!r}); the person needs the next free address",
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
