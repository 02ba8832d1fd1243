"""POST /task-management/<stage>/ runs a stage now; GET /task-management/runs/ lists stage runs."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from syncservice.api.permissions import IsOperatorOrStaff
from syncservice.api.query import Pagination, QueryParams
from syncservice.api.schema import (
    BODY_ERRORS,
    PAGE_MAX,
    PAGE_SIZE_MAX,
    RETRY_AFTER_HEADER,
    error_responses,
    page_parameters,
)
from syncservice.api.serializers import StrictSerializer, page_serializer
from syncservice.audit import Action, audit_record
from syncservice.errors import PayloadInvalid, ServiceError
from syncservice.selectors import iso_utc
from syncservice.validation import describe_key

from .models import TaskRun
from .services import stage_run


class StageFailed(ServiceError):
    code = "stage_failed"
    status_code = 500
    default_message = "The stage failed."


def run_document(run: TaskRun) -> dict:
    return {
        "id": run.pk,
        "stage": run.stage,
        "trigger": run.trigger,
        "dryRun": run.dry_run,
        "outcome": run.outcome,
        "outcome_display": run.get_outcome_display(),
        "counts": run.counts,
        "summary": run.summary,
        "startedAt": iso_utc(run.started_at),
        "finishedAt": iso_utc(run.finished_at),
        "host": run.host,
        "pid": run.pid,
        "triggeredBy": run.triggered_by,
    }


class RunSerializer(StrictSerializer):
    id = serializers.IntegerField()
    stage = serializers.ChoiceField(choices=TaskRun.Stage.choices)
    trigger = serializers.ChoiceField(choices=TaskRun.Trigger.choices)
    dryRun = serializers.BooleanField()
    outcome = serializers.ChoiceField(choices=TaskRun.Outcome.choices)
    outcome_display = serializers.CharField()
    counts = serializers.JSONField()
    summary = serializers.CharField()
    startedAt = serializers.DateTimeField()
    finishedAt = serializers.DateTimeField(allow_null=True)
    host = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    triggeredBy = serializers.CharField()


class StageInputSerializer(StrictSerializer):
    mode = serializers.ChoiceField(choices=["run", "dry_run"], help_text="run, or dry_run to report only.")


def principal_name(user) -> str:
    return getattr(user, "name", None) or getattr(user, "username", "") or ""


class StageRunView(APIView):
    """Run one pipeline stage now, synchronously, and answer with its TaskRun."""

    permission_classes = [IsOperatorOrStaff]
    stage: str = ""

    def post(self, request):
        data = request.data
        if not isinstance(data, dict):
            raise PayloadInvalid("The request body must be a JSON object.", code="invalid_body")
        mode = data.get("mode")
        unknown = sorted(set(data) - {"mode"})
        errors = [{"field": describe_key(key), "code": "unknown_field", "message": "Unknown field."}
                  for key in unknown]
        if mode not in ("run", "dry_run"):
            errors.insert(0, {"field": "mode", "code": "invalid_choice", "message": "Must be 'run' or 'dry_run'."})
        if errors:
            raise PayloadInvalid(f"The request has {len(errors)} invalid field(s).", errors=errors)
        try:
            run = stage_run(stage=self.stage, trigger=TaskRun.Trigger.API, dry_run=mode == "dry_run",
                            triggered_by=principal_name(request.user))
        except Exception as exc:
            last = TaskRun.objects.filter(stage=self.stage).order_by("-id").first()
            raise StageFailed(f"{self.stage} failed: {type(exc).__name__}: {exc}",
                              extra={"runId": last.pk if last else None}) from exc
        # After the run, which commits as it goes: a stage that failed is recorded only as its failed TaskRun.
        audit_record(actor=request.user, action=Action.STAGE_RUN, target=run, details={"dryRun": run.dry_run})
        return Response(run_document(run), status=status.HTTP_200_OK)


STAGE_SCHEMA = dict(
    request=StageInputSerializer,
    parameters=[RETRY_AFTER_HEADER],
    responses={200: RunSerializer, **error_responses(*BODY_ERRORS)},
    description="Runs the stage synchronously and answers with its run; a failed stage answers 500 "
                "(`stage_failed`, with the `runId`).",
)


RunPageSerializer = page_serializer("RunPageSerializer", RunSerializer)


class SyncHrPersonsView(StageRunView):
    stage = TaskRun.Stage.SYNC_HR_PERSONS

    @extend_schema(operation_id="run_sync_hr_persons", summary="Run sync_hr_persons once, now", **STAGE_SCHEMA)
    def post(self, request):
        return super().post(request)


class CreateAccountTasksView(StageRunView):
    stage = TaskRun.Stage.CREATE_ACCOUNT_TASKS

    @extend_schema(operation_id="run_create_account_tasks", summary="Run create_account_tasks once, now",
                   **STAGE_SCHEMA)
    def post(self, request):
        return super().post(request)


class ProcessAccountTasksView(StageRunView):
    stage = TaskRun.Stage.PROCESS_ACCOUNT_TASKS

    @extend_schema(operation_id="run_process_account_tasks",
                   summary="Run process_account_creation_tasks once, now", **STAGE_SCHEMA)
    def post(self, request):
        return super().post(request)


class RunListView(APIView):
    permission_classes = [IsOperatorOrStaff]

    @extend_schema(
        operation_id="list_stage_runs", summary="Stage runs, newest first",
        parameters=[OpenApiParameter("stage", str, enum=TaskRun.Stage.values), *page_parameters(),
                    RETRY_AFTER_HEADER],
        responses={200: RunPageSerializer, **error_responses(400, 404)},
    )
    def get(self, request):
        query = QueryParams(request)
        stage = query.choice("stage", TaskRun.Stage.values)
        query.integer("page", minimum=1, maximum=PAGE_MAX)
        query.integer("page_size", minimum=1, maximum=PAGE_SIZE_MAX)
        query.check()
        queryset = TaskRun.objects.order_by("-started_at", "-id")
        if stage is not None:
            queryset = queryset.filter(stage=stage)
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response([run_document(run) for run in page])
