"""A person's other accounts wait for their mailbox, so that every target holds the address it confirmed.

The mail system is the one target that may refuse an address (someone outside the service holds it):
the person then moves to the next candidate (`zhangsan` → `zhangsan2`). IDaaS and WeLink tasks are opened
`blocked` while the person's mailbox is on its way and are released when it exists, reading the person's
address at their claim; when the mailbox fails for good they fail with that reason instead of creating
accounts under an address nobody holds.
"""

import datetime as dt

from django.conf import settings
from django.utils import timezone

from ..db.bulk import update_from_arrays
from ..db.locking import skip_locked
from ..models import Account, AccountCreationTask, System
from .rollup import rollup_items_for_persons

Task = AccountCreationTask
MAILBOX = System.EMAIL
MAILBOX_FAILED = "mailbox_failed"
# A mailbox task that may still succeed (a mailbox task is never blocked itself).
ON_ITS_WAY = (Task.Status.PENDING, Task.Status.RUNNING, Task.Status.WAITING)


def waits_for_mailbox() -> bool:
    """Whether a person's other accounts wait for their mailbox: only where mailboxes are provisioned."""
    return MAILBOX in settings.PROVISIONING_SYSTEMS


def persons_with_mailbox_coming(opening) -> set[int]:
    """Of the (person, system) keys about to be opened, the persons whose mailbox is on its way: opened with
    them, or by a task still open."""
    persons = {person for person, _ in opening}
    opened_now = {person for person, system in opening if system == MAILBOX}
    still_open = set(Task.objects.filter(person_id__in=persons - opened_now, system=MAILBOX, status__in=ON_ITS_WAY)
                     .values_list("person_id", flat=True))
    return opened_now | still_open


def opened_status(*, person_id: int, system: str, mailbox_coming: set[int]) -> str:
    """The status a new task starts in: `blocked` while the person's mailbox is on its way, else `pending`."""
    if waits_for_mailbox() and system != MAILBOX and person_id in mailbox_coming:
        return Task.Status.BLOCKED
    return Task.Status.PENDING


def settle_blocked_tasks(*, person_ids, now: dt.datetime) -> set[int]:
    """Release or fail the blocked tasks of these persons whose mailbox is no longer on its way.

    Pending (due at once) when the mailbox exists or none is coming, failed with the mailbox's reason when
    it failed for good. Returns the persons whose tasks failed, for the roll-up. Rows another transaction
    holds are left to the next look.
    """
    blocked = list(skip_locked(Task.objects.filter(person_id__in=set(person_ids), status=Task.Status.BLOCKED)
                               .order_by("id")))
    if not blocked:
        return set()
    persons = {task.person_id for task in blocked}
    coming = set(Task.objects.filter(person_id__in=persons, system=MAILBOX, status__in=ON_ITS_WAY)
                 .values_list("person_id", flat=True))
    mailboxes = {person_id: (status, message) for person_id, status, message in Account.objects.filter(
        person_id__in=persons, system=MAILBOX).values_list("person_id", "status", "error_message")}
    released, failed = [], []
    for task in blocked:
        if task.person_id in coming:
            continue
        status, _ = mailboxes.get(task.person_id, (None, ""))
        (failed if status == Account.Status.FAILED else released).append(task)
    if released:
        Task.objects.filter(pk__in=[t.pk for t in released]).update(
            status=Task.Status.PENDING, next_attempt_at=now, updated_at=now)
    if failed:
        messages = [f"邮箱账号未能开通，未创建此账号：{mailboxes[t.person_id][1] or '邮箱账号开通失败'}"
                    for t in failed]
        update_from_arrays(Task, match={"id": [t.pk for t in failed]}, values={"last_error": messages},
                           constants={"status": Task.Status.FAILED, "last_error_code": MAILBOX_FAILED,
                                      "finished_at": now, "updated_at": now})
        update_from_arrays(Account, match={"person": [t.person_id for t in failed],
                                           "system": [t.system for t in failed]},
                           values={"error_message": [f"[{MAILBOX_FAILED}] {m}" for m in messages]},
                           constants={"status": Account.Status.FAILED, "updated_at": now})
    return {task.person_id for task in failed}


def settle_stranded_blocked_tasks(*, limit: int = 500) -> int:
    """The safety net: blocked tasks whose mailbox task ended while they were being opened (a concurrent
    create_account_tasks committed after the mailbox's result) are settled here; return how many persons."""
    open_mailbox = Task.objects.filter(system=MAILBOX, status__in=ON_ITS_WAY)
    persons = list(Task.objects.filter(status=Task.Status.BLOCKED).exclude(
        person_id__in=open_mailbox.values("person_id")).values_list("person_id", flat=True).distinct()[:limit])
    if persons:
        rollup_items_for_persons(settle_blocked_tasks(person_ids=persons, now=timezone.now()))
    return len(persons)
