"""What the queue needs to know of a model that holds jobs: its statuses, lanes, order and lease columns."""

from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.db.models import Case, Q, Value, When


@dataclass(frozen=True)
class JobTable:
    """A model whose rows are jobs, described once for the queue's claim, lease and result writes.

    Every such model has `status`, `attempts`, `max_attempts`, `next_attempt_at`, `lease_token` and
    `lease_expires_at`; the names of its statuses and its optional columns are given here.
    """

    model: type[models.Model]
    ready: tuple[str, ...]        # claimable once next_attempt_at has come
    running: str                  # held under a claim's lease
    succeeded: str
    failed: str
    pending: str                  # handed back for a fresh call
    lease_setting: str            # the setting with the lease's length in seconds
    retry_base_setting: str       # the settings of the backoff between attempts
    retry_cap_setting: str
    polling: str | None = None    # a ready status whose claim is a poll of accepted work: not a new attempt
    # A running row whose target had accepted the work goes back to `polling` when handed back.
    polls_when: Q | None = None
    lane_field: str | None = None  # the column that splits the queue into lanes (a target system)
    order: tuple[str, ...] = ("next_attempt_at", "id")
    select_related: tuple[str, ...] = ()
    # With one foreign key in select_related: the columns of its row that a claim loads (the rest deferred).
    related_fields: tuple[str, ...] = ()
    worker_field: str | None = None
    updated_field: str | None = None
    finished_field: str | None = None  # set when the job ends, succeeded or failed
    error_code_field: str | None = None
    error_field: str = "last_error"
    # The fields a result writes besides the queue's own (status, attempts, next_attempt_at, errors).
    result_fields: tuple[str, ...] = ()
    # Where each call is logged (model, foreign key to the job): lost claims are judged by it.
    attempt_log: tuple[type[models.Model], str] | None = None

    @property
    def lease_seconds(self) -> float:
        return float(getattr(settings, self.lease_setting))

    @property
    def name(self) -> str:
        return self.model._meta.label

    def handed_back_status(self):
        """The status of a job whose claim ended without a result (lease expired, released at shutdown)."""
        if self.polls_when is None:
            return Value(self.pending)
        return Case(When(self.polls_when, then=Value(self.polling)), default=Value(self.pending))

    def lane_filter(self, lane: str | None) -> Q:
        return Q(**{self.lane_field: lane}) if self.lane_field and lane is not None else Q()

    def written_fields(self) -> list[str]:
        fields = ["status", "attempts", "next_attempt_at", self.error_field, *self.result_fields]
        for optional in (self.error_code_field, self.finished_field):
            if optional:
                fields.append(optional)
        return list(dict.fromkeys(fields))

    def lane_of(self, job: models.Model) -> str | None:
        return getattr(job, self.lane_field) if self.lane_field else None

