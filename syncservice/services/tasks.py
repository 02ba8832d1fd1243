"""Stage 2, create_account_tasks: one task per (person, system) that still needs an account."""

from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from ..db.bulk import bulk_insert_rows, id_array
from ..db.locking import atomic_with_retry, skip_locked
from ..models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    HrPerson,
    System,
)
from .batches import lock_items_by_request_priority
from .mailbox_first import MAILBOX, opened_status, persons_with_mailbox_coming, waits_for_mailbox
from .rollup import rollup_items_for_persons

Item = AccountCreationRequestItem
Task = AccountCreationTask


@dataclass
class TaskStageResult:
    items_processed: int = 0
    tasks_created: int = 0
    items_already_done: int = 0
    hr_tasks_created: int = 0

    def as_counts(self) -> dict:
        return dict(self.__dict__)


def _open_task_keys(person_ids) -> set[tuple[int, str]]:
    return set(Task.objects.filter(person_id__in=person_ids, status__in=Task.OPEN_STATUSES)
               .values_list("person_id", "system"))


def _start_tasks(wanted: dict[tuple[int, str], tuple[int | None, int]],
                 accounts: dict[tuple[int, str], tuple[int, str]]) -> int:
    """Create tasks for (person, system) → (request item, priority) and mark their accounts creating.

    `accounts` maps (person, system) to (account id, status) for the persons concerned.
    """
    if not wanted:
        return 0
    now = timezone.now()
    max_attempts = settings.TASK_MAX_ATTEMPTS
    missing = [Account(person_id=p, system=s, created_at=now, updated_at=now) for p, s in wanted
               if (p, s) not in accounts]
    # A concurrent copy may open the same task: one open task is what we want, so conflicts are skipped.
    mailbox_coming = persons_with_mailbox_coming(wanted)
    bulk_insert_rows([
        Task(person_id=p, system=s, status=opened_status(person_id=p, system=s, mailbox_coming=mailbox_coming),
             request_item_id=item_id, priority=priority, max_attempts=max_attempts, next_attempt_at=now,
             created_at=now, updated_at=now)
        for (p, s), (item_id, priority) in wanted.items()
    ], ignore_conflicts=True)
    bulk_insert_rows(missing, ignore_conflicts=True)
    marked = Q(pk__in=[accounts[key][0] for key in wanted if key in accounts])
    if missing:
        for system in {s for _, s in wanted}:
            marked |= Q(system=system, person_id__in=[p for p, s in wanted if s == system and (p, s) not in accounts])
    Account.objects.filter(marked).exclude(status=Account.Status.CREATED).update(
        status=Account.Status.CREATING, error_message="", updated_at=now)
    # A failed task of a key that gets a new one (a later request for a person whose account failed) is
    # replaced: it reads `retried`, so that failed tasks and failed accounts count the same failures.
    superseded = Q(pk__in=[])
    for system in {s for _, s in wanted}:
        superseded |= Q(system=system, person_id__in=[p for p, s in wanted if s == system])
    Task.objects.filter(superseded, status=Task.Status.FAILED).update(status=Task.Status.RETRIED, updated_at=now)
    return len(wanted)


def open_creation_tasks(keys) -> int:
    """Creation tasks for these (person, system) keys that have none open (a reconciliation recreating
    accounts a target lost); their accounts read creating. Runs in the caller's transaction."""
    keys = set(keys)
    if not keys:
        return 0
    persons = {person for person, _ in keys}
    taken = _open_task_keys(persons)
    return _start_tasks({key: (None, 0) for key in keys if key not in taken}, _accounts_of(persons))


def _accounts_of(person_ids) -> dict[tuple[int, str], tuple[int, str]]:
    return {(p, s): (pk, status) for pk, p, s, status in
            Account.objects.filter(person_id__in=person_ids).values_list("id", "person_id", "system", "status")}


def _opened_status_sql(task_table: str, account_table: str) -> tuple[str, list]:
    """mailbox_first.opened_status in SQL, for a task opened for item i (request r) and system s: `blocked`
    when it is not the mailbox and the person's mailbox is being created (an open task) or is asked for by
    the same request and does not exist yet; else `pending`."""
    if not waits_for_mailbox():
        return "%s", [Task.Status.PENDING]
    return (
        f"CASE WHEN s.system <> %s AND ((r.system_list ? %s AND (SELECT a.status FROM {account_table} a"
        f" WHERE a.person_id = i.hr_person_id AND a.system = %s) IS DISTINCT FROM %s)"
        f" OR EXISTS (SELECT 1 FROM {task_table} t WHERE t.person_id = i.hr_person_id AND t.system = %s"
        f" AND t.status = ANY(%s))) THEN %s ELSE %s END",
        [MAILBOX, MAILBOX, MAILBOX, Account.Status.CREATED, MAILBOX, list(Task.OPEN_STATUSES),
         Task.Status.BLOCKED, Task.Status.PENDING],
    )


def _tasks_for_items_batch(batch_size: int) -> tuple[int, int, int]:
    items = lock_items_by_request_priority(Item.Status.SYNCED, batch_size, fields=("request_id", "hr_person_id"))
    if not items:
        return 0, 0, 0
    if connection.vendor == "postgresql":
        opened_by = _start_tasks_for_items([item.pk for item in items])
    else:
        opened_by = _start_tasks_for_items_orm(items)
    created = sum(opened_by.values())
    # Items that needed no new task may be done already: their accounts exist, or another request's tasks
    # ended. (An item with a task just opened cannot be.)
    done = rollup_items_for_persons({item.hr_person_id for item in items if item.pk not in opened_by})
    return len(items), created, done


def _start_tasks_for_items(item_ids: list[int]) -> dict[int, int]:
    """Open the tasks the locked items want, mark their accounts creating and the items task_created, in
    one statement; return the number of tasks opened per item.

    A (person, system) gets a task when its account is not created yet and no task is open for it; the
    task carries the first item wanting it in batch order (highest-priority request, then lowest id) and
    that request's priority. A concurrent copy may open the same task first: the partial unique index
    says so and the row is skipped (ON CONFLICT DO NOTHING), so only tasks opened here are returned, and
    only their accounts are marked (created where missing, in (person, system) order to keep lock
    order the same in every copy).
    """
    now = timezone.now()
    task_table, item_table = Task._meta.db_table, Item._meta.db_table
    request_table, account_table = AccountCreationRequest._meta.db_table, Account._meta.db_table
    # The systems a request may list, as a constant array: its size is known to the planner, unlike the
    # rows of jsonb_array_elements (estimated at 100 each, enough to turn JIT compilation on).
    systems = sorted({*System.values, *settings.PROVISIONING_SYSTEMS})
    ids = id_array(item_ids)  # one literal: the driver would adapt a list element by element
    status_sql, status_params = _opened_status_sql(task_table, account_table)
    with connection.cursor() as cursor:
        cursor.execute(
            # The batch first (materialized): joined from the requests' side, PostgreSQL would walk every
            # request's items to find the batch's, a cost growing with the backlog.
            f"WITH batch AS MATERIALIZED ("
            f" SELECT id, hr_person_id, request_id FROM {item_table} WHERE id = ANY(%s::bigint[])"
            f"), opened AS ("
            f" INSERT INTO {task_table} (person_id, system, status, request_item_id, priority, attempts,"
            f" max_attempts, next_attempt_at, lease_expires_at, locked_by, lease_token, backend_state,"
            f" last_error_code, last_error, created_at, updated_at, finished_at)"
            f" SELECT DISTINCT ON (i.hr_person_id, s.system) i.hr_person_id, s.system, {status_sql}, i.id,"
            f" r.priority, 0,"
            f" %s, %s, NULL, '', '', '{{}}'::jsonb, '', '', %s, %s, NULL"
            f" FROM batch i JOIN {request_table} r ON r.id = i.request_id"
            f" JOIN unnest(%s::text[]) AS s(system) ON r.system_list ? s.system"
            f" WHERE NOT EXISTS (SELECT 1 FROM {account_table} a WHERE a.person_id = i.hr_person_id"
            f" AND a.system = s.system AND (a.status = %s OR NOT a.enabled))"
            f" ORDER BY i.hr_person_id, s.system, r.priority DESC, r.created_at, r.id, i.id"
            f" ON CONFLICT DO NOTHING RETURNING person_id, system, request_item_id"
            # The sync stage created every person's default accounts: update those (an upsert costs twice
            # as much), and insert only the ones missing (a system outside the defaults).
            f"), marked AS ("
            f" UPDATE {account_table} a SET status = %s, error_message = '', updated_at = %s FROM opened o"
            f" WHERE a.person_id = o.person_id AND a.system = o.system AND a.status <> %s"
            f"), missing AS ("
            f" INSERT INTO {account_table} (person_id, system, status, external_id, error_message, created_at,"
            f" updated_at) SELECT o.person_id, o.system, %s, '', '', %s, %s FROM opened o WHERE NOT EXISTS"
            f" (SELECT 1 FROM {account_table} a WHERE a.person_id = o.person_id AND a.system = o.system)"
            f" ORDER BY o.person_id, o.system ON CONFLICT DO NOTHING"
            # A failed task of a (person, system) that gets a new one is replaced (see _start_tasks).
            f"), superseded AS ("
            f" UPDATE {task_table} t SET status = %s, updated_at = %s FROM opened o"
            f" WHERE t.person_id = o.person_id AND t.system = o.system AND t.status = %s"
            f"), done AS (UPDATE {item_table} SET status = %s, updated_at = %s WHERE id = ANY(%s::bigint[]))"
            f" SELECT request_item_id, count(*) FROM opened GROUP BY request_item_id",
            [ids, *status_params, settings.TASK_MAX_ATTEMPTS, now, now, now, systems, Account.Status.CREATED,
             Account.Status.CREATING, now, Account.Status.CREATED, Account.Status.CREATING, now, now,
             Task.Status.RETRIED, now, Task.Status.FAILED, Item.Status.TASK_CREATED, now, ids],
        )
        return dict(cursor.fetchall())


def _start_tasks_for_items_orm(items: list) -> dict[int, int]:
    """`_start_tasks_for_items` for databases without it (SQLite): the same choices, made in Python."""
    requests = {r.pk: r for r in AccountCreationRequest.objects.filter(pk__in={i.request_id for i in items})
                .only("id", "system_list", "priority")}
    person_ids = {item.hr_person_id for item in items}
    accounts = _accounts_of(person_ids)
    disabled = set(Account.objects.filter(person_id__in=person_ids, enabled=False).values_list("person_id", "system"))
    open_tasks = _open_task_keys(person_ids)
    wanted: dict[tuple[int, str], tuple[int, int]] = {}
    opened_by: dict[int, int] = {}
    for item in items:
        request = requests[item.request_id]
        for system in request.system_list:
            key = (item.hr_person_id, system)
            created = accounts.get(key, (None, ""))[1] == Account.Status.CREATED
            if created or key in disabled or key in open_tasks or key in wanted:
                continue
            wanted[key] = (item.pk, request.priority)
            opened_by[item.pk] = opened_by.get(item.pk, 0) + 1
    _start_tasks(wanted, accounts)
    Item.objects.filter(pk__in=[item.pk for item in items]).update(
        status=Item.Status.TASK_CREATED, updated_at=timezone.now())
    return opened_by


def create_tasks_for_request_items(*, limit: int | None = None) -> TaskStageResult:
    result = TaskStageResult()
    batch_size = settings.STAGE_BATCH_SIZE
    while limit is None or result.items_processed < limit:
        size = batch_size if limit is None else min(batch_size, limit - result.items_processed)
        items, tasks, done = atomic_with_retry(lambda: _tasks_for_items_batch(size),
                                               retry_on=(IntegrityError, OperationalError))
        if not items:
            break
        result.items_processed += items
        result.tasks_created += tasks
        result.items_already_done += done
    return result


def _hr_accounts_needing_tasks():
    """Accounts of HR-synced persons, in the default systems, never attempted, with no open task, and
    wanted (not a leaver's)."""
    open_task = Task.objects.filter(person_id=OuterRef("person_id"), system=OuterRef("system"),
                                    status__in=Task.OPEN_STATUSES)
    return Account.objects.filter(
        status=Account.Status.NOT_CREATED, system__in=settings.HR_DEFAULT_SYSTEMS, enabled=True,
        person__created_by=HrPerson.CreatedBy.HR_SYNC,
    ).exclude(Exists(open_task))


def _tasks_for_hr_batch(batch_size: int) -> int:
    accounts = list(skip_locked(_hr_accounts_needing_tasks().order_by("id"))[:batch_size])
    # A person's accounts go in one batch, so that their mailbox's task is opened with the others.
    seen = {a.pk for a in accounts}
    accounts += [a for a in skip_locked(_hr_accounts_needing_tasks().filter(
        person_id__in={a.person_id for a in accounts}).order_by("id")) if a.pk not in seen]
    return _start_tasks({(a.person_id, a.system): (None, 0) for a in accounts},
                        {(a.person_id, a.system): (a.pk, a.status) for a in accounts})


def create_tasks_for_hr_persons(*, limit: int | None = None) -> int:
    total = 0
    batch_size = settings.STAGE_BATCH_SIZE
    while limit is None or total < limit:
        size = batch_size if limit is None else min(batch_size, limit - total)
        created = atomic_with_retry(lambda: _tasks_for_hr_batch(size), retry_on=(IntegrityError, OperationalError))
        if not created:
            break
        total += created
    return total


def run_task_creation_stage(*, dry_run: bool = False, limit: int | None = None) -> TaskStageResult:
    if dry_run:
        result = TaskStageResult()
        result.items_processed = Item.objects.filter(
            status=Item.Status.SYNCED, request__status=AccountCreationRequest.Status.PROCESSING).count()
        result.hr_tasks_created = _hr_accounts_needing_tasks().count()
        return result
    result = create_tasks_for_request_items(limit=limit)
    result.hr_tasks_created = create_tasks_for_hr_persons(limit=limit)
    return result
