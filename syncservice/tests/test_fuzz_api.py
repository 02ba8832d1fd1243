"""Property-based fuzzing of every API endpoint with schemathesis, against a live server on PostgreSQL.

The schema is the one the service publishes at /api/schema/. schemathesis (its command line, in a subprocess)
sends every generated request over HTTP to a real server thread (pytest-django's `live_server`) backed by the
test database, authenticated as a caller of that endpoint would be: an origin client for /account-creation/,
an operator for /task-management/. Every answer must be no 5xx, a documented status code and content type,
a body and headers that match the schema; every request that breaks the schema (negative data) must be
refused; and every endpoint must refuse the request without its token. What this found was fixed in the code
and the schema, never by loosening these checks.

All of schemathesis's phases run: the schema's examples, coverage (boundaries, every enum value, each
required field missing, unexpected methods, …), fuzzing, and stateful sequences that follow the Location
header from a new request to its status, cancel and retry. Generation is deterministic (a fixed seed,
`deterministic = true`) and bounded (`MAX_EXAMPLES` per operation, `STATEFUL_MAX_STEPS` per scenario).
"""

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncservice.backends import reset_backends
from syncservice.models import AccountCreationRequest

from .fixtures import _on_postgres, make_users, note_example, run_pipeline

pytestmark = [
    pytest.mark.skipif(not _on_postgres(), reason="the fuzzed live server runs on PostgreSQL, as in CI; "
                                                  "set DATABASE_URL=postgres://..."),
    pytest.mark.slow, pytest.mark.django_db(transaction=True),
]

SEED = 20250121
MAX_EXAMPLES = 60
STATEFUL_MAX_STEPS = 6
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
]
# Left out: positive_data_acceptance. Some rules cannot be written in JSON Schema (employee numbers unique
# case-insensitively, originSystem bound to the caller's client, callback hosts that must resolve to public
# addresses, a deactivation naming only persons its origin submitted), so a schema-valid request may rightly be
# refused with a 400 or 403 naming the rule. And
# object_level_authorization, which needs two users of one kind: test_security.py covers that.
NEGATIVE_DATA_REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]


@dataclass
class LiveApi:
    url: str
    origin_token: str
    operator_token: str


@pytest.fixture
def live_api(live_server, make_caller, settings):
    """The live server with an origin client, an operator and requests in every state the endpoints care
    about (the stateful phase finds them through the list, and creates more of its own)."""
    settings.API_THROTTLE_RATE = ""  # thousands of calls a minute: rate limiting has its own tests
    settings.TASK_RETRY_BASE_SECONDS = 0
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^FAIL"
    reset_backends()
    origin = make_caller("HR_SYSTEM")
    operator = make_caller("ops", operator=True)
    supplier = make_caller("SUPPLIER_SYSTEM")

    def submit(caller, **overrides) -> str:
        response = caller.submit(note_example(**overrides))
        assert response.status_code == 202, response.content
        return response.json()["requestId"]

    finished = submit(origin, businessKey="FUZZ-DONE", userList=make_users(2, "DONE"))
    failed = submit(origin, businessKey="FUZZ-FAILED", userList=make_users(2, "FAIL"))
    run_pipeline()
    pending = submit(origin, businessKey="FUZZ-PENDING", userList=make_users(2, "PEND"))
    submit(supplier, originSystem="SUPPLIER_SYSTEM", businessKey="FUZZ-FOREIGN")
    statuses = dict(AccountCreationRequest.objects.values_list("request_id", "status"))
    assert [statuses[i] for i in (finished, failed, pending)] == ["completed", "failed", "pending"]
    yield LiveApi(live_server.url, origin.token, operator.token)
    reset_backends()


def schemathesis_config(api: LiveApi) -> str:
    """The run's schemathesis.toml: one token per family of endpoints, no state left behind."""
    return f"""
seed = {SEED}
color = false
cache = {{ enabled = false }}

[generation]
mode = "all"
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"

[checks.negative_data_rejection]
expected-statuses = {NEGATIVE_DATA_REFUSALS}

[phases.stateful]
max-steps = {STATEFUL_MAX_STEPS}

[[operations]]
include-path-regex = "^/account-creation/"
headers = {{ Authorization = "Bearer {api.origin_token}" }}

[[operations]]
include-path-regex = "^/task-management/"
headers = {{ Authorization = "Bearer {api.operator_token}" }}
"""


def schemathesis_command() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -r requirements-dev.txt")
    return found


def test_every_endpoint_answers_as_its_schema_says(live_api, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config(live_api))
    command = [
        schemathesis_command(), "--config-file", str(config), "--no-color", "run", f"{live_api.url}/api/schema/",
        "--checks", ",".join(CHECKS), "--workers", "1", "--request-timeout", "60", "--max-failures", "50",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    report = result.stdout + result.stderr
    print(report[-30000:])  # shown with -rP, and with the failure
    assert result.returncode == 0, report[-30000:]
    # Every operation of the schema was selected and tested.
    selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", report).groups())
    tested = int(re.search(r"Tested: (\d+)", report).group(1))
    assert selected == total == tested >= 9, report[-5000:]
