"""A WeLink open API simulator: tickets that expire, asynchronous bulk user sync, status codes, rate limits.

Endpoints (as documented on open.welink.huaweicloud.com): POST /api/auth/v2/tickets,
GET /api/contact/v1/users?corpUserId=, POST /api/contact/v1/users/bulk, POST /api/contact/v1/users/status.
Every answer is HTTP 200 with string codes in the body, ``{"code": "0", "message": …, "data": …}``.
The rate limit (48503) counts calls per API per client, as WeLink documents it.

A submitted person becomes a job: the first `polls_before_open` status polls answer 47100 (pending) then
47108 (opening); the next answers 47109 and the account is open (userStatus "3"). A job whose mobile
number is already the login of another user ends 47120; `fail_job` makes one end 47110.

The bulk sync is an upsert keyed by corpUserId: a known user's fields are replaced at once. `valid: "0"`
makes a job that closes the account: after `polls_before_open` polls (47104, processing) it ends 47107
(saved, not opened), the lookup shows `valid` "0" and userStatus "1"; `valid: "1"` opens it again.
"""

import re
import uuid

from .base import CallRateLimit, Request, Response, SimulatorApp, TokenIssuer, run_cli, start_server
from .base import stop as stop_server

TOKEN_PATH = "/api/auth/v2/tickets"
USERS_PATH = "/api/contact/v1/users"
BULK_PATH = "/api/contact/v1/users/bulk"
STATUS_PATH = "/api/contact/v1/users/status"
OPEN_STATUS = "3"
NOT_OPEN_STATUS = "1"
MAX_BULK = 10
_mobile_re = re.compile(r"^\+\d{1,4}-\d{5,15}$")


def _ok(data=None, message="ok") -> Response:
    body = {"code": "0", "message": message}
    if data is not None:
        body["data"] = data
    return Response(200, body)


def _error(code: str, message: str, status: int = 200, headers: dict | None = None) -> Response:
    return Response(status, {"code": code, "message": message, "data": []}, headers or {})


class WelinkSimulator(SimulatorApp):
    def __init__(self, *, client_id: str = "welink-client", client_secret: str = "welink-secret",
                 token_lifetime: float = 7200, announced_expires_in: float | None = None,
                 polls_before_open: int = 2, rate_limit_per_second: int = 40, rate_limit_status: int = 200):
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.tokens = TokenIssuer(token_lifetime, announced_expires_in)
        self.polls_before_open = polls_before_open
        self.rate_limit = CallRateLimit(rate_limit_per_second)
        self.rate_limit_status = rate_limit_status
        self.users: dict[str, dict] = {}        # corpUserId → the directory record
        self.jobs: dict[str, dict] = {}         # corpUserId → {"polls": n, "result": code or None, "close": bool}
        self.forced_failures: dict[str, tuple[str, str]] = {}
        self.submissions: dict[str, int] = {}   # corpUserId → bulk submissions received
        self.opened: dict[str, int] = {}        # corpUserId → times an account was opened (must stay ≤ 1)
        self.closed: dict[str, int] = {}        # corpUserId → times an open account was closed
        self.reopened: dict[str, int] = {}      # corpUserId → times a closed account was opened again
        self.bulk_sizes: list[int] = []         # persons in each users/bulk call received
        # National mobile → the corpUserIds whose record carries it: the login-mobile check of an opening
        # looks at those, not at every user (a scan per opening made a 10,000-person load quadratic).
        self._by_mobile: dict[str, set[str]] = {}
        # Test controls of users/status: refuse a longer list as a whole (47013), or answer only the first N.
        self.status_list_limit = 0
        self.status_answers_first: int | None = None

    # --- Test controls ---------------------------------------------------------------------------

    def add_user(self, corp_user_id: str, *, name: str, mobile: str, email: str = "", status: str = "3",
                 user_id: str | None = None, department: str = "", valid: str = "1") -> dict:
        """A user that exists before the service calls (someone else's, or ours from an earlier run)."""
        record = {"corpUserId": corp_user_id, "userId": user_id or f"wl_{uuid.uuid4().hex[:12]}",
                  "userNameCn": name, "mobileNumber": mobile, "userEmail": email, "corpDeptCode": department,
                  "userStatus": status, "valid": valid}
        with self.lock:
            self.users[corp_user_id] = record
            self._index_mobile(corp_user_id, "", mobile)
        return record

    def _index_mobile(self, corp_user_id: str, old: str, new: str) -> None:
        if old:
            self._by_mobile.get(old.split("-")[-1], set()).discard(corp_user_id)
        if new:
            self._by_mobile.setdefault(new.split("-")[-1], set()).add(corp_user_id)

    def fail_job(self, corp_user_id: str, code: str = "47110",
                 message: str = "Failed to get the company email suffix information.") -> None:
        """Make this person's next job end with a failure code instead of 47109."""
        with self.lock:
            self.forced_failures[corp_user_id] = (code, message)

    def expire_tokens(self) -> None:
        self.tokens.expire_all()

    def open_accounts(self) -> dict[str, dict]:
        with self.lock:
            return {k: dict(v) for k, v in self.users.items() if v["userStatus"] == OPEN_STATUS}

    # --- The API ----------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.path == TOKEN_PATH and request.method == "POST":
            return self._tickets(request)
        routes = {
            ("GET", USERS_PATH): self._lookup,
            ("POST", BULK_PATH): self._bulk,
            ("POST", STATUS_PATH): self._status,
        }
        route = routes.get((request.method, request.path))
        if route is None:
            return _error("404", "非法请求:请求地址不存在", status=404)
        token = request.header("x-wlk-Authorization")
        if not token:
            return _error("47101", "Token format error")
        verdict, client = self.tokens.check(token)
        if verdict == "unknown":
            return _error("1000", "access_token is invalid")
        if verdict == "expired":
            return _error("47103", "Authentication failed")
        # WeLink's flow control counts calls per API per client.
        if not self.rate_limit.allow(f"{client} {request.path}"):
            return _error("48503", "Too many requests, the flow control limit is exceeded",
                          status=self.rate_limit_status, headers={"Retry-After": "1"})
        with self.lock:
            return route(request)

    def _tickets(self, request: Request) -> Response:
        body = request.json() or {}
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return _error("411007", "client_id or client_secret error")
        token, expires_in = self.tokens.issue(self.client_id)
        return Response(200, {"code": "0", "message": "ok", "access_token": token, "expires_in": expires_in})

    def _lookup(self, request: Request) -> Response:
        corp_user_id = request.query.get("corpUserId", "")
        if not corp_user_id:
            return _error("47003", "parameter is empty: corpUserId")
        record = self.users.get(corp_user_id)
        if record is None:
            return _error("47111", "Account not exist.")
        return _ok([dict(record)])

    def _bulk(self, request: Request) -> Response:
        persons = (request.json() or {}).get("personInfo")
        if not isinstance(persons, list) or not persons:
            return _error("47003", "parameter is empty: personInfo")
        if len(persons) > MAX_BULK:
            return _error("47013", f"at most {MAX_BULK} persons a call")
        self.bulk_sizes.append(len(persons))
        results = []
        for info in persons:
            corp_user_id = str(info.get("corpUserId") or "")
            problem = self._invalid(info)
            if problem:
                results.append({"corpUserId": corp_user_id, "code": "47008", "message": problem})
                continue
            self.submissions[corp_user_id] = self.submissions.get(corp_user_id, 0) + 1
            record = self.users.get(corp_user_id)
            if record is None:
                record = {"corpUserId": corp_user_id, "userId": "", "userStatus": NOT_OPEN_STATUS, "valid": "1"}
                self.users[corp_user_id] = record
            # The bulk sync is an upsert keyed by corpUserId: fields are replaced, the account is not doubled.
            self._index_mobile(corp_user_id, record.get("mobileNumber", ""), info["mobileNumber"])
            record.update({"userNameCn": info["userNameCn"], "mobileNumber": info["mobileNumber"],
                           "userEmail": info.get("userEmail", ""), "corpDeptCode": info.get("corpDeptCode", "")})
            close = str(info.get("valid", "1")) == "0"
            if record["userStatus"] == OPEN_STATUS and not close:
                self.jobs.pop(corp_user_id, None)   # an older job's result no longer describes the account
                results.append({"corpUserId": corp_user_id, "code": "47109", "message": " Operation success"})
                continue
            self.jobs[corp_user_id] = {"polls": 0, "result": None, "close": close}
            results.append({"corpUserId": corp_user_id, "code": "47100", "message": " Pending"})
        return _ok(results, message="success")

    @staticmethod
    def _invalid(info: dict) -> str:
        if not info.get("corpUserId"):
            return "corpUserId is empty"
        if not info.get("userNameCn"):
            return "userNameCn is empty"
        if not _mobile_re.match(str(info.get("mobileNumber") or "")):
            return "mobileNumber must look like +86-13800000000"
        if info.get("isOpenAccount") not in ("0", "1"):
            return "isOpenAccount must be \"0\" or \"1\""
        if info.get("valid", "1") not in ("0", "1"):
            return "valid must be \"0\" or \"1\""
        return ""

    def _status(self, request: Request) -> Response:
        persons = (request.json() or {}).get("personInfo")
        if not isinstance(persons, list) or not persons:
            return _error("47003", "parameter is empty: personInfo")
        if self.status_list_limit and len(persons) > self.status_list_limit:
            return _error("47013", f"personInfo holds more than {self.status_list_limit} persons")
        entries = [self._job_status(str(p.get("corpUserId") or "")) for p in persons]
        if self.status_answers_first is not None:
            entries = entries[:self.status_answers_first]
        return _ok(entries, message="success")

    def _job_status(self, corp_user_id: str) -> dict:
        record = self.users.get(corp_user_id)
        job = self.jobs.get(corp_user_id)
        if record is None:
            return {"corpUserId": corp_user_id, "code": "47111", "message": " Account not exist."}
        if job is None:
            if record["userStatus"] == OPEN_STATUS:
                return {"corpUserId": corp_user_id, "code": "47109", "message": " Operation success"}
            return {"corpUserId": corp_user_id, "code": "47107",
                    "message": " No need to operate, just save into the admin table"}
        if job["result"] is None:
            job["polls"] += 1
            if job["polls"] <= self.polls_before_open:
                if job.get("close"):
                    return {"corpUserId": corp_user_id, "code": "47104", "message": " Processing"}
                code = "47100" if job["polls"] == 1 else "47108"
                return {"corpUserId": corp_user_id, "code": code,
                        "message": " Pending" if code == "47100" else " Opening the account"}
            job["result"] = self._close(record) if job.get("close") else self._finish(record)
        code, message = job["result"]
        return {"corpUserId": corp_user_id, "code": code, "message": message}

    def _finish(self, record: dict) -> tuple[str, str]:
        corp_user_id = record["corpUserId"]
        if corp_user_id in self.forced_failures:
            return self.forced_failures.pop(corp_user_id)
        mobile = record["mobileNumber"].split("-")[-1]
        for other_id in self._by_mobile.get(mobile, ()):
            other = self.users[other_id]
            if other_id != corp_user_id and other["userStatus"] == OPEN_STATUS and \
                    other["mobileNumber"].split("-")[-1] == mobile:
                return "47120", " The login mobile number has been registered."
        record["userStatus"] = OPEN_STATUS
        record["valid"] = "1"
        if record["userId"]:
            self.reopened[corp_user_id] = self.reopened.get(corp_user_id, 0) + 1
        else:
            record["userId"] = f"wl_{uuid.uuid4().hex[:12]}"
            self.opened[corp_user_id] = self.opened.get(corp_user_id, 0) + 1
        return "47109", " Operation success"

    def _close(self, record: dict) -> tuple[str, str]:
        corp_user_id = record["corpUserId"]
        if corp_user_id in self.forced_failures:
            return self.forced_failures.pop(corp_user_id)
        if record["userStatus"] == OPEN_STATUS:
            self.closed[corp_user_id] = self.closed.get(corp_user_id, 0) + 1
        record["userStatus"] = NOT_OPEN_STATUS
        record["valid"] = "0"
        return "47107", " No need to operate, just save into the admin table"


def start(port: int = 0, **options) -> tuple:
    """Start a WeLink simulator on loopback; return (server, base_url). `server.app` is the simulator."""
    return start_server(WelinkSimulator(**options), port)


stop = stop_server


def _arguments(parser) -> None:
    parser.add_argument("--client-id", default="welink-client")
    parser.add_argument("--client-secret", default="welink-secret")
    parser.add_argument("--token-lifetime", type=float, default=7200, help="Seconds a ticket is valid.")
    parser.add_argument("--polls-before-open", type=int, default=2,
                        help="Status polls answered 'in progress' before 47109.")
    parser.add_argument("--rate-limit", type=int, default=40, help="Calls per second per API per client (0: none).")


if __name__ == "__main__":
    run_cli("welink-simulator", "Serve a WeLink open API simulator on loopback.",
            lambda a: WelinkSimulator(client_id=a.client_id, client_secret=a.client_secret,
                                      token_lifetime=a.token_lifetime, polls_before_open=a.polls_before_open,
                                      rate_limit_per_second=a.rate_limit),
            _arguments)
