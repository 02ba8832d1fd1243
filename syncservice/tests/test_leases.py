"""Leased slots (syncservice.db.leases): a holder keeps its slot by renewal, and learns when it lost it."""

import time

import pytest
from django.db import connection

from syncservice.db import leases
from syncservice.models import Lease

from .fixtures import requires_postgres

pytestmark = [pytest.mark.django_db(transaction=True), requires_postgres]


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_held_lease_is_renewed_past_its_length_and_freed_on_release(settings):
    settings.LEASE_SECONDS = 0.6
    with leases.singleton("test-renewal") as held:
        assert held is not None
        first_expiry = Lease.objects.get(scope="test-renewal").expires_at
        time.sleep(2.0)  # more than three lease lengths: only the renewals keep it
        assert wait_until(lambda: Lease.objects.get(scope="test-renewal").expires_at > first_expiry)
        assert leases.still_held(held)
        assert leases.try_take("test-renewal") is None  # a second holder is refused all along
    # Released: the next holder takes it at once, without waiting for an expiry.
    again = leases.try_take("test-renewal")
    assert again is not None
    leases.release(again)
    assert Lease.objects.get(scope="test-renewal").holder == ""


def test_a_holder_whose_lease_was_taken_over_knows_it(settings):
    settings.LEASE_SECONDS = 0.6
    held = leases.try_take("test-lost")
    assert held is not None
    # A stall longer than the lease: it expires, and another process takes the slot.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE syncservice_lease SET expires_at = clock_timestamp() - interval '1 second', "
                       "holder = 'elsewhere:1:abc' WHERE scope = 'test-lost'")
    assert wait_until(lambda: held.lost)
    assert not leases.still_held(held)
    leases.release(held)  # gives back nothing: the slot is the other holder's
    assert Lease.objects.get(scope="test-lost").holder == "elsewhere:1:abc"


def test_a_write_fenced_by_a_lease_moves_nothing_once_the_lease_is_someone_elses(settings):
    from syncservice.models import HrSyncState

    state = HrSyncState.objects.create(name="fenced")
    with leases.singleton("test-fence") as held:
        assert HrSyncState.objects.filter(pk=state.pk).filter(leases.held_q(held)).update(last_error="mine") == 1
        Lease.objects.filter(scope="test-fence").update(holder="elsewhere:2:def")
        assert HrSyncState.objects.filter(pk=state.pk).filter(leases.held_q(held)).update(last_error="late") == 0
    state.refresh_from_db()
    assert state.last_error == "mine"


def test_an_hr_sync_that_lost_its_lease_mid_run_leaves_the_watermark_alone(monkeypatch):
    from syncservice.backends.base import HrPage
    from syncservice.models import HrSyncState
    from syncservice.services import sync

    class StallingSource:
        def fetch_changed_persons(self, **kwargs):
            # A long stall: the lease expired and another copy took it while this one read the source.
            Lease.objects.filter(scope=sync.HR_SYNC_LOCK).update(holder="elsewhere:3:ghi")
            return HrPage(persons=[], next_cursor=None)

    monkeypatch.setattr(sync, "get_hr_backend", StallingSource)

    synced, note = sync.sync_hr_source()

    assert (synced, note) == (0, "HR sync: 0 person(s), lease lost: watermark not moved")
    assert HrSyncState.objects.get(name="default").last_success_at is None
