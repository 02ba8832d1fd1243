#!/usr/bin/env python
"""End-to-end check of a running service, as the design note describes: `python test_new_api.py`.

Submits the note's example request, optionally triggers the three stages through the task-management
API, polls the status URL until the request is final, prints the result and exits non-zero unless it
ended `completed`. Only the standard library is used, so any Python 3 runs it.

Environment (defaults come from .demo-credentials.json, written by `make run`):
  API_BASE_URL     the service, e.g. http://127.0.0.1:8000
  API_TOKEN        an origin client's token (originSystem HR_SYSTEM unless ORIGIN_SYSTEM is set)
  OPERATOR_TOKEN   an operator token; with it the stages are triggered through the API
  ORIGIN_SYSTEM    default HR_SYSTEM
  TRIGGER_STAGES   1 to trigger the stages (default: 1 when OPERATOR_TOKEN is known), 0 to only wait
  TIMEOUT_SECONDS  how long to wait for a final status (default 120)
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

FINAL = {"completed", "partial_failed", "failed", "cancelled"}


def load_defaults() -> dict:
    path = Path(os.environ.get("DEMO_CREDENTIALS_FILE") or Path(__file__).with_name(".demo-credentials.json"))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def call(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            return error.code, dict(error.headers), json.loads(payload or b"{}")
        except ValueError:
            return error.code, dict(error.headers), {"raw": payload.decode("utf-8", "replace")}


def main() -> int:
    defaults = load_defaults()
    base_url = (os.environ.get("API_BASE_URL") or defaults.get("baseUrl") or "http://127.0.0.1:8000").rstrip("/")
    token = os.environ.get("API_TOKEN") or defaults.get("token")
    operator_token = os.environ.get("OPERATOR_TOKEN") or defaults.get("operatorToken")
    origin = os.environ.get("ORIGIN_SYSTEM") or defaults.get("originSystem") or "HR_SYSTEM"
    trigger = os.environ.get("TRIGGER_STAGES", "1" if operator_token else "0") == "1"
    timeout = float(os.environ.get("TIMEOUT_SECONDS", "120"))
    if not token:
        print("No API token: set API_TOKEN or run `make run` first (it writes .demo-credentials.json).")
        return 2

    suffix = uuid.uuid4().hex[:6].upper()
    payload = {
        "originSystem": origin,
        "businessKey": f"BATCH_{time.strftime('%Y%m%d')}_{suffix}",
        "accountType": "供应商",
        "employeeType": "1",
        "systemList": ["idaas", "welink", "email"],
        "userList": [
            {"employeeNumber": f"TEST{suffix}1", "employeeName": "张三", "departmentCode": "D001",
             "phoneNumber": "13800138001", "partnerCompany": "测试公司", "country": "中国"},
            {"employeeNumber": f"TEST{suffix}2", "employeeName": "李四", "departmentCode": "D002",
             "phoneNumber": "13800138002", "partnerCompany": "测试公司", "country": "中国"},
        ],
    }
    status, headers, body = call("POST", f"{base_url}/account-creation/create_accounts/", token, payload)
    print(f"POST create_accounts → {status}: {json.dumps(body, ensure_ascii=False)}")
    if status != 202:
        return 1
    status_url = base_url + headers.get("Location", f"/account-creation/requests/{body['requestId']}/")

    deadline = time.monotonic() + timeout
    document = {}
    while time.monotonic() < deadline:
        if trigger:
            for stage in ("sync_hr_persons", "create_account_tasks", "process_account_tasks"):
                code, _, run = call("POST", f"{base_url}/task-management/{stage}/", operator_token, {"mode": "run"})
                if code != 200:
                    print(f"trigger {stage} → {code}: {json.dumps(run, ensure_ascii=False)}")
                    return 1
        status, _, document = call("GET", status_url, token)
        if status != 200:
            print(f"GET status → {status}: {json.dumps(document, ensure_ascii=False)}")
            return 1
        print(f"status: {document['status']} ({document['status_display']}), progress {document['progress']}")
        if document["status"] in FINAL:
            break
        time.sleep(1 if trigger else 2)
    else:
        print(f"Timed out after {timeout:g} s waiting for a final status.")
        return 1
    print(json.dumps(document, ensure_ascii=False, indent=2))
    return 0 if document["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
