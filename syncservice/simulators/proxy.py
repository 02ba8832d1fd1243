"""A fault-injecting reverse proxy: puts the simulators' fault switches in front of a real server.

Used in front of scim2-server, which cannot be told to fail: the proxy forwards each request unchanged and
can answer 5xx or 429 instead, hold a request past the client's timeout, or forward it and lose the answer.
"""

import http.client
from urllib.parse import urlencode, urlsplit

from .base import Request, Response, SimulatorApp, run_cli, start_server
from .base import stop as stop_server

FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept", "if-match", "if-none-match")
RELAYED_RESPONSE_HEADERS = ("content-type", "location", "etag", "retry-after", "www-authenticate")


class FaultProxy(SimulatorApp):
    def __init__(self, *, upstream: str, timeout: float = 30.0):
        super().__init__()
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout

    def handle(self, request: Request) -> Response:
        target = self.prefix + request.path
        if request.query:
            target += "?" + urlencode(request.query)
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_REQUEST_HEADERS}
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(request.method, target, body=request.body or None, headers=headers)
            upstream = connection.getresponse()
            body = upstream.read()
            relayed = {k: v for k, v in upstream.getheaders() if k.lower() in RELAYED_RESPONSE_HEADERS}
            return Response(upstream.status, body, relayed)
        finally:
            connection.close()


def start(port: int = 0, **options) -> tuple:
    """Start a proxy to `upstream=` on loopback; return (server, base_url). `server.app.faults` steers it."""
    return start_server(FaultProxy(**options), port)


stop = stop_server


def _arguments(parser) -> None:
    parser.add_argument("--upstream", required=True, help="Base URL of the server to forward to.")


if __name__ == "__main__":
    run_cli("fault-proxy", "Forward HTTP requests to a server, with fault injection.",
            lambda a: FaultProxy(upstream=a.upstream), _arguments)
