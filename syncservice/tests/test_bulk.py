"""bulk_update_rows writes what bulk_update would, in one statement on PostgreSQL."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from syncservice.db.bulk import bulk_update_rows
from syncservice.models import AccountCreationTask, HrPerson

pytestmark = pytest.mark.django_db


def test_bulk_update_rows_writes_every_field_of_every_row():
    person = HrPerson.objects.create(person_id=1, employee_number="E1", full_name="张三", created_by="hr_sync",
                                     last_updated_by="hr_sync")
    tasks = [AccountCreationTask.objects.create(person=person, system=system)
             for system in ("idaas", "welink", "email")]
    now = timezone.now()
    for index, task in enumerate(tasks):
        task.status = "failed" if index else "succeeded"
        task.backend_state = {"note": f"50% done, 'quoted' \"twice\" {index}", "n": [index]}
        task.last_error = "" if not index else f"错误 {index}; DROP TABLE x;--"
        task.finished_at = now
        task.lease_expires_at = None

    with CaptureQueriesContext(connection) as context:
        bulk_update_rows(tasks, ["status", "backend_state", "last_error", "finished_at", "lease_expires_at"])

    if connection.vendor == "postgresql":
        assert len(context) == 1
    for index, task in enumerate(AccountCreationTask.objects.order_by("id")):
        assert task.status == ("failed" if index else "succeeded")
        assert task.backend_state == {"note": f"50% done, 'quoted' \"twice\" {index}", "n": [index]}
        assert task.last_error == ("" if not index else f"错误 {index}; DROP TABLE x;--")
        assert task.finished_at == now


def test_bulk_update_rows_of_nothing_does_nothing():
    assert bulk_update_rows([], ["status"]) == 0


TRICKY_TEXT = ["", "NULL", "null", "a,b", "{x}", 'say "hi"', "back\\slash\\", "\\\"", "  spaced  ", "多语言 ✓ 🎉",
               "line\nbreak\ttab", "'; DROP TABLE x;--"]


def test_array_writes_round_trip_every_awkward_value():
    """Columns travel as array literals: quoting, NULLs, JSON and time zones must come back unchanged."""
    from syncservice.db.bulk import insert_from_arrays, update_from_arrays
    from syncservice.models import Account

    person = HrPerson.objects.create(person_id=2, employee_number="E2", full_name="李四", created_by="hr_sync",
                                     last_updated_by="hr_sync")
    tasks = [AccountCreationTask.objects.create(person=person, system="idaas", status="failed")
             for _ in TRICKY_TEXT]
    when = timezone.now().replace(microsecond=123456)
    states = [{"text": text, "nested": [text, None, {"k": text}]} for text in TRICKY_TEXT]
    written = update_from_arrays(
        AccountCreationTask, match={"id": [t.pk for t in tasks]},
        values={"last_error": TRICKY_TEXT, "backend_state": states,
                "finished_at": [when if i % 2 else None for i in range(len(tasks))]},
        constants={"last_error_code": "x\"y"}, where={"status": "failed"}, returning="id")
    assert sorted(written) == sorted(t.pk for t in tasks)
    for index, task in enumerate(AccountCreationTask.objects.order_by("id")):
        assert task.last_error == TRICKY_TEXT[index]
        assert task.backend_state == states[index]
        assert task.finished_at == (when if index % 2 else None)
        assert task.last_error_code == 'x"y'

    insert_from_arrays(Account, {"person": [person.pk] * 3, "system": ["idaas", "welink", "email"],
                                 "error_message": TRICKY_TEXT[-3:]},
                       constants={"status": "failed", "external_id": "", "created_at": when, "updated_at": when})
    assert list(Account.objects.order_by("id").values_list("system", "error_message")) == list(
        zip(["idaas", "welink", "email"], TRICKY_TEXT[-3:]))


def test_the_where_condition_fences_rows_off():
    from syncservice.db.bulk import update_from_arrays

    person = HrPerson.objects.create(person_id=3, employee_number="E3", full_name="王五", created_by="hr_sync",
                                     last_updated_by="hr_sync")
    running = AccountCreationTask.objects.create(person=person, system="idaas", status="running", lease_token="t1")
    other = AccountCreationTask.objects.create(person=person, system="welink", status="running", lease_token="t2")
    written = update_from_arrays(
        AccountCreationTask, match={"id": [running.pk, other.pk], "lease_token": ["t1", "stale"]},
        values={"status": ["succeeded", "succeeded"]}, constants={"lease_token": ""}, where={"status": "running"},
        returning="id")
    assert written == [running.pk]
    assert AccountCreationTask.objects.get(pk=other.pk).status == "running"
    assert AccountCreationTask.objects.get(pk=running.pk).lease_token == ""
