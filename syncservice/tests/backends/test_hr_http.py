"""The incremental HR sync over HTTP against the HR simulator: paging, watermark, overlap, HR as master."""

import datetime as dt

import pytest
from django.utils import timezone

from syncservice.backends.hr_http import HrSourceError
from syncservice.models import AccountCreationRequestItem, HrPerson, HrSyncState
from syncservice.services.sync import HR_OVERLAP, run_sync_stage, sync_hr_source
from syncservice.tests.fixtures import note_example

from .conftest import HR_TOKEN

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def add_persons(hr_sim, count: int, *, start: int = 1, at=T0, step=dt.timedelta(minutes=1)):
    return [hr_sim.upsert_person(person_id=1000 + i, employee_number=f"HR{i:04d}", full_name=f"员工{i}",
                                 telephone_number1=f"1390000{i:04d}", person_type="正式",
                                 employee_status="在职", tenant_id="T1",
                                 person_dept=[{"department_code": "D001", "partner_company": "",
                                               "country": "中国"}],
                                 last_update_date=at + step * (i - start))
            for i in range(start, start + count)]


def watermark():
    state = HrSyncState.objects.get(name="default")
    return state.watermark_updated_at, state.watermark_person_id


def test_pages_are_read_by_cursor_until_the_end(hr_sim):
    add_persons(hr_sim, 5)

    synced, note = sync_hr_source(page_size=2)

    assert synced == 5
    assert [q.get("after_id") for q in hr_sim.requests] == [None, "1002", "1004"]
    assert all(q["limit"] == "2" for q in hr_sim.requests)
    assert "updated_after" not in hr_sim.requests[0]   # first run: no watermark yet
    assert HrPerson.objects.filter(created_by="hr_sync").count() == 5
    person = HrPerson.objects.get(employee_number="HR0003")
    assert person.person_id == 1003
    assert person.full_name == "员工3"
    assert person.telephone_number1 == "13900000003"
    assert person.person_dept == [{"department_code": "D001", "partner_company": "", "country": "中国"}]
    assert person.email
    assert person.accounts.count() == 3
    assert watermark() == (T0 + dt.timedelta(minutes=4), 1005)


def test_persons_sharing_one_timestamp_across_a_page_boundary_are_all_read(hr_sim):
    add_persons(hr_sim, 5, step=dt.timedelta(0))

    synced, _ = sync_hr_source(page_size=2)

    assert synced == 5
    assert HrPerson.objects.count() == 5


def test_watermark_advances_only_after_the_whole_run_succeeds(hr_sim):
    add_persons(hr_sim, 4)
    hr_sim.faults.fail(1, status=500, path="/persons", skip=1, body={"code": "db_down", "message": "try later"})

    with pytest.raises(HrSourceError, match="db_down"):
        sync_hr_source(page_size=2)

    state = HrSyncState.objects.get(name="default")
    assert state.watermark_updated_at is None
    assert "try later" in state.last_error
    assert state.last_success_at is None

    synced, _ = sync_hr_source(page_size=2)

    assert synced == 4
    assert watermark() == (T0 + dt.timedelta(minutes=3), 1004)
    assert HrSyncState.objects.get(name="default").last_error == ""


def test_next_run_rereads_the_overlap_window_and_picks_up_late_commits(hr_sim):
    add_persons(hr_sim, 3)
    sync_hr_source(page_size=10)
    mark, _ = watermark()
    # Two changes committed late, stamped before the watermark: one inside the window, one outside.
    hr_sim.upsert_person(person_id=2001, employee_number="LATE1", full_name="晚到一",
                         last_update_date=mark - dt.timedelta(minutes=2))
    hr_sim.upsert_person(person_id=2002, employee_number="LATE2", full_name="晚到二",
                         last_update_date=mark - HR_OVERLAP - dt.timedelta(minutes=1))
    hr_sim.requests.clear()

    sync_hr_source(page_size=10)

    asked = dt.datetime.fromisoformat(hr_sim.requests[0]["updated_after"])
    assert asked == mark - HR_OVERLAP
    assert HrPerson.objects.filter(employee_number="LATE1").exists()
    assert not HrPerson.objects.filter(employee_number="LATE2").exists()
    assert watermark() == (mark, 1003)   # re-read records never move the watermark back


def test_transient_failures_of_a_page_are_retried_within_the_run(hr_sim, backend_settings):
    backend_settings.HR_HTTP_RETRIES = 2
    add_persons(hr_sim, 2)
    hr_sim.faults.fail(2, status=503, path="/persons", retry_after=0)

    synced, _ = sync_hr_source(page_size=10)

    assert synced == 2
    assert hr_sim.calls_to("/persons") == 3


def test_timeout_and_refused_connection_fail_the_run_without_moving_the_watermark(
        hr_sim, backend_settings, closed_port_url):
    add_persons(hr_sim, 1)
    backend_settings.TARGET_HTTP_TIMEOUT_SECONDS = 0.3
    hr_sim.faults.delay(1.0, path="/persons")

    with pytest.raises(HrSourceError, match="timeout"):
        sync_hr_source(page_size=10)
    backend_settings.HR_API_URL = closed_port_url
    with pytest.raises(HrSourceError, match="connection_error"):
        sync_hr_source(page_size=10)

    assert HrSyncState.objects.get(name="default").watermark_updated_at is None


def test_wrong_token_fails_the_run_and_the_error_does_not_show_the_token(hr_sim, backend_settings):
    backend_settings.HR_API_TOKEN = "not-the-hr-token"

    with pytest.raises(HrSourceError) as raised:
        sync_hr_source(page_size=10)

    assert "401" in str(raised.value)
    assert "not-the-hr-token" not in str(raised.value)
    assert HR_TOKEN not in str(raised.value)


def test_api_submission_never_overwrites_hr_master_data(hr_sim, hr_caller):
    hr_sim.upsert_person(person_id=3001, employee_number="TEST001", full_name="张三丰", telephone_number1="13911110000",
                         last_update_date=T0)
    sync_hr_source(page_size=10)

    response = hr_caller.submit(note_example())   # TEST001 is 张三 / 13800138001 in the API's version
    assert response.status_code == 202
    run_sync_stage()

    person = HrPerson.objects.get(employee_number="TEST001")
    assert person.full_name == "张三丰"
    assert person.telephone_number1 == "13911110000"
    assert person.last_updated_by == "hr_sync"
    item = AccountCreationRequestItem.objects.get(employee_number="TEST001")
    assert item.hr_person == person


def test_hr_takes_over_a_person_first_submitted_through_the_api(hr_sim, hr_caller):
    assert hr_caller.submit(note_example()).status_code == 202
    run_sync_stage()
    submitted = HrPerson.objects.get(employee_number="TEST002")
    assert submitted.created_by == "account_creation_api"
    hr_sim.upsert_person(person_id=3002, employee_number="TEST002", full_name="李四（HR）",
                         telephone_number1="13922220000", last_update_date=timezone.now())

    sync_hr_source(page_size=10)
    assert hr_caller.submit(note_example(businessKey="BATCH-2")).status_code == 202
    run_sync_stage()

    person = HrPerson.objects.get(employee_number="TEST002")
    assert person.full_name == "李四（HR）"
    assert person.telephone_number1 == "13922220000"
    assert person.person_id == 3002
    assert person.email == submitted.email   # the allocated address stays
