"""The design note's per-row loop (seed/account-creation-design.zh.md), kept here as the reference of workload 2.

It does the same work as the service's sync_hr_persons and create_account_tasks stages, one item at a time,
the way the note's code does: ``update_or_create`` and ``save()`` per item, autocommit, no claims. It is
deliberately *not* a strawman: where the note is silent it takes the cheaper path a careful per-row author
would take (the three default accounts of a person in one ``bulk_create``, one lookup of a person's accounts
and open tasks, the tasks of one item in one ``bulk_create``). The bench checks that both paths end in the
same rows before it compares their times.

Never used by the service: it has none of the stages' guarantees (no row locks, no batch transactions).
"""

from django.conf import settings
from django.utils import timezone

from syncservice.models import Account, AccountCreationRequest, AccountCreationTask, HrPerson
from syncservice.services.email_address import allocate_email_addresses

Task = AccountCreationTask


def sync_hr_persons_per_row() -> int:
    """The note's _process_account_creation_requests of sync_hr_persons."""
    synced = 0
    for request in AccountCreationRequest.objects.filter(status="pending").order_by("-priority", "created_at", "id"):
        request.status = "processing"
        request.save()
        for item in request.items.filter(status="pending").order_by("id"):
            now = timezone.now()
            person, created = HrPerson.objects.update_or_create(
                employee_number=item.employee_number,
                defaults={
                    "person_id": settings.API_PERSON_ID_OFFSET + item.pk,
                    "full_name": item.employee_name,
                    "telephone_number1": item.phone_number,
                    "person_type": request.account_type,
                    "employee_status": request.employee_type,
                    "tenant_id": request.business_key,
                    "created_by": "account_creation_api",
                    "last_updated_by": "account_creation_api",
                    "creation_date": now,
                    "last_update_date": now,
                    "person_dept": [{
                        "department_code": item.department_code,
                        "partner_company": item.partner_company or "",
                        "country": item.country,
                    }],
                },
            )
            if not person.email:
                allocate_email_addresses([person])
                person.save(update_fields=["email"])
            if created:
                Account.objects.bulk_create(
                    [Account(person=person, system=s) for s in settings.PROVISIONING_SYSTEMS],
                    ignore_conflicts=True,
                )
            item.hr_person = person
            item.status = "synced"
            item.save()
            synced += 1
    return synced


def create_account_tasks_per_row() -> int:
    """The note's _process_account_creation_requests of create_account_tasks."""
    created_tasks = 0
    for request in AccountCreationRequest.objects.filter(status="processing").order_by("id"):
        for item in request.items.filter(status="synced").select_related("hr_person").order_by("id"):
            person = item.hr_person
            accounts = {a.system: a for a in Account.objects.filter(person=person)}
            open_systems = set(Task.objects.filter(person=person, status__in=Task.OPEN_STATUSES)
                               .values_list("system", flat=True))
            wanted = [s for s in request.system_list
                      if s not in open_systems and getattr(accounts.get(s), "status", None) != "created"]
            now = timezone.now()
            if wanted:
                Task.objects.bulk_create([
                    Task(person=person, system=s, request_item=item, priority=request.priority,
                         max_attempts=settings.TASK_MAX_ATTEMPTS, next_attempt_at=now) for s in wanted
                ])
                Account.objects.filter(person=person, system__in=wanted).update(status="creating", updated_at=now)
                created_tasks += len(wanted)
            item.status = "task_created"
            item.save()
        # _update_request_status(request): the request stays processing until its tasks end.
        request.save()
    return created_tasks
