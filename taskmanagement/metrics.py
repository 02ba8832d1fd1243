"""GET /metrics: the pipeline's numbers for Prometheus, every one read from the database when scraped.

Gunicorn workers and stage processes, on one machine or several, share nothing but the database: no process
keeps counts of its own, and whichever worker answers a scrape reads the same rows (docs/metrics.md).
"""

import hmac
import itertools

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from syncservice.api.exceptions import error_body
from syncservice.models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    Notification,
    System,
)

from . import selectors

BUCKET_BOUNDS = [floatToGoString(ms / 1000) for ms in selectors.CALL_DURATION_BUCKETS_MS]


def _gauge_by(name: str, documentation: str, model, fields: tuple[str, ...],
              known: tuple[list[str], ...]) -> GaugeMetricFamily:
    """Rows per combination of `fields`; every known combination is present, at zero when no row has it."""
    counts = selectors.row_counts(model, *fields)
    family = GaugeMetricFamily(name, documentation, labels=list(fields))
    for key in sorted(set(itertools.product(*known)) | set(counts)):
        family.add_metric(list(key), counts.get(key, 0))
    return family


class PipelineCollector:
    """A prometheus_client collector of requests, tasks, accounts, target calls, the queue and the stages."""

    def collect(self):
        now = timezone.now()
        systems = System.values
        yield _gauge_by("aps_requests", "Account-creation requests by status.",
                        AccountCreationRequest, ("status",), (AccountCreationRequest.Status.values,))
        yield _gauge_by("aps_request_items", "Request items (one person of a request) by status.",
                        AccountCreationRequestItem, ("status",), (AccountCreationRequestItem.Status.values,))
        yield _gauge_by("aps_tasks", "Account-creation tasks by target system and status.",
                        AccountCreationTask, ("system", "status"), (systems, AccountCreationTask.Status.values))
        yield _gauge_by("aps_accounts", "Accounts by target system and status.",
                        Account, ("system", "status"), (systems, Account.Status.values))
        yield _gauge_by("aps_notifications", "Completion notifications (callbacks, emails) by status.",
                        Notification, ("status",), (Notification.Status.values,))
        yield from self._target_calls(systems)
        yield from self._queue(now, systems)
        yield from self._stages()

    def _target_calls(self, systems):
        totals = selectors.target_call_totals()
        calls = CounterMetricFamily(
            "aps_target_calls", "Calls to the target systems (rows of the attempt log) by system, outcome and "
            "the target's code.", labels=["system", "outcome", "code"])
        for (system, outcome, code), total in sorted(totals.items()):
            calls.add_metric([system, outcome, code], total.count)
        yield calls
        durations = HistogramMetricFamily(
            "aps_target_call_duration_seconds", "Duration of the calls to the target systems, by system.",
            labels=["system"])
        for system in sorted(set(systems) | {key[0] for key in totals}):
            mine = [total for key, total in totals.items() if key[0] == system]
            count = sum(total.count for total in mine)
            within = [sum(total.within_ms[i] for total in mine) for i in range(len(BUCKET_BOUNDS))]
            durations.add_metric([system], [*zip(BUCKET_BOUNDS, within), ("+Inf", count)],
                                 sum(total.duration_ms for total in mine) / 1000)
        yield durations

    def _queue(self, now, systems):
        depth = selectors.queue_depth(now)
        due = GaugeMetricFamily("aps_queue_due_tasks", "Tasks due and waiting for a worker, by system.",
                                labels=["system"])
        oldest = GaugeMetricFamily("aps_queue_oldest_due_age_seconds",
                                   "How long the oldest due task has been due, by system (0: none due).",
                                   labels=["system"])
        expired = GaugeMetricFamily("aps_queue_expired_leases",
                                    "Running tasks whose worker's lease has expired (to be claimed again).",
                                    labels=["system"])
        for system, queued in sorted(depth.items()):
            due.add_metric([system], queued.due)
            age = (now - queued.oldest_due_at).total_seconds() if queued.oldest_due_at else 0
            oldest.add_metric([system], max(age, 0))
            expired.add_metric([system], queued.expired_leases)
        yield from (due, oldest, expired)
        pauses = selectors.target_pauses(now)
        paused = GaugeMetricFamily("aps_target_paused",
                                   "1 while a rate-limit answer pauses every worker's calls to the system.",
                                   labels=["system"])
        remaining = GaugeMetricFamily("aps_target_pause_remaining_seconds",
                                      "Seconds until a paused system may be called again (0: not paused).",
                                      labels=["system"])
        for system in sorted(set(systems) | set(pauses)):
            until = pauses.get(system)
            paused.add_metric([system], 1 if until else 0)
            remaining.add_metric([system], (until - now).total_seconds() if until else 0)
        yield from (paused, remaining)

    def _stages(self):
        beats = selectors.stage_heartbeats()
        checked = GaugeMetricFamily("aps_stage_last_checked_timestamp_seconds",
                                    "When the stage last finished a run, idle runs included (Unix time).",
                                    labels=["stage"])
        succeeded_at = GaugeMetricFamily("aps_stage_last_success_timestamp_seconds",
                                         "When the stage last finished a run successfully (Unix time).",
                                         labels=["stage"])
        succeeded = GaugeMetricFamily("aps_stage_last_run_succeeded",
                                      "1 when the stage's last run succeeded, 0 when it failed.", labels=["stage"])
        duration = GaugeMetricFamily("aps_stage_last_run_duration_seconds",
                                     "How long the stage's last run took, idle runs included.", labels=["stage"])
        for stage, beat in sorted(beats.items()):
            checked.add_metric([stage], beat.last_checked_at.timestamp())
            if beat.last_succeeded_at:
                succeeded_at.add_metric([stage], beat.last_succeeded_at.timestamp())
            succeeded.add_metric([stage], 1 if beat.last_outcome == "succeeded" else 0)
            duration.add_metric([stage], beat.last_duration_ms / 1000)
        yield from (checked, succeeded_at, succeeded, duration)


def _refused(code: str, message: str) -> JsonResponse:
    response = JsonResponse(error_body(code, message), status=401)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@never_cache
def metrics_view(request):
    """The metrics in Prometheus's text format (or OpenMetrics, when the scraper asks for it)."""
    token = settings.METRICS_TOKEN
    if not settings.METRICS_ENABLED or not token:
        raise Http404("metrics are disabled")  # as if there were no such address
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _refused("not_authenticated", "Authentication credentials were not provided.")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return _refused("authentication_failed", "Invalid token.")
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector())
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(registry), content_type=content_type)
