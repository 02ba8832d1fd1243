"""A Tencent Exmail API simulator: gettoken with expiring tokens, user/get and user/create, errcodes, limits.

Endpoints: GET /cgi-bin/gettoken?corpid&corpsecret, GET /cgi-bin/user/get?access_token&userid,
POST /cgi-bin/user/create?access_token, POST /cgi-bin/user/update?access_token (changes the fields it is
given; 60111 for an unknown userid), POST /cgi-bin/user/batchcheck?access_token (up to 20 addresses:
whether each is free, a mailbox or a group), GET /cgi-bin/user/list?access_token&department_id&fetch_child
(the members of a department, of its sub-departments too with fetch_child=1, in one answer, `enable` as a
string as documented). Every answer is HTTP 200 with ``errcode`` / ``errmsg``. Limits (45009): calls per
second per client, and calls a minute and an hour per cgi, as Tencent documents them (500 and 15,000).
"""

import re

from .base import CallRateLimit, Request, Response, SimulatorApp, TokenIssuer, run_cli, start_server
from .base import stop as stop_server

_address_re = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_mobile_re = re.compile(r"^1\d{10}$")
MAX_BATCHCHECK = 20   # addresses per user/batchcheck call
USER_FIELDS = ("userid", "name", "department", "position", "mobile", "tel", "extid", "gender", "slaves",
               "cpwd_login", "enable")


def _answer(errcode: int, errmsg: str, **fields) -> Response:
    return Response(200, {"errcode": errcode, "errmsg": errmsg, **fields})


class ExmailSimulator(SimulatorApp):
    def __init__(self, *, corp_id: str = "exmail-corp", corp_secret: str = "exmail-secret",
                 token_lifetime: float = 7200, announced_expires_in: float | None = None,
                 departments=(1,), department_parents: dict | None = None, rate_limit_per_second: int = 0,
                 rate_limit_per_minute: int = 0, rate_limit_per_hour: int = 0):
        super().__init__()
        self.corp_id = corp_id
        self.corp_secret = corp_secret
        self.tokens = TokenIssuer(token_lifetime, announced_expires_in)
        self.departments = set(departments)
        # department id → parent id; a department without an entry hangs off the root (1)
        self.department_parents = dict(department_parents or {})
        self.departments |= set(self.department_parents)
        self.rate_limit = CallRateLimit(rate_limit_per_second)   # per client, every cgi together
        # As Tencent documents them: 500 calls a minute and 15,000 an hour, per cgi.
        self.cgi_limits = [CallRateLimit(rate_limit_per_minute, 60.0), CallRateLimit(rate_limit_per_hour, 3600.0)]
        self.users: dict[str, dict] = {}     # lower-cased address → user
        self.created: dict[str, int] = {}    # lower-cased address → user/create calls that created it
        self.updated: dict[str, int] = {}    # lower-cased address → user/update calls that changed it
        self.groups: set[str] = set()        # lower-cased addresses of mail groups (not mailboxes)
        self.batchcheck_sizes: list[int] = []   # addresses in each user/batchcheck call received

    # --- Test controls ---------------------------------------------------------------------------

    def add_user(self, userid: str, *, name: str, mobile: str = "", extid: str = "", department=(1,)) -> dict:
        """A mailbox that exists before the service calls (someone else's, or ours from an earlier run)."""
        user = {"userid": userid, "name": name, "department": list(department), "position": "",
                "mobile": mobile, "tel": "", "extid": extid, "gender": "0", "slaves": [], "cpwd_login": 1,
                "enable": 1}
        with self.lock:
            self.users[userid.lower()] = user
        return user

    def expire_tokens(self) -> None:
        self.tokens.expire_all()

    # --- The API ----------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.path == "/cgi-bin/gettoken" and request.method == "GET":
            return self._gettoken(request)
        routes = {("GET", "/cgi-bin/user/get"): self._get, ("POST", "/cgi-bin/user/create"): self._create,
                  ("POST", "/cgi-bin/user/batchcheck"): self._batchcheck,
                  ("POST", "/cgi-bin/user/update"): self._update, ("GET", "/cgi-bin/user/list"): self._list}
        route = routes.get((request.method, request.path))
        if route is None:
            return Response(404, {"errcode": 404, "errmsg": "not found"})
        token = request.query.get("access_token", "")
        if not token:
            return _answer(41001, "access_token missing")
        verdict, client = self.tokens.check(token)
        if verdict == "unknown":
            return _answer(40014, "invalid access_token")
        if verdict == "expired":
            return _answer(42001, "access_token expired")
        cgi = f"{client} {request.path}"
        # Every window is asked (no short circuit); a call one refuses still counts in those that let it
        # through, so the client is never favoured.
        allowed = [self.rate_limit.allow(client), *(limit.allow(cgi) for limit in self.cgi_limits)]
        if not all(allowed):
            return _answer(45009, "api freq out of limit")
        with self.lock:
            return route(request)

    def _gettoken(self, request: Request) -> Response:
        if request.query.get("corpid") != self.corp_id:
            return _answer(40013, "invalid corpid")
        if request.query.get("corpsecret") != self.corp_secret:
            return _answer(40001, "invalid credential")
        token, expires_in = self.tokens.issue(self.corp_id)
        return _answer(0, "ok", access_token=token, expires_in=expires_in)

    def _get(self, request: Request) -> Response:
        user = self.users.get(request.query.get("userid", "").lower())
        if user is None:
            return _answer(60111, "userid not found")
        return _answer(0, "ok", **{k: user[k] for k in USER_FIELDS})

    def _batchcheck(self, request: Request) -> Response:
        """Whether each address is free: type -1 invalid, 0 free, 1 a mailbox, 3 a mail group (an alias is 2)."""
        body = request.json()
        addresses = body.get("userlist") if isinstance(body, dict) else None
        if not isinstance(addresses, list) or not addresses:
            return _answer(40058, "invalid userlist")
        if len(addresses) > MAX_BATCHCHECK:
            return _answer(60128, f"at most {MAX_BATCHCHECK} addresses a call")
        self.batchcheck_sizes.append(len(addresses))
        answers = []
        for address in addresses:
            address = str(address)
            if not _address_re.match(address):
                kind = -1
            elif address.lower() in self.users:
                kind = 1
            elif address.lower() in self.groups:
                kind = 3
            else:
                kind = 0
            answers.append({"user": address, "type": kind})
        return _answer(0, "ok", list=answers)

    def _create(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            return _answer(40058, "invalid json")
        userid = str(body.get("userid") or "")
        if not _address_re.match(userid):
            return _answer(60103, "invalid userid")
        if not str(body.get("name") or "").strip():
            return _answer(60112, "invalid name")
        department = body.get("department")
        if not isinstance(department, list) or not department or any(d not in self.departments for d in department):
            return _answer(60003, "department not found")
        if not self._strong(str(body.get("password") or "")):
            return _answer(40058, "invalid password: 8-32 characters with letters and digits")
        mobile = str(body.get("mobile") or "")
        if mobile and not _mobile_re.match(mobile):
            return _answer(60103, "invalid mobile")
        if userid.lower() in self.users:
            return _answer(60102, "userid existed")
        if mobile and any(u["mobile"] == mobile for u in self.users.values()):
            return _answer(60104, "mobile existed")
        self.add_user(userid, name=body["name"], mobile=mobile, extid=str(body.get("extid") or ""),
                      department=department)
        self.users[userid.lower()]["cpwd_login"] = int(body.get("cpwd_login", 0))
        self.created[userid.lower()] = self.created.get(userid.lower(), 0) + 1
        return _answer(0, "created")

    def _update(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            return _answer(40058, "invalid json")
        user = self.users.get(str(body.get("userid") or "").lower())
        if user is None:
            return _answer(60111, "userid not found")
        if "name" in body and not str(body["name"] or "").strip():
            return _answer(60112, "invalid name")
        if "department" in body:
            department = body["department"]
            if not isinstance(department, list) or not department or \
                    any(d not in self.departments for d in department):
                return _answer(60003, "department not found")
        mobile = str(body.get("mobile") or "")
        if "mobile" in body:
            if mobile and not _mobile_re.match(mobile):
                return _answer(60103, "invalid mobile")
            if mobile and any(u["mobile"] == mobile and u is not user for u in self.users.values()):
                return _answer(60104, "mobile existed")
        if "enable" in body and body["enable"] not in (0, 1):
            return _answer(40058, "invalid enable: 0 or 1")
        for key in ("name", "department", "position", "mobile", "tel", "extid", "gender", "enable"):
            if key in body:
                user[key] = mobile if key == "mobile" else body[key]
        self.updated[user["userid"].lower()] = self.updated.get(user["userid"].lower(), 0) + 1
        return _answer(0, "updated")

    def _list(self, request: Request) -> Response:
        try:
            department = int(request.query.get("department_id", ""))
        except ValueError:
            return _answer(40058, "invalid department_id")
        if department not in self.departments:
            return _answer(60003, "department not found")
        wanted = self._descendants(department) if request.query.get("fetch_child") == "1" else {department}
        # A member of several wanted departments comes once per department, as a recursive listing may.
        members = [{**{k: user[k] for k in USER_FIELDS}, "enable": str(user["enable"])}
                   for user in self.users.values() for d in user["department"] if d in wanted]
        return _answer(0, "ok", userlist=members)

    def _descendants(self, department: int) -> set:
        """The department and every department below it."""
        found = {department}
        while True:
            more = {d for d in self.departments if d not in found and self._parent(d) in found}
            if not more:
                return found
            found |= more

    def _parent(self, department: int):
        return None if department == 1 else self.department_parents.get(department, 1)

    @staticmethod
    def _strong(password: str) -> bool:
        return (8 <= len(password) <= 32 and any(c.isalpha() for c in password)
                and any(c.isdigit() for c in password))


def start(port: int = 0, **options) -> tuple:
    """Start an Exmail simulator on loopback; return (server, base_url). `server.app` is the simulator."""
    return start_server(ExmailSimulator(**options), port)


stop = stop_server


def _arguments(parser) -> None:
    parser.add_argument("--corp-id", default="exmail-corp")
    parser.add_argument("--corp-secret", default="exmail-secret")
    parser.add_argument("--token-lifetime", type=float, default=7200, help="Seconds a token is valid.")
    parser.add_argument("--rate-limit", type=int, default=0, help="Calls per second (0: none).")
    parser.add_argument("--rate-limit-per-minute", type=int, default=0, help="Calls a minute per cgi (0: none).")
    parser.add_argument("--rate-limit-per-hour", type=int, default=0, help="Calls an hour per cgi (0: none).")


if __name__ == "__main__":
    run_cli("exmail-simulator", "Serve a Tencent Exmail API simulator on loopback.",
            lambda a: ExmailSimulator(corp_id=a.corp_id, corp_secret=a.corp_secret,
                                      token_lifetime=a.token_lifetime, rate_limit_per_second=a.rate_limit,
                                      rate_limit_per_minute=a.rate_limit_per_minute,
                                      rate_limit_per_hour=a.rate_limit_per_hour),
            _arguments)
