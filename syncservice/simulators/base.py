"""The server half every simulator shares: a threaded loopback HTTP server, fault injection and a runner.

Stdlib only (http.server), so a simulator runs without Django: in-process from a test through ``start`` /
``stop``, or on its own with ``python -m syncservice.simulators.<name> --port P``.
"""

import argparse
import collections
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self):
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class Response:
    status: int = 200
    body: object = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, bytes):
            return self.body, headers
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8"), headers


@dataclass
class FaultRule:
    kind: str                 # "fail" (answer `status`), "delay" (sleep first), "drop" (handle, answer nothing)
    count: int
    method: str | None = None
    path: str | None = None
    status: int = 503
    body: object = None
    headers: dict = field(default_factory=dict)
    seconds: float = 0.0
    skip: int = 0             # let this many matching requests through first

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or self.path == path)


class Faults:
    """Switches a test flips to make the next matching requests fail, hang or lose their answer."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def fail(self, count: int = 1, *, status: int = 503, method: str | None = None, path: str | None = None,
             body: object = None, retry_after: float | None = None, skip: int = 0) -> None:
        """Answer the next `count` matching requests with `status` (a 5xx burst, a 429) without handling them.

        A `body` stands in for the real answer: a vendor error code, or a stale "not found".
        """
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        self._add(FaultRule("fail", count, method, path, status=status, body=body, headers=headers, skip=skip))

    def delay(self, seconds: float, count: int = 1, *, method: str | None = None, path: str | None = None,
              skip: int = 0) -> None:
        """Sleep before handling the next `count` matching requests: the client times out, the work is done."""
        self._add(FaultRule("delay", count, method, path, seconds=seconds, skip=skip))

    def drop(self, count: int = 1, *, method: str | None = None, path: str | None = None, skip: int = 0) -> None:
        """Handle the next `count` matching requests, then close the connection without an answer."""
        self._add(FaultRule("drop", count, method, path, skip=skip))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def take(self, method: str, path: str) -> FaultRule | None:
        """The rule that applies to this request, spending one of its count: rules queue in the order set."""
        with self._lock:
            for rule in self._rules:
                if rule.count > 0 and rule.matches(method, path):
                    if rule.skip > 0:
                        rule.skip -= 1
                        continue
                    rule.count -= 1
                    self._rules = [r for r in self._rules if r.count > 0]
                    return rule
        return None


class SimulatorApp:
    """A vendor API's behaviour: subclasses implement `handle`; state is guarded by `self.lock`."""

    def __init__(self):
        self.lock = threading.RLock()
        self.faults = Faults()
        self.calls: list[tuple[str, str]] = []   # (method, path) of every request received
        self._in_flight = 0
        self._idle = threading.Condition()

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def calls_to(self, path: str, method: str | None = None) -> int:
        return sum(1 for m, p in list(self.calls) if p == path and (method is None or m == method))

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being served (a delayed one finishes its work after the client left)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: the clients' connection pools are exercised for real
    server_version = "SyncserviceSimulator/1.0"
    disable_nagle_algorithm = True   # headers and body go out as separate writes: no 40 ms delayed-ACK stalls

    def do_GET(self):
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format, *args):
        pass  # request lines carry tokens and secrets in query strings: never print them

    def _serve(self) -> None:
        app: SimulatorApp = self.server.app
        app._enter()
        try:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command, path=parts.path, query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers={k.lower(): v for k, v in self.headers.items()}, body=self.rfile.read(length),
            )
            with app.lock:
                app.calls.append((request.method, request.path))
            rule = app.faults.take(request.method, request.path)
            rules = {rule.kind: rule} if rule is not None else {}
            if "delay" in rules:
                time.sleep(rules["delay"].seconds)
            if "fail" in rules:
                rule = rules["fail"]
                body = rule.body if rule.body is not None else {"error": "injected failure", "status": rule.status}
                self._send(Response(rule.status, body, dict(rule.headers)))
                return
            try:
                response = app.handle(request)
            except Exception as exc:  # a simulator bug should read as a server error, not a hang-up
                response = Response(500, {"error": f"{type(exc).__name__}: {exc}"})
            if "drop" in rules:
                self.close_connection = True   # the work is done; the answer is lost on the way back
                return
            self._send(response)
        finally:
            app._leave()

    def _send(self, response: Response) -> None:
        body, headers = response.encoded()
        try:
            self.send_response(response.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True   # the client gave up waiting (a delayed answer)


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, app: SimulatorApp):
        super().__init__(address, _Handler)
        self.app = app


def start_server(app: SimulatorApp, port: int = 0, host: str = "127.0.0.1") -> tuple[SimulatorServer, str]:
    """Serve `app` on loopback in a background thread; return the server and its base URL."""
    server = SimulatorServer((host, port), app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name=f"{type(app).__name__}-server")
    thread.start()
    server.thread = thread
    return server, f"http://{host}:{server.server_address[1]}"


def stop(server: SimulatorServer) -> None:
    server.shutdown()
    server.server_close()
    server.thread.join(timeout=5)


def run_cli(prog: str, description: str, make_app: Callable[[argparse.Namespace], SimulatorApp],
            add_arguments: Callable[[argparse.ArgumentParser], None], argv=None) -> None:
    """The `python -m syncservice.simulators.<name>` entry point: serve until interrupted."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1", help="Listen on this address (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=0, help="Listen on this port (default: any free one).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    server = SimulatorServer((args.host, args.port), make_app(args))
    print(f"{prog} serving on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class TokenIssuer:
    """Access tokens that really expire: after `lifetime` seconds, or all at once on `expire_all()`.

    `announced_expires_in` is what the token endpoint tells clients (default: the real lifetime), so a test
    can make tokens die while the client still trusts its cache, as when a vendor revokes them early.
    """

    def __init__(self, lifetime: float = 7200, announced_expires_in: float | None = None):
        self.lifetime = lifetime
        self.announced_expires_in = announced_expires_in
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self.issued = 0

    def issue(self, client: str) -> tuple[str, int]:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (client, time.monotonic() + self.lifetime)
            self.issued += 1
        announced = self.announced_expires_in if self.announced_expires_in is not None else self.lifetime
        return token, int(announced)

    def check(self, token: str) -> tuple[str, str | None]:
        """("ok", client), ("expired", client) or ("unknown", None)."""
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None:
            return "unknown", None
        client, expires = entry
        return ("ok" if time.monotonic() < expires else "expired"), client

    def expire_all(self) -> None:
        with self._lock:
            self._tokens = {t: (c, 0.0) for t, (c, _) in self._tokens.items()}


class CallRateLimit:
    """At most `limit` calls per key (a client, or a client and an API) in any sliding window of `seconds`;
    a limit of 0 means unlimited."""

    def __init__(self, limit: int = 0, seconds: float = 1.0):
        self.limit = limit
        self.seconds = seconds
        self._lock = threading.Lock()
        self._calls: dict[str, collections.deque] = {}
        self.refused = 0

    def allow(self, key: str) -> bool:
        if not self.limit:
            return True
        now = time.monotonic()
        with self._lock:
            calls = self._calls.setdefault(key, collections.deque())
            while calls and now - calls[0] >= self.seconds:
                calls.popleft()
            if len(calls) >= self.limit:
                self.refused += 1
                return False
            calls.append(now)
            return True
