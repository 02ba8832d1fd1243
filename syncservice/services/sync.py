"""Stage 1, sync_hr_persons: buffered request items become HrPersons; then the incremental HR sync."""

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..backends import get_hr_backend
from ..models import Account, AccountCreationRequest, AccountCreationRequestItem, HrPerson, HrSyncState
from .bulk import bulk_update_rows
from .email_address import allocate_email_addresses
from .locking import advisory_lock, atomic_with_retry, items_by_request_priority, skip_locked

logger = logging.getLogger(__name__)

API = HrPerson.CreatedBy.API
HR_SYNC = HrPerson.CreatedBy.HR_SYNC
HR_OVERLAP = dt.timedelta(minutes=5)
HR_SYNC_LOCK = "syncservice.hr_sync"


@dataclass
class SyncStageResult:
    requests_claimed: int = 0
    items_synced: int = 0
    persons_created: int = 0
    persons_updated: int = 0
    hr_persons_synced: int = 0
    hr_sync_note: str = ""

    def as_counts(self) -> dict:
        return {
            "requests_claimed": self.requests_claimed, "items_synced": self.items_synced,
            "persons_created": self.persons_created, "persons_updated": self.persons_updated,
            "hr_persons_synced": self.hr_persons_synced,
        }


def claim_pending_requests(*, limit: int | None = None) -> int:
    """Mark pending requests processing, highest priority first; a short transaction, skipping locked rows."""
    def claim():
        queryset = skip_locked(
            AccountCreationRequest.objects.filter(status=AccountCreationRequest.Status.PENDING)
            .order_by("-priority", "created_at", "id")
        )
        ids = list(queryset.values_list("id", flat=True)[: limit or settings.STAGE_BATCH_SIZE])
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


API_UPDATED_FIELDS = ["full_name", "telephone_number1", "person_type", "employee_status", "tenant_id",
                      "person_dept", "last_updated_by", "last_update_date", "email"]


def _sync_items_batch(batch_size: int) -> tuple[int, int, int]:
    now = timezone.now()
    items = list(skip_locked(items_by_request_priority(AccountCreationRequestItem.Status.PENDING))[:batch_size])
    if not items:
        return 0, 0, 0
    # A batch holds few requests: fetch each once rather than joining it onto every item.
    requests = {r.pk: r for r in AccountCreationRequest.objects.filter(pk__in={i.request_id for i in items})}
    for item in items:
        item.request = requests[item.request_id]
    existing = {p.employee_number: p for p in HrPerson.objects.filter(
        employee_number__in={item.employee_number for item in items})}
    new_persons: dict[str, HrPerson] = {}
    updated: dict[str, HrPerson] = {}
    for item in items:
        number = item.employee_number
        person = existing.get(number)
        if person is None:
            if number not in new_persons:
                new_persons[number] = _person_from_item(item, now)
            continue
        # HR is the master once it knows the person: API values never overwrite its data.
        if person.last_updated_by == API and number not in updated:
            fresh = _person_from_item(item, now)
            for name in API_UPDATED_FIELDS[:-1]:
                setattr(person, name, getattr(fresh, name))
            updated[number] = person
        elif not person.email:
            updated[number] = person
    allocate_email_addresses(list(new_persons.values()) + [p for p in updated.values() if not p.email])
    created = HrPerson.objects.bulk_create(new_persons.values())
    if connection_lacks_returning(created):
        created = list(HrPerson.objects.filter(employee_number__in=new_persons.keys()))
    create_default_accounts(created)
    if updated:
        bulk_update_rows(list(updated.values()), API_UPDATED_FIELDS)
    persons = {**existing, **{p.employee_number: p for p in created}}
    for item in items:
        item.hr_person = persons[item.employee_number]
        item.status = AccountCreationRequestItem.Status.SYNCED
        item.updated_at = now
    bulk_update_rows(items, ["hr_person", "status", "updated_at"])
    return len(items), len(created), len(updated)


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
        updated = timezone.make_aware(updated, dt.timezone.utc)
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
    new_persons, changed = [], []
    for number, record in by_number.items():
        person = existing.get(number)
        if person is None:
            new_persons.append(HrPerson(
                employee_number=number, created_by=HR_SYNC, last_updated_by=HR_SYNC, creation_date=now,
                **{k: record[k] for k in HR_FIELDS}, last_update_date=record["last_update_date"],
            ))
        else:
            for name in HR_FIELDS:
                setattr(person, name, record[name])
            person.last_update_date = record["last_update_date"]
            person.last_updated_by = HR_SYNC
            changed.append(person)
    allocate_email_addresses(new_persons)
    created = HrPerson.objects.bulk_create(new_persons)
    if connection_lacks_returning(created):
        created = list(HrPerson.objects.filter(employee_number__in=[p.employee_number for p in new_persons]))
    create_default_accounts(created)
    if changed:
        bulk_update_rows(changed, [*HR_FIELDS, "last_update_date", "last_updated_by"])
    return len(by_number)


def sync_hr_source(*, page_size: int | None = None) -> tuple[int, str]:
    """Read persons changed in HR since the watermark; return (persons synced, a note)."""
    page_size = page_size or settings.STAGE_BATCH_SIZE
    with advisory_lock(HR_SYNC_LOCK) as acquired:
        if not acquired:
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
        HrSyncState.objects.filter(pk=state.pk).update(
            watermark_updated_at=high_water[0], watermark_person_id=high_water[1], last_run_at=now,
            last_success_at=now, last_error="", persons_synced=state.persons_synced + synced,
        )
        note = f"HR sync: {synced} person(s)" + (f", {skipped} invalid record(s) skipped" if skipped else "")
        if skipped:
            logger.warning("HR sync skipped %d invalid record(s)", skipped)
        return synced, note


def run_sync_stage(*, dry_run: bool = False, limit: int | None = None) -> SyncStageResult:
    result = SyncStageResult()
    if dry_run:
        pending = AccountCreationRequest.objects.filter(status=AccountCreationRequest.Status.PENDING)
        result.requests_claimed = pending.count()
        result.items_synced = AccountCreationRequestItem.objects.filter(
            status=AccountCreationRequestItem.Status.PENDING,
            request__status__in=[AccountCreationRequest.Status.PENDING, AccountCreationRequest.Status.PROCESSING],
        ).count()
        result.hr_sync_note = "HR sync not run (dry run)"
        return result
    while claimed := claim_pending_requests():
        result.requests_claimed += claimed
    result.items_synced, result.persons_created, result.persons_updated = sync_pending_items(limit=limit)
    result.hr_persons_synced, result.hr_sync_note = sync_hr_source()
    return result
