"""Leavers through the API: deactivate_accounts requests, stored like creations and worked by stage 1.

A deactivation is a request of type `deactivate` whose items name persons the same origin submitted. The
sync stage takes its pending items: their accounts in the request's systems are no longer wanted active,
creations not yet started are cancelled, and the accounts that exist get `disable` tasks (on the shared
queue, like every other call to a target). An item ends when nothing of it is in flight any more.
"""

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from ..db.locking import atomic_with_retry
from ..errors import PayloadInvalid
from ..models import AccountCreationRequest, AccountCreationRequestItem, ApiClient, HrPerson
from ..validation import ValidatedDeactivation
from .account_changes import open_changes, set_enabled
from .batches import lock_items_by_request_priority
from .intake import check_submitter, existing_or_conflict, new_request_id
from .lifecycle import cancel_unstarted_creations
from .rollup import rollup_items_for_persons
from .wakeup import notify_work

Request = AccountCreationRequest
Item = AccountCreationRequestItem
DEACTIVATE = Request.RequestType.DEACTIVATE


def _submitted_persons(origin_system: str, numbers: list[str]) -> dict[str, HrPerson]:
    """The persons among these employee numbers that this origin submitted for creation."""
    submitted = Item.objects.filter(request__origin_system=origin_system,
                                    request__request_type=Request.RequestType.CREATE,
                                    employee_number__in=numbers).values("employee_number")
    return {p.employee_number: p for p in HrPerson.objects.filter(employee_number__in=submitted)}


def deactivation_submit(*, client: ApiClient, batch: ValidatedDeactivation) -> tuple[Request, bool]:
    """Store a deactivation as a pending request; return (request, created). Idempotent like creations:
    the same (originSystem, businessKey) and payload returns the original request, another payload is a 409.

    Every employee number must name a person this origin submitted (and the service synced): the others
    are refused together, one error each, and nothing is stored.
    """
    check_submitter(client, batch)
    existing = existing_or_conflict(batch)
    if existing is not None:
        return existing, False
    persons = _submitted_persons(batch.origin_system, batch.employee_numbers)
    errors = [{"field": f"userList[{index}].employeeNumber", "code": "not_submitted_by_origin",
               "message": f"originSystem {batch.origin_system!r} 未提交过人员 {number}；"
                          "来源系统只能停用自己提交的人员。"}
              for index, number in enumerate(batch.employee_numbers) if number not in persons]
    if errors:
        raise PayloadInvalid(f"请求中有 {len(errors)} 个字段无效。", errors=errors)
    try:
        with transaction.atomic():
            notify_work("request")  # delivered to the listening workers when this commits
            request = Request.objects.create(
                request_id=new_request_id(), request_type=DEACTIVATE, origin_system=batch.origin_system,
                business_key=batch.business_key, account_type="", employee_type="",
                system_list=batch.system_list or list(settings.PROVISIONING_SYSTEMS),
                total_users=len(batch.employee_numbers), client=client,
                priority=batch.priority if batch.priority is not None else client.default_priority,
                callback_url=batch.callback_url, payload_fingerprint=batch.fingerprint,
            )
            Item.objects.bulk_create([
                Item(request=request, employee_number=number, employee_name=persons[number].full_name,
                     phone_number="", hr_person=persons[number])
                for number in batch.employee_numbers
            ], batch_size=1000)
    except IntegrityError:
        existing = existing_or_conflict(batch)
        if existing is None:
            raise
        return existing, False
    return request, True


def _deactivate_batch(batch_size: int) -> int:
    items = lock_items_by_request_priority(Item.Status.PENDING, batch_size, fields=("request_id", "hr_person_id"),
                                           request_type=DEACTIVATE)
    if not items:
        return 0
    now = timezone.now()
    requests = {pk: (systems, priority) for pk, systems, priority in Request.objects.filter(
        pk__in={i.request_id for i in items}).values_list("id", "system_list", "priority")}
    keys = Q(pk__in=[])
    first_item: dict[int, int] = {}
    for item in items:
        keys |= Q(person_id=item.hr_person_id, system__in=requests[item.request_id][0])
        first_item.setdefault(item.hr_person_id, item.pk)
    set_enabled(keys, False, now)
    cancelled = cancel_unstarted_creations(keys, now, "deactivated before it started")
    priority = max(priority for _, priority in requests.values())
    open_changes(first_item, items=first_item, priority=priority, now=now)
    Item.objects.filter(pk__in=[i.pk for i in items]).update(status=Item.Status.TASK_CREATED, updated_at=now)
    # Items with nothing to disable (no account, or disabled already) end here; so may the persons' creations.
    rollup_items_for_persons(set(first_item) | cancelled)
    return len(items)


def deactivate_pending_items(*, limit: int | None = None) -> int:
    """Work through the pending items of processing deactivations, in batches; return how many."""
    total = 0
    while limit is None or total < limit:
        size = settings.STAGE_BATCH_SIZE if limit is None else min(settings.STAGE_BATCH_SIZE, limit - total)
        done = atomic_with_retry(lambda: _deactivate_batch(size), retry_on=(IntegrityError, OperationalError))
        if not done:
            break
        total += done
    return total
