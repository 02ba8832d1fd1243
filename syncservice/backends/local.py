"""In-process backends: accounts kept in the database, with optional latency and failure injection.

They are the embedded default (the demo) and what the pipeline's tests run against. Settings:
LOCAL_BACKEND_LATENCY_MS, LOCAL_BACKEND_TRANSIENT_FAILURE_RATE, LOCAL_BACKEND_PERMANENT_FAILURE_RATE,
LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT (fail the first N calls of every task, then succeed),
LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN (employee numbers matching this regex fail for good),
LOCAL_BACKEND_FAILURE_SYSTEMS (restrict injected failures to these systems), LOCAL_WELINK_ASYNC
(WeLink answers "in progress" for LOCAL_WELINK_ASYNC_POLLS calls first, like the real one, to a create and to a
change) and LOCAL_HR_PERSONS_FILE. Every local backend can list its rows for reconciliation (keyset on id),
the WeLink one too, unlike the real WeLink.
"""

import datetime as dt
import json
import random
import re
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..db.shared import unflushed_commit, unflushed_prefix
from ..models import LocalTargetAccount
from .base import (
    AccountChange,
    AccountPage,
    HrPage,
    HrSourceBackend,
    Outcome,
    PersonSnapshot,
    TargetAccount,
    TargetBackend,
)


class LocalBackend(TargetBackend):
    # Whether the target holds a department the service manages; the mailbox's row keeps one, Exmail does not.
    holds_department = True

    def _inject(self, person: PersonSnapshot, state: dict) -> Outcome | None:
        latency = getattr(settings, "LOCAL_BACKEND_LATENCY_MS", 0)
        if latency:
            time.sleep(latency / 1000)
        systems = getattr(settings, "LOCAL_BACKEND_FAILURE_SYSTEMS", None)
        if systems and self.system not in systems:
            return None
        pattern = getattr(settings, "LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN", "")
        if pattern and re.search(pattern, person.employee_number):
            return Outcome.permanent("LOCAL-422", f"{self.system} refused the account (injected)")
        failures_per_account = getattr(settings, "LOCAL_BACKEND_TRANSIENT_FAILURES_PER_ACCOUNT", 0)
        failed_so_far = state.get("injected_failures", 0)
        if failed_so_far < failures_per_account:
            return Outcome.transient("LOCAL-503", f"{self.system} unavailable (injected)",
                                     state={**state, "injected_failures": failed_so_far + 1})
        if random.random() < getattr(settings, "LOCAL_BACKEND_PERMANENT_FAILURE_RATE", 0.0):
            return Outcome.permanent("LOCAL-422", f"{self.system} refused the account (injected)")
        if random.random() < getattr(settings, "LOCAL_BACKEND_TRANSIENT_FAILURE_RATE", 0.0):
            return Outcome.transient("LOCAL-503", f"{self.system} unavailable (injected)")
        return None

    def ensure_account(self, person: PersonSnapshot, state: dict) -> Outcome:
        injected = self._inject(person, state)
        if injected is not None:
            return injected
        # Create-if-absent in one statement, like a target's idempotent create: an account that exists
        # already (a retry after a lost answer, another worker first) is linked, never made twice.
        external_id = f"{self.system}-{uuid.uuid4().hex[:16]}"
        table = LocalTargetAccount._meta.db_table
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                # One query string: its own transaction, committed without waiting for the WAL flush.
                unflushed_prefix() + f'INSERT INTO "{table}" (system, employee_number, external_id, email, '
                "full_name, mobile, department_code, active, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (system, employee_number) DO NOTHING",
                [self.system, person.employee_number, external_id, person.email or "", person.full_name,
                 person.phone_number or "", person.department_code or "", True, now, now],
            )
            if cursor.rowcount == 1:
                return Outcome.created(external_id)
        existing = LocalTargetAccount.objects.get(system=self.system, employee_number=person.employee_number)
        return Outcome.linked(existing.external_id, message="account already existed")

    def apply_change(self, person: PersonSnapshot, change: AccountChange, state: dict) -> Outcome:
        injected = self._inject(person, state)
        if injected is not None:
            return injected
        # Every value at once, like the targets' "set" calls: a replay writes the same row again.
        with unflushed_commit():
            updated = LocalTargetAccount.objects.filter(system=self.system, external_id=change.external_id).update(
                full_name=person.full_name, email=person.email or "", mobile=person.phone_number or "",
                department_code=person.department_code or "", active=change.active, updated_at=timezone.now(),
            )
        if not updated:
            return Outcome.permanent("account_missing", f"no local {self.system} account {change.external_id}")
        return Outcome.applied(change.external_id, message=f"{change.operation} applied")

    can_disable_accounts = True

    def disable_account(self, account: TargetAccount) -> Outcome:
        updated = LocalTargetAccount.objects.filter(system=self.system, external_id=account.external_id).update(
            active=False, updated_at=timezone.now())
        if not updated:
            return Outcome.permanent("account_missing", f"no local {self.system} account {account.external_id}")
        return Outcome.applied(account.external_id, message="disable applied")

    def list_accounts(self, *, cursor: str | None, page_size: int) -> AccountPage:
        """Keyset on id, one query a page: one row more than the page tells whether another page follows."""
        rows = LocalTargetAccount.objects.filter(system=self.system).order_by("id")
        if cursor is not None:
            rows = rows.filter(id__gt=int(cursor))
        rows = list(rows[:page_size + 1])
        page, more = rows[:page_size], len(rows) > page_size
        return AccountPage(accounts=[self._account(row) for row in page],
                           next_cursor=str(page[-1].id) if more else None)

    def lookup_accounts(self, keys: list[str]) -> list[TargetAccount]:
        rows = LocalTargetAccount.objects.filter(system=self.system, employee_number__in=set(keys)).order_by("id")
        return [self._account(row) for row in rows]

    def _account(self, row: LocalTargetAccount) -> TargetAccount:
        return TargetAccount(
            external_id=row.external_id, key=row.employee_number, email=row.email, full_name=row.full_name,
            phone_number=row.mobile, department_code=row.department_code if self.holds_department else None,
            active=row.active,
        )


class LocalIdaasBackend(LocalBackend):
    system = "idaas"


class LocalMailboxBackend(LocalBackend):
    system = "email"
    holds_department = False


class LocalWelinkBackend(LocalBackend):
    """Like WeLink, optionally asynchronous: the first call submits, a later poll finds the account open."""

    system = "welink"

    def ensure_account(self, person: PersonSnapshot, state: dict) -> Outcome:
        if settings.LOCAL_WELINK_ASYNC and state.get("polls", 0) < settings.LOCAL_WELINK_ASYNC_POLLS:
            if not state.get("submitted"):
                injected = self._inject(person, state)
                if injected is not None:
                    return injected
            return Outcome.in_progress(code="47100", message="account opening in progress",
                                       state={**state, "submitted": True, "polls": state.get("polls", 0) + 1})
        return super().ensure_account(person, state)

    def apply_change(self, person: PersonSnapshot, change: AccountChange, state: dict) -> Outcome:
        if settings.LOCAL_WELINK_ASYNC and state.get("polls", 0) < settings.LOCAL_WELINK_ASYNC_POLLS:
            if not state.get("submitted"):
                injected = self._inject(person, state)
                if injected is not None:
                    return injected
                if not LocalTargetAccount.objects.filter(system=self.system,
                                                         external_id=change.external_id).exists():
                    return Outcome.permanent("account_missing",
                                             f"no local {self.system} account {change.external_id}")
            return Outcome.in_progress(code="47104", message=f"{change.operation} in progress",
                                       state={**state, "submitted": True, "polls": state.get("polls", 0) + 1})
        return super().apply_change(person, change, state)


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class LocalHrBackend(HrSourceBackend):
    """Serves persons from the JSON file LOCAL_HR_PERSONS_FILE (a list of objects); nothing without one."""

    def fetch_changed_persons(self, *, updated_after: str | None, after_id: int | None, limit: int) -> HrPage:
        path = getattr(settings, "LOCAL_HR_PERSONS_FILE", "")
        if not path:
            return HrPage(persons=[], next_cursor=None)
        persons = json.loads(Path(path).read_text(encoding="utf-8"))

        def key(person):
            # Malformed records sort first and reach the sync, which skips and counts them.
            updated = parse_datetime(str(person.get("last_update_date") or "")) or EPOCH
            try:
                return updated, int(person.get("person_id"))
            except (TypeError, ValueError):
                return updated, -1

        persons.sort(key=key)
        if updated_after is not None:
            cursor = (parse_datetime(updated_after), after_id if after_id is not None else -1)
            persons = [p for p in persons if key(p) > cursor]
        page = persons[:limit]
        next_cursor = None
        if len(persons) > limit:
            updated, person_id = key(page[-1])
            next_cursor = (updated.isoformat(), person_id)
        return HrPage(persons=page, next_cursor=next_cursor)
