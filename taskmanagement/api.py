"""POST /task-management/<stage>/ runs a stage now; GET /task-management/runs/ lists stage runs."""

from django.conf import settings
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
from syncservice.models import ReconciliationFinding, ReconciliationRun, System
from syncservice.selectors import iso_utc
from syncservice.validation import describe_key

from .models import TaskRun
from .services import stage_run


class StageFailed(ServiceError):
    code = "stage_failed"
    status_code = 500
    default_message = "阶段运行失败。"


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
            raise PayloadInvalid("请求体必须是 JSON 对象。", code="invalid_body")
        mode = data.get("mode")
        unknown = sorted(set(data) - {"mode"})
        errors = [{"field": describe_key(key), "code": "unknown_field", "message": "未知字段。"}
                  for key in unknown]
        if mode not in ("run", "dry_run"):
            errors.insert(0, {"field": "mode", "code": "invalid_choice", "message": "必须是“run”或“dry_run”。"})
        if errors:
            raise PayloadInvalid(f"请求中有 {len(errors)} 个字段无效。", errors=errors)
        try:
            run = stage_run(stage=self.stage, trigger=TaskRun.Trigger.API, dry_run=mode == "dry_run",
                            triggered_by=principal_name(request.user))
        except Exception as exc:
            last = TaskRun.objects.filter(stage=self.stage).order_by("-id").first()
            raise StageFailed(f"阶段 {self.stage} 运行失败：{type(exc).__name__}: {exc}",
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


# --- Reconciliation --------------------------------------------------------------------------------------

RECONCILE_FIELDS = {"mode", "repair", "systems", "force"}


class ReconcileInputSerializer(StrictSerializer):
    mode = serializers.ChoiceField(choices=["run", "dry_run"], help_text="run, or dry_run to compare and report only.")
    repair = serializers.BooleanField(required=False, help_text="Open repairs for what is found (default false).")
    systems = serializers.ListField(child=serializers.ChoiceField(choices=System.choices), required=False,
                                    allow_null=True, allow_empty=False,
                                    help_text="The systems to read, each at most once; absent or null: every system.")
    force = serializers.BooleanField(required=False, help_text="Repair even past RECONCILE_MAX_REPAIRS.")


def _reconcile_input(data) -> dict:
    if not isinstance(data, dict):
        raise PayloadInvalid("请求体必须是 JSON 对象。", code="invalid_body")
    errors = [{"field": describe_key(key), "code": "unknown_field", "message": "未知字段。"}
              for key in sorted(set(data) - RECONCILE_FIELDS)]
    if data.get("mode") not in ("run", "dry_run"):
        errors.append({"field": "mode", "code": "invalid_choice", "message": "必须是“run”或“dry_run”。"})
    for flag in ("repair", "force"):
        if flag in data and not isinstance(data[flag], bool):
            errors.append({"field": flag, "code": "invalid_type", "message": "必须是 true 或 false。"})
    systems = data.get("systems")
    if systems is not None:
        if not isinstance(systems, list) or not systems:
            errors.append({"field": "systems", "code": "invalid_type", "message": "必须是非空列表。"})
        else:
            for index, system in enumerate(systems):
                if system not in settings.PROVISIONING_SYSTEMS or systems.index(system) != index:
                    errors.append({"field": f"systems[{index}]", "code": "invalid_choice",
                                   "message": f"必须是以下之一：{', '.join(settings.PROVISIONING_SYSTEMS)}，"
                                              "每个最多一次。"})
    if errors:
        raise PayloadInvalid(f"请求中有 {len(errors)} 个字段无效。", errors=errors)
    return {"dry_run": data["mode"] == "dry_run", "repair": data.get("repair", False),
            "force": data.get("force", False), "systems": systems}


class ReconcileAccountsView(APIView):
    permission_classes = [IsOperatorOrStaff]

    @extend_schema(operation_id="run_reconcile_accounts", summary="Run reconcile_accounts once, now",
                   request=ReconcileInputSerializer, parameters=[RETRY_AFTER_HEADER],
                   responses={200: RunSerializer, **error_responses(*BODY_ERRORS)},
                   description="Compares every target's accounts with ours, synchronously, and answers with the "
                               "stage run; its counts name the reconciliation (`reconciliation_id`). A run that "
                               "fails answers 500 (`stage_failed`, with the `runId`).")
    def post(self, request):
        options = _reconcile_input(request.data)
        try:
            run = stage_run(stage=TaskRun.Stage.RECONCILE_ACCOUNTS, trigger=TaskRun.Trigger.API,
                            triggered_by=principal_name(request.user), **options)
        except Exception as exc:
            last = TaskRun.objects.filter(stage=TaskRun.Stage.RECONCILE_ACCOUNTS).order_by("-id").first()
            raise StageFailed(f"阶段 reconcile_accounts 运行失败：{type(exc).__name__}: {exc}",
                              extra={"runId": last.pk if last else None}) from exc
        audit_record(actor=request.user, action=Action.STAGE_RUN, target=run,
                     details={"dryRun": run.dry_run, "repair": options["repair"], "force": options["force"]})
        return Response(run_document(run), status=status.HTTP_200_OK)


def finding_document(finding: ReconciliationFinding) -> dict:
    return {"system": finding.system, "employeeNumber": finding.employee_number or None, "kind": finding.kind,
            "field": finding.field or None, "ours": finding.ours or None, "theirs": finding.theirs or None,
            "externalId": finding.external_id or None, "repair": finding.repair or None}


def reconciliation_document(run: ReconciliationRun) -> dict:
    return {"id": run.pk, "status": run.status, "status_display": run.get_status_display(), "mode": run.mode,
            "repair": run.repair, "force": run.force, "startedAt": iso_utc(run.started_at),
            "finishedAt": iso_utc(run.finished_at), "systems": run.systems, "counts": run.counts,
            "compared": run.compared, "repairs": run.repairs, "note": run.note or None}


class FindingSerializer(StrictSerializer):
    system = serializers.CharField()
    employeeNumber = serializers.CharField(allow_null=True)
    kind = serializers.ChoiceField(choices=ReconciliationFinding.Kind.choices)
    field = serializers.CharField(allow_null=True, help_text="For a drift: email, full_name, phone_number, "
                                                             "department_code or active.")
    ours = serializers.CharField(allow_null=True)
    theirs = serializers.CharField(allow_null=True)
    externalId = serializers.CharField(allow_null=True)
    repair = serializers.ChoiceField(choices=[c for c in ReconciliationFinding.Repair.values if c], allow_null=True)


class ReconciliationSerializer(StrictSerializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=ReconciliationRun.Status.choices)
    status_display = serializers.CharField()
    mode = serializers.ChoiceField(choices=ReconciliationRun.Mode.choices)
    repair = serializers.BooleanField()
    force = serializers.BooleanField()
    startedAt = serializers.DateTimeField()
    finishedAt = serializers.DateTimeField(allow_null=True)
    systems = serializers.ListField(child=serializers.CharField())
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Findings per kind.")
    compared = serializers.JSONField(help_text="Per system: target accounts read, ours compared, whether orphans "
                                               "could be checked, where a failed run stopped.")
    repairs = serializers.JSONField(help_text="Per system: repairs planned and opened, the guard's limit, held.")
    note = serializers.CharField(allow_null=True)


FindingPageSerializer = page_serializer("FindingPageSerializer", FindingSerializer)


class ReconciliationDetailSerializer(ReconciliationSerializer):
    findings = FindingPageSerializer(help_text="One page of the findings (`page`, `page_size`).")


ReconciliationPageSerializer = page_serializer("ReconciliationPageSerializer", ReconciliationSerializer)


class ReconciliationListView(APIView):
    permission_classes = [IsOperatorOrStaff]

    @extend_schema(operation_id="list_reconciliations", summary="Reconciliation runs, newest first",
                   parameters=[*page_parameters(), RETRY_AFTER_HEADER],
                   responses={200: ReconciliationPageSerializer, **error_responses(400, 404)})
    def get(self, request):
        query = QueryParams(request)
        query.integer("page", minimum=1, maximum=PAGE_MAX)
        query.integer("page_size", minimum=1, maximum=PAGE_SIZE_MAX)
        query.check()
        paginator = Pagination()
        page = paginator.paginate_queryset(ReconciliationRun.objects.order_by("-started_at", "-id"), request,
                                           view=self)
        return paginator.get_paginated_response([reconciliation_document(run) for run in page])


class ReconciliationDetailView(APIView):
    permission_classes = [IsOperatorOrStaff]

    @extend_schema(operation_id="get_reconciliation", summary="One reconciliation run and a page of its findings",
                   parameters=[OpenApiParameter("run_id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                                                OpenApiParameter.PATH),
                               OpenApiParameter("system", str, enum=list(System.values)),
                               OpenApiParameter("kind", str, enum=ReconciliationFinding.Kind.values),
                               *page_parameters(), RETRY_AFTER_HEADER],
                   responses={200: ReconciliationDetailSerializer, **error_responses(400, 404)})
    def get(self, request, run_id: str):
        query = QueryParams(request)
        system = query.choice("system", list(System.values))
        kind = query.choice("kind", ReconciliationFinding.Kind.values)
        query.integer("page", minimum=1, maximum=PAGE_MAX)
        query.integer("page_size", minimum=1, maximum=PAGE_SIZE_MAX)
        query.check()
        run = ReconciliationRun.objects.filter(pk=int(run_id)).first() if run_id.isdigit() and \
            len(run_id) < 19 else None
        if run is None:
            raise RunNotFound(f"对账 {describe_key(run_id)!r} 不存在。")
        findings = run.findings.order_by("system", "kind", "employee_number", "id")
        if system:
            findings = findings.filter(system=system)
        if kind:
            findings = findings.filter(kind=kind)
        paginator = Pagination()
        page = paginator.paginate_queryset(findings, request, view=self)
        document = reconciliation_document(run)
        document["findings"] = paginator.get_paginated_response(
            [finding_document(f) for f in page]).data
        return Response(document)


class RunNotFound(ServiceError):
    code = "not_found"
    status_code = 404
    default_message = "未找到。"
