"""bulk_update_rows writes what bulk_update would, in one statement on PostgreSQL."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from syncservice.models import AccountCreationTask, HrPerson
from syncservice.services.bulk import bulk_update_rows

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
