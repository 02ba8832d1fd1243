"""Give a person the next free email address when the mail system says theirs belongs to someone else."""

from collections.abc import Iterable

from django.db import IntegrityError, OperationalError

from ..db.locking import atomic_with_retry, wait_locked
from ..models import HrPerson
from .email_address import allocate_email_addresses


def person_reallocate_email(*, person_pk: int, taken_email: str, refused: Iterable[str] = ()) -> str:
    """Replace the person's address `taken_email` by the next free candidate; return the new address.

    `refused` lists every address the mail system has refused for this person so far, so that the search
    never comes back to one of them (their rows are released here and look free in our table).
    Idempotent: if the person's address is no longer `taken_email` (a concurrent call moved it on), that
    address is returned unchanged.
    """
    avoid = {address.lower() for address in (*refused, taken_email) if address}

    def reallocate() -> str:
        person = wait_locked(HrPerson.objects.filter(pk=person_pk)).get()
        if (person.email or "").lower() != taken_email.lower():
            return person.email or ""
        person.email = None
        allocate_email_addresses([person], avoid=avoid)
        person.save(update_fields=["email"])
        return person.email

    # A concurrent allocation may take the same candidate first: the unique constraint says so, retry.
    return atomic_with_retry(reallocate, retry_on=(IntegrityError, OperationalError))
