"""A third kind of job, written only against the queue's interface: POST a payload to an HTTP echo service.

It touches neither the queue nor the executor: a model with the queue's columns, its JobTable and a Handler.
The table lives outside the project's apps (no migration); the tests create and drop it.
"""

import requests
from django.db import models
from django.utils import timezone

from syncservice.queue.handler import Handler
from syncservice.queue.outcomes import Decision
from syncservice.queue.table import JobTable


class EchoJob(models.Model):
    lane = models.CharField(max_length=16, default="a")
    payload = models.CharField(max_length=64)
    priority = models.SmallIntegerField(default=0)
    status = models.CharField(max_length=16, default="pending")
    attempts = models.IntegerField(default=0)
    max_attempts = models.IntegerField(default=3)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_token = models.CharField(max_length=32, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True)
    locked_by = models.CharField(max_length=128, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    accepted = models.BooleanField(default=False)  # the echo service took the job and answers later
    answer = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        app_label = "queue_kind"
        db_table = "queue_kind_echo_job"


ECHO_JOBS = JobTable(
    model=EchoJob, ready=("pending", "waiting"), running="running", succeeded="done", failed="failed",
    pending="pending", polling="waiting", polls_when=models.Q(accepted=True), lane_field="lane",
    order=("-priority", "next_attempt_at", "id"), worker_field="locked_by", result_fields=("answer", "accepted"),
    lease_setting="TASK_LEASE_SECONDS", retry_base_setting="TASK_RETRY_BASE_SECONDS",
    retry_cap_setting="TASK_RETRY_MAX_SECONDS",
)


class EchoHandler(Handler):
    """Several jobs per call: the echo service takes a list and answers per payload."""

    name = "echo"
    table = ECHO_JOBS

    def __init__(self, url: str, lanes=("a",), threads: int = 2, batch: int = 3):
        self.url, self._lanes, self._threads, self._batch = url, list(lanes), threads, batch

    def lanes(self):
        return self._lanes

    def threads(self, lane):
        return self._threads

    def batch_size(self, lane):
        return self._batch

    def call(self, lane, jobs):
        try:
            response = requests.post(self.url, json=[c.job.payload for c in jobs], timeout=60)
        except requests.RequestException as exc:
            return [(0, f"{type(exc).__name__}")] * len(jobs)
        if response.status_code != 200:
            return [(response.status_code, response.text)] * len(jobs)
        return [(answer["status"], answer["text"]) for answer in response.json()]

    def crashed(self, job, exc):
        return (0, f"{type(exc).__name__}: {exc}")

    def decide(self, result, now):
        status, text = result.outcome
        job = result.job
        if status == 200:
            job.answer = text
            return Decision.succeeded()
        if status == 202:
            job.accepted = True
            return Decision.wait(delay=0)
        if status == 429:
            return Decision.defer("429", text, delay=0)
        if status in (0, 500, 503):
            return Decision.retry(str(status), text)
        return Decision.failed(str(status), text)
