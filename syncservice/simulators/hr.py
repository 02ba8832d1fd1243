"""An HR source simulator: GET /persons keyset-paged by (last_update_date, person_id), bearer token.

The contract (docs/backends.md): ``GET /persons?updated_after=<iso>&after_id=<person_id>&limit=<n>`` answers
``{"persons": [...], "next_cursor": {"updated_after": <iso>, "after_id": <id>} | null}`` with the persons
whose (last_update_date, person_id) is after the cursor, in that order. Without after_id, every person
updated at or after updated_after is included.
"""

import datetime as dt
import json
from pathlib import Path

from .base import Request, Response, SimulatorApp, run_cli, start_server
from .base import stop as stop_server

MAX_LIMIT = 1000


def _parse(value: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class HrSimulator(SimulatorApp):
    def __init__(self, *, token: str = "hr-token", persons: list[dict] | None = None):
        super().__init__()
        self.token = token
        self.persons: dict[int, dict] = {int(p["person_id"]): dict(p) for p in persons or []}
        self.requests: list[dict] = []   # the query of every /persons call, for assertions

    def upsert_person(self, *, person_id: int, employee_number: str, full_name: str,
                      last_update_date: dt.datetime, **fields) -> dict:
        """Add or change a person as HR would: the record gets the given last_update_date."""
        record = {
            "person_id": person_id, "employee_number": employee_number, "full_name": full_name,
            "telephone_number1": "", "person_type": "", "employee_status": "", "tenant_id": "",
            "person_dept": [], **fields, "last_update_date": last_update_date.isoformat(),
        }
        with self.lock:
            self.persons[person_id] = record
        return record

    def handle(self, request: Request) -> Response:
        if request.method != "GET" or request.path != "/persons":
            return Response(404, {"code": "not_found", "message": "no such endpoint"})
        if request.header("Authorization") != f"Bearer {self.token}":
            return Response(401, {"code": "unauthorized", "message": "missing or wrong bearer token"})
        query = request.query
        with self.lock:
            self.requests.append(dict(query))
            try:
                limit = min(int(query.get("limit", 100)), MAX_LIMIT)
                after = (_parse(query["updated_after"]), int(query.get("after_id", -1))) \
                    if query.get("updated_after") else None
            except (KeyError, ValueError) as e:
                return Response(400, {"code": "bad_request", "message": f"bad cursor: {e}"})
            if limit < 1:
                return Response(400, {"code": "bad_request", "message": "limit must be positive"})
            ordered = sorted(self.persons.values(),
                             key=lambda p: (_parse(p["last_update_date"]), p["person_id"]))
            if after is not None:
                ordered = [p for p in ordered if (_parse(p["last_update_date"]), p["person_id"]) > after]
            page = [dict(p) for p in ordered[:limit]]
            next_cursor = None
            if len(ordered) > limit:
                last = page[-1]
                next_cursor = {"updated_after": last["last_update_date"], "after_id": last["person_id"]}
        return Response(200, {"persons": page, "next_cursor": next_cursor})


def start(port: int = 0, **options) -> tuple:
    """Start an HR source simulator on loopback; return (server, base_url). `server.app` is the simulator."""
    return start_server(HrSimulator(**options), port)


stop = stop_server


def _arguments(parser) -> None:
    parser.add_argument("--token", default="hr-token", help="The bearer token the endpoint accepts.")
    parser.add_argument("--persons-file", help="A JSON list of persons to serve (each with person_id, "
                                               "employee_number, full_name, last_update_date, …).")


def _make_app(args) -> HrSimulator:
    persons = json.loads(Path(args.persons_file).read_text(encoding="utf-8")) if args.persons_file else []
    return HrSimulator(token=args.token, persons=persons)


if __name__ == "__main__":
    run_cli("hr-simulator", "Serve an HR source simulator on loopback.", _make_app, _arguments)
