"""Stage 1, sync_hr_persons: buffered request items become HrPersons; then the incremental HR sync."""

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..backends import get_hr_backend
from ..db import leases
from ..db.bulk import bulk_update_rows
from ..db.locking import atomic_with_retry, skip_locked
from ..models import Account, AccountCreationRequest, AccountCreationRequestItem, HrPerson, HrSyncState
from .account_changes import is_leaver, open_changes, set_enabled
from .batches import lock_items_by_request_priority
from .deactivation import deactivate_pending_items
from .email_address import allocate_email_addresses
from .lifecycle import cancel_unstarted_creations
from .rollup import rollup_items_for_persons

logger = logging.getLogger(__name__)

API = HrPerson.CreatedBy.API
HR_SYNC = HrPerson.CreatedBy.HR_SYNC
HR_OVERLAP = dt.timedelta(minutes=5)
HR_SYNC_LOCK = "syncservice.hr_sync"
# Requests claimed per transaction and persons per HR page, at most: STAGE_BATCH_SIZE counts items, and a
# larger item batch is no reason to claim more requests at once or to ask the HR source for bigger pages.
PAGE_LIMIT = 500


@dataclass
class SyncStageResult:
    requests_claimed: int = 0
    items_synced: int = 0
    persons_created: int = 0
    persons_updated: int = 0
    hr_persons_synced: int = 0
    deactivation_items: int = 0
    hr_sync_note: str = ""

    def as_counts(self) -> dict:
        return {
            "requests_claimed": self.requests_claimed, "items_synced": self.items_synced,
            "persons_created": self.persons_created, "persons_updated": self.persons_updated,
            "hr_persons_synced": self.hr_persons_synced, "deactivation_items": self.deactivation_items,
        }


def claim_pending_requests(*, limit: int | None = None) -> int:
    """Mark pending requests processing, highest priority first; a short transaction, skipping locked rows."""
    def claim():
        queryset = skip_locked(
            AccountCreationRequest.objects.filter(status=AccountCreationRequest.Status.PENDING)
            .order_by("-priority", "created_at", "id")
        )
        ids = list(queryset.values_list("id", flat=True)[: limit or min(settings.STAGE_BATCH_SIZE, PAGE_LIMIT)])
        if ids:
            AccountCreationRequest.objects.filter(id__in=ids).update(
                status=AccountCreationRequest.Status.PROCESSING, updated_at=timezone.now()
            )
        return len(ids)
    return atomic_with_retry(claim)


def create_default_accounts(persons: list[HrPerson]) -> None:
    """A `not_created` Account per person and system, in one INSERT … SELECT (existing rows are kept)."""
    if not persons:
        return
    systems = settings.PROVISIONING_SYSTEMS
    table, person_table = Account._meta.db_table, HrPerson._meta.db_table
    system_rows = " UNION ALL ".join(["SELECT %s AS system"] * len(systems))
    person_marks = ", ".join(["%s"] * len(persons))
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{table}" (person_id, system, status, external_id, error_message, created_at, updated_at) '
            f"SELECT p.id, s.system, %s, '', '', %s, %s FROM \"{person_table}\" p, ({system_rows}) s "
            f"WHERE p.id IN ({person_marks}) ON CONFLICT DO NOTHING",
            [Account.Status.NOT_CREATED, now, now, *systems, *[p.pk for p in persons]],
        )


def _person_from_item(item: AccountCreationRequestItem, now) -> HrPerson:
    request = item.request
    return HrPerson(
        person_id=settings.API_PERSON_ID_OFFSET + item.pk,
        employee_number=item.employee_number,
        full_name=item.employee_name,
        telephone_number1=item.phone_number,
        person_type=request.account_type,
        employee_status=request.employee_type,
        tenant_id=request.business_key,
        person_dept=[{
            "department_code": item.department_code,
            "partner_company": item.partner_company or "",
            "country": item.country,
        }],
        created_by=API, last_updated_by=API, creation_date=now, last_update_date=now,
    )


# What _person_from_item reads of an item and of its request (the rest stays deferred).
ITEM_FIELDS = ("request_id", "employee_number", "employee_name", "phone_number", "department_code",
               "partner_company", "country")
REQUEST_FIELDS = ("id", "account_type", "employee_type", "business_key")
API_UPDATED_FIELDS = ["full_name", "telephone_number1", "person_type", "employee_status", "tenant_id",
                      "person_dept", "last_updated_by", "last_update_date", "email"]


class _NewPerson:
    """A person about to be inserted from an item, as far as e-mail allocation needs one (on PostgreSQL
    the row itself is built from the item in SQL: no model instance per person)."""

    __slots__ = ("item", "full_name", "employee_number", "email")

    def __init__(self, item: AccountCreationRequestItem):
        self.item, self.full_name, self.employee_number = item, item.employee_name, item.employee_number
        self.email = None


def _sync_items_batch(batch_size: int) -> tuple[int, int, int]:
    now = timezone.now()
    items = lock_items_by_request_priority(AccountCreationRequestItem.Status.PENDING, batch_size,
                                           fields=ITEM_FIELDS)
    if not items:
        return 0, 0, 0
    existing = {p.employee_number: p for p in HrPerson.objects.filter(
        employee_number__in={item.employee_number for item in items})}
    new_persons: dict[str, _NewPerson] = {}
    api_owned: dict[str, AccountCreationRequestItem] = {}
    updated: dict[str, HrPerson] = {}
    for item in items:
        number = item.employee_number
        person = existing.get(number)
        if person is None:
            if number not in new_persons:
                new_persons[number] = _NewPerson(item)
        elif number in updated:
            pass  # the batch's first item of this person decided
        # HR is the master once it knows the person: API values never overwrite its data.
        elif person.last_updated_by == API:
            api_owned[number] = item
            updated[number] = person
        elif not person.email:
            updated[number] = person
    if api_owned:
        _take_item_values({number: existing[number] for number in api_owned}, api_owned, now)
    allocate_email_addresses(list(new_persons.values()) + [p for p in updated.values() if not p.email])
    if updated:
        bulk_update_rows(list(updated.values()), API_UPDATED_FIELDS)
    if connection.vendor == "postgresql":
        created = _insert_persons_and_link_items(list(new_persons.values()), existing, items, now)
    else:
        created = _insert_persons_and_link_items_orm(list(new_persons.values()), existing, items, now)
    if existing:
        _resubmitted(existing, items, now)
    return len(items), created, len(updated)


def _resubmitted(existing: dict[str, HrPerson], items: list[AccountCreationRequestItem], now) -> None:
    """Persons submitted again: a returner's accounts in the request's systems are enabled again (unless HR
    says the person left: HR is the master of its persons), and changed values reach their accounts."""
    systems = dict(AccountCreationRequest.objects.filter(pk__in={i.request_id for i in items})
                   .values_list("id", "system_list"))
    first_item: dict[int, int] = {}
    returning = Q(pk__in=[])
    for item in items:
        person = existing.get(item.employee_number)
        if person is None or person.pk in first_item:
            continue
        first_item[person.pk] = item.pk
        if not is_leaver(person.employee_status):
            returning |= Q(person_id=person.pk, system__in=systems[item.request_id])
    set_enabled(returning, True, now)
    open_changes(first_item, items=first_item, now=now)


def _take_item_values(persons: dict[str, HrPerson], items: dict[str, AccountCreationRequestItem], now) -> None:
    """API-owned persons take the values of their item in this batch (the first one, in batch order)."""
    # A batch holds few requests: fetch each once rather than joining it onto every item.
    requests = {r.pk: r for r in AccountCreationRequest.objects.filter(
        pk__in={item.request_id for item in items.values()}).only(*REQUEST_FIELDS)}
    for number, person in persons.items():
        item = items[number]
        item.request = requests[item.request_id]
        fresh = _person_from_item(item, now)
        for name in API_UPDATED_FIELDS[:-1]:
            setattr(person, name, getattr(fresh, name))


def _insert_persons_and_link_items(new_persons: list[_NewPerson], existing: dict[str, HrPerson],
                                   items: list[AccountCreationRequestItem], now) -> int:
    """Insert the new persons from their items (as _person_from_item would), their default accounts, and
    link every item of the batch to its person, in one statement; return how many persons were inserted.

    A concurrent copy inserting the same employee number or address first breaks a unique constraint:
    the batch's transaction is retried (atomic_with_retry) and finds that person existing.
    """
    person_table, account_table = HrPerson._meta.db_table, Account._meta.db_table
    item_table, request_table = AccountCreationRequestItem._meta.db_table, AccountCreationRequest._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH created AS ("
            f" INSERT INTO {person_table} (person_id, employee_number, full_name, telephone_number1, person_type,"
            f" employee_status, tenant_id, person_dept, email, created_by, last_updated_by, creation_date,"
            f" last_update_date)"
            f" SELECT %s + i.id, i.employee_number, i.employee_name, i.phone_number, r.account_type,"
            f" r.employee_type, r.business_key, jsonb_build_array(jsonb_build_object('department_code',"
            f" i.department_code, 'partner_company', COALESCE(i.partner_company, ''), 'country', i.country)),"
            f" v.email, %s, %s, %s, %s"
            f" FROM unnest(%s::bigint[], %s::text[]) AS v(item_id, email)"
            f" JOIN {item_table} i ON i.id = v.item_id JOIN {request_table} r ON r.id = i.request_id"
            f" ORDER BY i.id RETURNING id, employee_number"
            f"), accounts AS ("
            f" INSERT INTO {account_table} (person_id, system, status, external_id, error_message, created_at,"
            f" updated_at) SELECT c.id, s.system, %s, '', '', %s, %s FROM created c"
            f" CROSS JOIN unnest(%s::text[]) AS s(system) ON CONFLICT DO NOTHING"
            f"), linked AS ("
            f" UPDATE {item_table} t SET hr_person_id = p.id, status = %s, updated_at = %s"
            f" FROM (SELECT id, employee_number FROM created"
            f" UNION ALL SELECT * FROM unnest(%s::bigint[], %s::text[])) AS p(id, employee_number)"
            f" WHERE t.id = ANY(%s) AND t.employee_number = p.employee_number"
            f") SELECT count(*) FROM created",
            [settings.API_PERSON_ID_OFFSET, API, API, now, now,
             [p.item.pk for p in new_persons], [p.email for p in new_persons],
             Account.Status.NOT_CREATED, now, now, list(settings.PROVISIONING_SYSTEMS),
             AccountCreationRequestItem.Status.SYNCED, now,
             [p.pk for p in existing.values()], list(existing), [item.pk for item in items]],
        )
        return cursor.fetchone()[0]


def _insert_persons_and_link_items_orm(new_persons: list[_NewPerson], existing: dict[str, HrPerson],
                                       items: list[AccountCreationRequestItem], now) -> int:
    """`_insert_persons_and_link_items` for databases without it (SQLite), through the ORM."""
    requests = {r.pk: r for r in AccountCreationRequest.objects.filter(
        pk__in={p.item.request_id for p in new_persons}).only(*REQUEST_FIELDS)}
    persons = []
    for new in new_persons:
        new.item.request = requests[new.item.request_id]
        person = _person_from_item(new.item, now)
        person.email = new.email
        persons.append(person)
    created = HrPerson.objects.bulk_create(persons)
    if connection_lacks_returning(created):
        created = list(HrPerson.objects.filter(employee_number__in=[p.employee_number for p in persons]))
    create_default_accounts(created)
    by_number = {**existing, **{p.employee_number: p for p in created}}
    for item in items:
        item.hr_person = by_number[item.employee_number]
        item.status = AccountCreationRequestItem.Status.SYNCED
        item.updated_at = now
    bulk_update_rows(items, ["hr_person", "status", "updated_at"])
    return len(created)


def connection_lacks_returning(created: list[HrPerson]) -> bool:
    return any(p.pk is None for p in created)


def sync_pending_items(*, limit: int | None = None) -> tuple[int, int, int]:
    """Upsert an HrPerson for every pending item of processing requests, in batches; return counts."""
    total_items = total_created = total_updated = 0
    batch_size = settings.STAGE_BATCH_SIZE
    while limit is None or total_items < limit:
        size = batch_size if limit is None else min(batch_size, limit - total_items)
        synced, created, updated = atomic_with_retry(lambda: _sync_items_batch(size),
                                                     retry_on=(IntegrityError, OperationalError))
        if not synced:
            break
        total_items += synced
        total_created += created
        total_updated += updated
    return total_items, total_created, total_updated


# --- Incremental HR sync ------------------------------------------------------------------------

HR_FIELDS = ["person_id", "full_name", "telephone_number1", "person_type", "employee_status", "tenant_id",
             "person_dept"]


def _hr_record(raw: dict) -> dict | None:
    number = str(raw.get("employee_number") or "").strip()
    name = str(raw.get("full_name") or "").strip()
    updated = parse_datetime(str(raw.get("last_update_date") or ""))
    try:
        person_id = int(raw.get("person_id"))
    except (TypeError, ValueError):
        person_id = None
    if not number or not name or updated is None or person_id is None:
        return None
    if timezone.is_naive(updated):
        updated = timezone.make_aware(updated, dt.UTC)
    departments = raw.get("person_dept") or []
    return {
        "person_id": person_id,
        "employee_number": number[:64],
        "full_name": name[:100],
        "telephone_number1": str(raw.get("telephone_number1") or "")[:32],
        "person_type": str(raw.get("person_type") or "")[:64],
        "employee_status": str(raw.get("employee_status") or "")[:64],
        "tenant_id": str(raw.get("tenant_id") or "")[:128],
        "person_dept": departments if isinstance(departments, list) else [departments],
        "last_update_date": updated,
    }


def _upsert_hr_page(records: list[dict]) -> int:
    now = timezone.now()
    by_number = {r["employee_number"]: r for r in records}
    existing = {p.employee_number: p for p in HrPerson.objects.filter(employee_number__in=by_number)}
    new_persons, changed, leavers, returners = [], [], [], []
    for number, record in by_number.items():
        person = existing.get(number)
        if person is None:
            new_persons.append(HrPerson(
                employee_number=number, created_by=HR_SYNC, last_updated_by=HR_SYNC, creation_date=now,
                **{k: record[k] for k in HR_FIELDS}, last_update_date=record["last_update_date"],
            ))
        else:
            was_leaver = is_leaver(person.employee_status)
            for name in HR_FIELDS:
                setattr(person, name, record[name])
            person.last_update_date = record["last_update_date"]
            person.last_updated_by = HR_SYNC
            changed.append(person)
            if is_leaver(person.employee_status) != was_leaver:
                (leavers if not was_leaver else returners).append(person.pk)
    allocate_email_addresses(new_persons)
    created = HrPerson.objects.bulk_create(new_persons)
    if connection_lacks_returning(created):
        created = list(HrPerson.objects.filter(employee_number__in=[p.employee_number for p in new_persons]))
    create_default_accounts(created)
    leavers += [p.pk for p in created if is_leaver(p.employee_status)]
    if changed:
        bulk_update_rows(changed, [*HR_FIELDS, "last_update_date", "last_updated_by"])
        _keep_accounts_true(changed, leavers=leavers, returners=returners, now=now)
    elif leavers:
        set_enabled(Q(person_id__in=leavers), False, now)
    return len(by_number)


def _keep_accounts_true(persons: list[HrPerson], *, leavers: list[int], returners: list[int], now) -> None:
    """A leaver's accounts are to be disabled and their creations not yet started cancelled; a returner's
    enabled again; every account that no longer holds its person's values gets its change task."""
    if leavers:
        set_enabled(Q(person_id__in=leavers), False, now)
        cancelled = cancel_unstarted_creations(Q(person_id__in=leavers), now, "the person left (HR)")
        rollup_items_for_persons(cancelled)
    if returners:
        set_enabled(Q(person_id__in=returners), True, now)
    open_changes([p.pk for p in persons], now=now)


def sync_hr_source(*, page_size: int | None = None) -> tuple[int, str]:
    """Read persons changed in HR since the watermark; return (persons synced, a note)."""
    page_size = page_size or min(settings.STAGE_BATCH_SIZE, PAGE_LIMIT)
    with leases.singleton(HR_SYNC_LOCK) as held:
        if held is None:
            return 0, "HR sync skipped: another copy holds its lock"
        state, _ = HrSyncState.objects.get_or_create(name="default")
        backend = get_hr_backend()
        since = state.watermark_updated_at - HR_OVERLAP if state.watermark_updated_at else None
        cursor = (since.isoformat(), None) if since else (None, None)
        high_water = (state.watermark_updated_at, state.watermark_person_id)
        synced = skipped = 0
        try:
            while True:
                page = backend.fetch_changed_persons(updated_after=cursor[0], after_id=cursor[1], limit=page_size)
                records = [r for r in map(_hr_record, page.persons) if r is not None]
                skipped += len(page.persons) - len(records)
                if records:
                    synced += atomic_with_retry(lambda: _upsert_hr_page(records),
                                                retry_on=(IntegrityError, OperationalError))
                    last = max(records, key=lambda r: (r["last_update_date"], r["person_id"]))
                    if high_water[0] is None or (last["last_update_date"], last["person_id"]) > high_water:
                        high_water = (last["last_update_date"], last["person_id"])
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        except Exception as exc:
            HrSyncState.objects.filter(pk=state.pk).update(last_run_at=timezone.now(), last_error=str(exc)[:2000])
            raise
        now = timezone.now()
        # If the lease ran out while this copy worked (a long stall), another copy may be syncing: the pages
        # written stay (upserts), the watermark is left for the holder to move. The check and the move are one
        # statement, so a lease that runs out between them moves nothing either.
        moved = HrSyncState.objects.filter(pk=state.pk).filter(leases.held_q(held)).update(
            watermark_updated_at=high_water[0], watermark_person_id=high_water[1], last_run_at=now,
            last_success_at=now, last_error="", persons_synced=state.persons_synced + synced,
        )
        if not moved:
            logger.warning("HR sync lost its lease; the watermark is not moved")
            return synced, f"HR sync: {synced} person(s), lease lost: watermark not moved"
        note = f"HR sync: {synced} person(s)" + (f", {skipped} invalid record(s) skipped" if skipped else "")
        if skipped:
            logger.warning("HR sync skipped %d invalid record(s)", skipped)
        return synced, note


def run_sync_stage(*, dry_run: bool = False, limit: int | None = None, hr_sync: bool = True) -> SyncStageResult:
    result = SyncStageResult()
    if dry_run:
        pending = AccountCreationRequest.objects.filter(status=AccountCreationRequest.Status.PENDING)
        result.requests_claimed = pending.count()
        result.items_synced = AccountCreationRequestItem.objects.filter(
            status=AccountCreationRequestItem.Status.PENDING,
            request__request_type=AccountCreationRequest.RequestType.CREATE,
            request__status__in=[AccountCreationRequest.Status.PENDING, AccountCreationRequest.Status.PROCESSING],
        ).count()
        result.hr_sync_note = "HR sync not run (dry run)"
        return result
    while claimed := claim_pending_requests():
        result.requests_claimed += claimed
    result.items_synced, result.persons_created, result.persons_updated = sync_pending_items(limit=limit)
    result.deactivation_items = deactivate_pending_items(limit=limit)
    if hr_sync:
        result.hr_persons_synced, result.hr_sync_note = sync_hr_source()
    else:
        result.hr_sync_note = "HR sync not due"
    return result
