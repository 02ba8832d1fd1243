"""The contract every target backend fulfils: make sure one person has an account, idempotently."""

import enum
from dataclasses import dataclass, field


class OutcomeKind(enum.StrEnum):
    CREATED = "created"            # the account was created by this call
    LINKED = "linked"              # it existed already and belongs to this person
    IN_PROGRESS = "in_progress"    # the target works asynchronously: poll again later
    TRANSIENT = "transient"        # a failure worth retrying (timeout, 5xx, rate limit, expired token)
    PERMANENT = "permanent"        # a failure retrying cannot fix (validation, conflict)
    APPLIED = "applied"            # a change (update, disable, enable) is in place at the target


class Operation(enum.StrEnum):
    """What a task does to an account: create it, or keep it true afterwards."""

    CREATE = "create"
    UPDATE = "update"
    DISABLE = "disable"
    ENABLE = "enable"


# The person's values a target account holds and a change may carry (PersonSnapshot's names).
CHANGE_FIELDS = ("full_name", "phone_number", "department_code", "email")


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    external_id: str = ""
    code: str = ""            # the target's own code, verbatim
    message: str = ""         # the target's own message, verbatim
    retry_after: float | None = None   # seconds, when the target said how long to wait
    state: dict | None = None          # backend state to keep on the task (e.g. an async job in flight)
    rate_limited: bool = False         # the target said "slow down" (429, WeLink 48503, Exmail 45009)

    @property
    def succeeded(self) -> bool:
        return self.kind in (OutcomeKind.CREATED, OutcomeKind.LINKED, OutcomeKind.APPLIED)

    @classmethod
    def created(cls, external_id: str, **kwargs) -> "Outcome":
        return cls(OutcomeKind.CREATED, external_id=external_id, **kwargs)

    @classmethod
    def linked(cls, external_id: str, **kwargs) -> "Outcome":
        return cls(OutcomeKind.LINKED, external_id=external_id, **kwargs)

    @classmethod
    def applied(cls, external_id: str, **kwargs) -> "Outcome":
        return cls(OutcomeKind.APPLIED, external_id=external_id, **kwargs)

    @classmethod
    def in_progress(cls, **kwargs) -> "Outcome":
        return cls(OutcomeKind.IN_PROGRESS, **kwargs)

    @classmethod
    def transient(cls, code: str, message: str, **kwargs) -> "Outcome":
        return cls(OutcomeKind.TRANSIENT, code=code, message=message, **kwargs)

    @classmethod
    def permanent(cls, code: str, message: str, **kwargs) -> "Outcome":
        return cls(OutcomeKind.PERMANENT, code=code, message=message, **kwargs)


@dataclass(frozen=True)
class PersonSnapshot:
    """What a backend needs to know of a person: plain data, safe to hand to a worker thread."""

    person_pk: int
    person_id: int
    employee_number: str
    full_name: str
    email: str
    phone_number: str
    department_code: str = ""
    person_type: str = ""
    departments: list = field(default_factory=list)


def keyed_persons(items: list[tuple[PersonSnapshot, dict]], key: str) -> tuple[list, list[int]]:
    """For a batch: one outcome slot per item, already `invalid_person` for a person without an employee
    number (`key` names what the target calls it), and the indexes of the others, to be called."""
    outcomes: list[Outcome | None] = [None] * len(items)
    keyed = []
    for index, (person, _) in enumerate(items):
        if person.employee_number:
            keyed.append(index)
        else:
            outcomes[index] = Outcome.permanent("invalid_person", f"the person has no employee number (the {key})")
    return outcomes, keyed


@dataclass(frozen=True)
class AccountChange:
    """A change to an account that exists: the person's snapshot carries every value it must hold now."""

    operation: str                 # Operation.UPDATE, DISABLE or ENABLE
    external_id: str               # the account's id at the target (what ensure_account returned)
    fields: tuple[str, ...] = ()   # the CHANGE_FIELDS whose value differs from what the target was last given
    active: bool = True            # the state the account ends in: False for a disable


@dataclass(frozen=True)
class TargetAccount:
    """One account as its target holds it, read for reconciliation; values in PersonSnapshot's forms
    (a mobile as the service stores it: 13800138000, +44…), so that they compare with ours as they are."""

    external_id: str               # the target's id of the account (what ensure_account returns)
    key: str                       # the employee number it carries (SCIM userName, corpUserId, Exmail extid)
    email: str = ""
    full_name: str = ""
    phone_number: str = ""
    department_code: str | None = None   # None: the target holds no department the service manages
    active: bool = True


def orphan_snapshot(account: TargetAccount) -> PersonSnapshot:
    """An account without a person of ours, as a backend's call sees a person: its own values, no ids."""
    return PersonSnapshot(person_pk=0, person_id=0, employee_number=account.key, full_name=account.full_name,
                          email=account.email, phone_number=account.phone_number)


@dataclass(frozen=True)
class AccountPage:
    accounts: list[TargetAccount]
    next_cursor: str | None        # opaque, for the next call; None after the last page


class ListingFailed(Exception):
    """Reading the target's accounts failed (after the backend's own retries): code and message say why."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None):
        super().__init__(f"[{code}] {message}")
        self.code, self.message, self.retry_after = code, message, retry_after


class TargetBackend:
    """Base class of a target system's backend.

    ``ensure_account`` must be idempotent: look the account up by a stable key before creating it, so that
    a retry after a crash or a lost response links the existing account instead of creating a second one.
    It never raises for a target's answer: it returns an Outcome carrying the target's code and message.
    """

    system: str = ""

    def __init__(self, **options):
        self.options = options

    def ensure_account(self, person: PersonSnapshot, state: dict) -> Outcome:
        raise NotImplementedError("subclasses of TargetBackend must provide an ensure_account() method")

    def batch_size(self) -> int:
        """How many persons one ensure_accounts call takes (a target with a bulk API takes several)."""
        return 1

    def ensure_accounts(self, items: list[tuple[PersonSnapshot, dict]]) -> list[Outcome]:
        """ensure_account for several (person, state) pairs at once, one outcome per pair in order: a target
        with a bulk API sends them in few calls and still answers per person (one person's refusal fails
        that person only; a failure of a whole call answers the same transient outcome for each)."""
        return [self.ensure_account(person, state) for person, state in items]

    def apply_change(self, person: PersonSnapshot, change: AccountChange, state: dict) -> Outcome:
        """Bring an existing account in line with `person` and `change.active`; idempotent like
        ensure_account (a replay after a lost answer applies nothing twice). Returns Outcome.applied, an
        in-progress outcome for an asynchronous target, or a failure; `account_missing` when the target
        has no such account any more."""
        raise NotImplementedError("subclasses of TargetBackend must provide an apply_change() method")

    # Whether list_accounts can read every account the target holds; without it, reconciliation looks its
    # own persons up (lookup_accounts) and cannot see orphans there.
    can_list: bool = True

    def list_accounts(self, *, cursor: str | None, page_size: int) -> AccountPage:
        """One page of every account the target holds, in a stable order; raise ListingFailed."""
        raise NotImplementedError("subclasses of TargetBackend must provide list_accounts()")

    def lookup_accounts(self, keys: list[str]) -> list[TargetAccount]:
        """The accounts the target holds for these employee numbers (none for a key it does not know);
        raise ListingFailed. A target that can list need not provide it."""
        raise NotImplementedError("this backend cannot look accounts up by employee number")

    # Whether disable_account can switch off an account the service holds no person for (an orphan).
    can_disable_accounts: bool = False

    def disable_account(self, account: TargetAccount) -> Outcome:
        """Switch off an account the service holds no person for (an orphan, on the operator's word): only
        its active state changes, every other value stays as the target holds it. Idempotent; returns
        Outcome.applied, `account_missing` when the target has no such account, or a failure."""
        return Outcome.permanent("unsupported", f"{self.system} cannot disable an account without its person")

    def close(self) -> None:
        """Release connections; called when the backend is replaced or the process ends."""


@dataclass(frozen=True)
class HrPage:
    persons: list[dict]
    next_cursor: tuple | None  # (last_update_date ISO, person_id) to continue from, None at the end


class HrSourceBackend:
    """Base class of the HR source: pages of persons changed since a watermark."""

    def fetch_changed_persons(self, *, updated_after: str | None, after_id: int | None, limit: int) -> HrPage:
        raise NotImplementedError("subclasses of HrSourceBackend must provide fetch_changed_persons()")

    def close(self) -> None:
        pass
