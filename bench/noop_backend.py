"""A target backend that does nothing: what is left to measure is the claim-and-complete loop itself.

Selected with IDAAS_BACKEND / WELINK_BACKEND / MAILBOX_BACKEND=bench.noop_backend.NoopBackend.
"""

from syncservice.backends.base import Outcome, PersonSnapshot, TargetBackend


class NoopBackend(TargetBackend):
    system = "noop"

    def ensure_account(self, person: PersonSnapshot, state: dict) -> Outcome:
        return Outcome.created(f"noop-{person.employee_number}")
