"""Django Admin for operators: requests, items, persons, accounts, tasks and API clients."""

from urllib.parse import urlencode, urlsplit

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from config.logging import mask_phone, mask_phones

from . import selectors
from .audit import Action, audit_record
from .db.locking import wait_locked
from .errors import InvalidTransition
from .models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    AccountEvent,
    ApiClient,
    HrPerson,
    HrSyncState,
    Notification,
    OrphanAction,
    ReconciliationFinding,
    ReconciliationRun,
    System,
    TaskAttempt,
)
from .services.clients import api_client_set_active
from .services.lifecycle import items_retry, request_cancel, request_retry, tasks_retry
from .services.notifications import notifications_resend
from .services.orphan_actions import orphans_disable
from .services.reconciliation import orphans_link


class AuditedActionsMixin:
    """Admin actions leave, per object they change, an AuditEntry and a LogEntry (the object's history page)."""

    def audit(self, request, obj, action: str, details: dict | None = None) -> None:
        audit_record(actor=request.user, action=action, target=obj, details=details)
        self.log_change(request, obj, Action(action).label)


# The colour of a status, whatever the model: these words mean the same in requests, items, tasks, accounts
# and notifications. A status not named here is shown neutral.
STATUS_TONES = {
    "pending": "neutral", "not_created": "neutral",
    "processing": "active", "synced": "active", "task_created": "active", "running": "active",
    "waiting": "active", "creating": "active", "sending": "active", "updating": "active",
    "completed": "ok", "succeeded": "ok", "created": "ok", "delivered": "ok", "linked": "ok",
    "partial_failed": "warn", "blocked": "warn",
    "failed": "bad",
    "cancelled": "muted", "retried": "muted", "disabled": "muted",
}
CONSOLE_MEDIA = {"all": ["syncservice/console.css"]}


def status_badge(value: str, label: str):
    return format_html('<span class="aps-badge aps-tone-{}" data-status="{}">{}</span>',
                       STATUS_TONES.get(value, "neutral"), value, label)


class StatusBadgeMixin:
    """A `status_badge` column and read-only field: the model's status as a coloured badge."""

    class Media:
        css = CONSOLE_MEDIA

    @admin.display(description="状态", ordering="status")
    def status_badge(self, obj):
        return status_badge(obj.status, obj.get_status_display())


def with_badge(fields) -> list[str]:
    """A model's fields for a read-only page, the status shown as its badge."""
    return ["status_badge" if name == "status" else name for name in fields]


class ReadOnlyAdminMixin:
    """Rows written by the pipeline: operators look, they do not edit by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ApiClient)
class ApiClientAdmin(AuditedActionsMixin, admin.ModelAdmin):
    list_display = ("name", "origin_system", "is_operator", "is_active", "default_priority", "token_hint",
                    "notify_email", "has_webhook_secret", "last_used_at", "created_at")
    list_filter = ("is_active", "is_operator", "origin_system")
    search_fields = ("name", "origin_system")
    readonly_fields = ("token_hint", "has_webhook_secret", "created_at", "last_used_at")
    fields = ("name", "origin_system", "is_operator", "is_active", "default_priority", "token_hint",
              "notify_email", "has_webhook_secret", "created_at", "last_used_at")
    actions = ["disable_clients", "enable_clients"]

    # Whether a secret is set, never the secret: it is shown once, by `create_api_client --rotate-webhook-secret`.
    @admin.display(description="已设置回调密钥", boolean=True)
    def has_webhook_secret(self, obj):
        return bool(obj.webhook_secret_encrypted)

    def has_add_permission(self, request):
        # Tokens are shown once, on the command line: `python manage.py create_api_client [--rotate]`.
        return False

    @admin.action(description="停用所选客户端")
    def disable_clients(self, request, queryset):
        count = self._set_active(request, queryset, is_active=False)
        self.message_user(request, f"已停用 {count} 个客户端。")

    @admin.action(description="启用所选客户端")
    def enable_clients(self, request, queryset):
        count = self._set_active(request, queryset, is_active=True)
        self.message_user(request, f"已启用 {count} 个客户端。")

    def _set_active(self, request, queryset, *, is_active: bool) -> int:
        action = Action.CLIENT_ENABLE if is_active else Action.CLIENT_DISABLE
        count = 0
        for client in queryset.exclude(is_active=is_active):
            with transaction.atomic():
                if api_client_set_active(client=client, is_active=is_active):
                    self.audit(request, client, action)
                    count += 1
        return count

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # The change form writes its own LogEntry; the audit trail gets the fields' names, never their values.
        if change and form.changed_data:
            action = Action.CLIENT_CHANGE
            if "is_active" in form.changed_data:
                action = Action.CLIENT_ENABLE if obj.is_active else Action.CLIENT_DISABLE
            audit_record(actor=request.user, action=action, target=obj, details={"fields": form.changed_data})


# Rows of the attempt table on an item's page; the API's item log pages through all of them.
ATTEMPT_LOG_ROWS = 200
SYSTEM_LABELS = dict(System.choices)


class RequestItemInline(StatusBadgeMixin, admin.TabularInline):
    model = AccountCreationRequestItem
    fields = ("employee_number", "employee_name", "masked_phone", "department_code", "status_badge", "hr_person",
              "error_message", "updated_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    max_num = 0

    @admin.display(description="电话号码")
    def masked_phone(self, obj):
        return mask_phone(obj.phone_number) if obj.phone_number else ""


def progress_bar(*, total: int, completed: int, failed: int, cancelled: int):
    """Completed (green), failed (red) and cancelled (grey) parts of a request, side by side: a request that
    partly failed never shows the full green bar a completed one does."""
    def share(n: int) -> str:
        return f"{n * 100 / total:.1f}" if total else "0"

    title = f"已完成 {completed}，失败 {failed}，已取消 {cancelled}，共 {total}"
    return format_html(
        '<div class="aps-progress" title="{}" data-completed="{}" data-failed="{}">'
        '<div class="aps-progress-bar"><span class="aps-progress-ok" style="width:{}%"></span>'
        '<span class="aps-progress-bad" style="width:{}%"></span>'
        '<span class="aps-progress-muted" style="width:{}%"></span></div>'
        '<span class="aps-progress-text">{}/{}</span></div>',
        title, completed, failed, share(completed), share(failed), share(cancelled), completed, total)


def error_summary_table(summary: dict | None):
    """errorSummary as operators read it: one row per reason, the systems and the employee numbers."""
    if not summary:
        return "—"
    operations = dict(AccountCreationTask.Operation.choices)
    rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
        (SYSTEM_LABELS.get(group.get("system"), group.get("system")) or "—",
         operations.get(group.get("operation"), "—"), group.get("reason") or "—", group.get("count", 0),
         "、".join(group.get("employeeNumbers", [])) or "—")
        for group in summary.get("reasons", [])))
    return format_html('<p>失败用户 {} 人</p><table class="aps-summary"><thead><tr><th>系统</th><th>操作</th>'
                       '<th>原因</th><th>人数</th><th>员工编号</th></tr></thead><tbody>{}</tbody></table>',
                       summary.get("failedUsers", 0), rows)


def changelist_url(model, **filters) -> str:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


@admin.register(AccountCreationRequest)
class AccountCreationRequestAdmin(StatusBadgeMixin, AuditedActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    # Fits 1366 px beside both side bars: origin, business key, type and priority share a column, the counts
    # live in the bar.
    list_display = ("request_id_column", "origin_column", "status_badge", "progress_column", "failed_column",
                    "created_column")
    list_display_links = ("request_id_column",)
    list_filter = ("status", "request_type", "origin_system", "created_at")
    search_fields = ("request_id", "business_key", "items__employee_number")
    fields = with_badge(f.name for f in AccountCreationRequest._meta.fields
                        if f.name not in ("error_summary", "error_history")) + [
        "progress_column", "item_counts", "error_summary_table", "error_history_table"]
    readonly_fields = fields
    inlines = [RequestItemInline]
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    actions = ["cancel_requests", "retry_requests"]
    change_form_template = "admin/syncservice/request_change_form.html"

    @admin.action(description="取消所选请求")
    def cancel_requests(self, request, queryset):
        done = self._apply_each(request, queryset, request_cancel, Action.REQUEST_CANCEL)
        self.message_user(request, f"已取消（或正在取消）{done} 个请求。")

    @admin.action(description="重试所选请求的失败用户")
    def retry_requests(self, request, queryset):
        done = self._apply_each(request, queryset, request_retry, Action.REQUEST_RETRY)
        self.message_user(request, f"已重试 {done} 个请求。")

    def _apply_each(self, request, queryset, action, audit_action: str) -> int:
        """Apply a lifecycle action to every selected request; report the ones it does not apply to."""
        done = 0
        for account_request in queryset:
            try:
                with transaction.atomic():
                    changed = action(request=account_request)
                    self.audit(request, changed, audit_action)
                done += 1
            except InvalidTransition as exc:
                self.message_user(request, exc.message, level=messages.WARNING)
        return done

    # The buttons on a request's page run the list's own actions on that one request: the same permission
    # check (the action is offered to this user), the same service call, audit entry and history entry.
    BUTTON_ACTIONS = {"cancel": "cancel_requests", "retry": "retry_requests"}

    def get_urls(self):
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path("by-request-id/<str:request_id>/", self.admin_site.admin_view(self.by_request_id_view),
                 name=f"{info}_by_request_id"),
            path("<path:object_id>/<str:button>/run/", self.admin_site.admin_view(require_POST(self.button_view)),
                 name=f"{info}_button"),
        ]
        return own + super().get_urls()

    def by_request_id_view(self, request, request_id: str):
        """/admin/…/accountcreationrequest/by-request-id/<requestId>/: the request's page, by the id callers know."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        found = get_object_or_404(AccountCreationRequest, request_id=request_id)
        return HttpResponseRedirect(reverse("admin:syncservice_accountcreationrequest_change", args=[found.pk]))

    def button_view(self, request, object_id: str, button: str):
        action_name = self.BUTTON_ACTIONS.get(button)
        actions = self.get_actions(request)
        # What the changelist asks before it runs an action: may the user see the list, is the action offered.
        if not self.has_view_or_change_permission(request) or action_name not in actions:
            raise PermissionDenied
        queryset = self.get_queryset(request).filter(pk=object_id)
        if not queryset.exists():
            raise PermissionDenied
        func, _, _ = actions[action_name]
        func(self, request, queryset)
        return HttpResponseRedirect(reverse("admin:syncservice_accountcreationrequest_change", args=[object_id]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        actions = self.get_actions(request)
        buttons = []
        if obj is not None:
            if obj.status in (AccountCreationRequest.Status.PARTIAL_FAILED, AccountCreationRequest.Status.FAILED) \
                    and "retry_requests" in actions:
                buttons.append({"name": "retry", "label": "重试失败用户", "danger": False})
            if not obj.is_final and "cancel_requests" in actions:
                buttons.append({"name": "cancel", "label": "取消请求", "danger": True})
        extra_context = {**(extra_context or {}), "aps_buttons": buttons}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_queryset(self, request):
        return selectors.requests_with_item_counts(super().get_queryset(request))

    def get_search_results(self, request, queryset, search_term):
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        return queryset.distinct(), False

    @admin.display(description="请求ID", ordering="request_id")
    def request_id_column(self, obj):
        return obj.request_id

    @admin.display(description="来源 / 业务键", ordering="origin_system")
    def origin_column(self, obj):
        notes = []
        if obj.request_type != AccountCreationRequest.RequestType.CREATE:
            notes.append(obj.get_request_type_display())
        if obj.priority:
            notes.append(f"优先级 {obj.priority}")
        return format_html("{}{}<small>{}</small>", obj.origin_system,
                           format_html('<span class="aps-note">{}</span>', "，".join(notes)) if notes else "",
                           obj.business_key)

    @admin.display(description="创建时间", ordering="created_at")
    def created_column(self, obj):
        return timezone.localtime(obj.created_at).strftime("%m-%d %H:%M")

    @admin.display(description="进度")
    def progress_column(self, obj):
        return progress_bar(total=obj.total_users, completed=obj.completed_items, failed=obj.failed_items,
                            cancelled=obj.cancelled_items)

    @admin.display(description="失败人数", ordering="failed_items")
    def failed_column(self, obj):
        if not obj.failed_items:
            return format_html('<span class="aps-zero" data-failed="{}">{}</span>', 0, 0)
        url = changelist_url(AccountCreationRequestItem, request__id__exact=obj.pk, status__exact="failed")
        return format_html('<a class="aps-failed-count" data-failed="{}" href="{}">{}</a>',
                           obj.failed_items, url, obj.failed_items)

    @admin.display(description="各状态人数")
    def item_counts(self, obj):
        counts = obj.items.values("status").annotate(n=Count("id")).order_by("status")
        labels = dict(AccountCreationRequestItem.Status.choices)
        return "，".join(f"{labels.get(row['status'], row['status'])}: {row['n']}" for row in counts) or "-"

    @admin.display(description="错误摘要")
    def error_summary_table(self, obj):
        return error_summary_table(obj.error_summary)

    @admin.display(description="错误历史（重试前的失败）")
    def error_history_table(self, obj):
        if not obj.error_history:
            return "—"
        return format_html_join("", "<h4>{}（{}，重试于 {}）</h4>{}", (
            (AccountCreationRequest.Status(entry["status"]).label if entry.get("status") in
             AccountCreationRequest.Status.values else entry.get("status", ""),
             entry.get("completedAt") or "—", entry.get("retriedAt") or "—", error_summary_table(entry))
            for entry in obj.error_history))


class TaskInline(StatusBadgeMixin, admin.TabularInline):
    model = AccountCreationTask
    fields = ("system", "status_badge", "attempts", "max_attempts", "next_attempt_at", "last_error_code", "last_error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    max_num = 0


@admin.register(AccountCreationRequestItem)
class AccountCreationRequestItemAdmin(StatusBadgeMixin, AuditedActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("employee_number", "employee_name", "masked_phone", "request", "status_badge", "updated_at")
    list_filter = ("status", "request__origin_system")
    search_fields = ("employee_number", "request__request_id", "request__business_key")
    list_select_related = ("request",)
    exclude = ("phone_number",)
    fields = with_badge(f.name for f in AccountCreationRequestItem._meta.fields
                        if f.name != "phone_number") + ["masked_phone", "attempt_log"]
    readonly_fields = fields
    inlines = [TaskInline]
    actions = ["retry_items"]

    @admin.action(description="重试所选失败的用户")
    def retry_items(self, request, queryset):
        with transaction.atomic():
            # The selected items items_retry reopens, locked first so that the entries name exactly those.
            failed = list(wait_locked(AccountCreationRequestItem.objects.filter(
                pk__in=queryset.values("pk"), status=AccountCreationRequestItem.Status.FAILED,
                hr_person__isnull=False).order_by("id")))
            count = items_retry(items=failed)
            for item in failed:
                self.audit(request, item, Action.ITEM_RETRY)
        self.message_user(request, f"已重新排队 {count} 个失败的用户。")

    @admin.display(description="电话号码")
    def masked_phone(self, obj):
        return mask_phone(obj.phone_number) if obj.phone_number else ""

    @admin.display(description="执行记录")
    def attempt_log(self, obj):
        """Every call for this person to the request's systems, newest first: the API's item log, as a table."""
        if obj.pk is None:
            return "-"
        attempts = list(selectors.item_attempts(item=obj, systems=obj.request.system_list)[:ATTEMPT_LOG_ROWS + 1])
        if not attempts:
            return "暂无执行记录"
        rows = format_html_join("", "<tr>{}</tr>", (
            (format_html("<td>{}</td>" * 8, timezone.localtime(a.started_at).strftime("%Y-%m-%d %H:%M:%S"),
                         SYSTEM_LABELS.get(a.system, a.system), a.get_outcome_display(), a.attempt_number,
                         a.code or "-", mask_phones(a.message) or "-", a.duration_ms, a.worker or "-"),)
            for a in attempts[:ATTEMPT_LOG_ROWS]))
        note = format_html("<p>仅显示最近 {} 条。</p>", ATTEMPT_LOG_ROWS) if len(attempts) > ATTEMPT_LOG_ROWS else ""
        return format_html(
            "<table><thead><tr><th>时间</th><th>系统</th><th>结果</th><th>序号</th><th>目标系统代码</th>"
            "<th>目标系统信息</th><th>耗时(ms)</th><th>执行者</th></tr></thead><tbody>{}</tbody></table>{}",
            rows, note)


class AccountInline(StatusBadgeMixin, admin.TabularInline):
    model = Account
    fields = ("system", "status_badge", "enabled", "change_status", "external_id", "error_message", "provisioned_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


class AccountEventInline(admin.TabularInline):
    """The account's history at its target: created, updated (which fields), disabled, enabled."""

    model = AccountEvent
    fields = ("created_at", "operation", "fields", "result", "code", "message", "task")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    ordering = ("created_at", "id")


@admin.register(HrPerson)
class HrPersonAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("employee_number", "full_name", "email", "masked_phone", "person_type", "created_by",
                    "last_update_date")
    list_filter = ("created_by", "person_type")
    search_fields = ("employee_number", "full_name", "email")
    exclude = ("telephone_number1",)
    readonly_fields = [f.name for f in HrPerson._meta.fields if f.name != "telephone_number1"] + ["masked_phone"]
    inlines = [AccountInline]

    @admin.display(description="电话号码")
    def masked_phone(self, obj):
        return mask_phone(obj.telephone_number1) if obj.telephone_number1 else ""


@admin.register(Account)
class AccountAdmin(StatusBadgeMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("person", "system", "status_badge", "enabled", "change_status", "external_id", "provisioned_at",
                    "updated_at")
    list_filter = ("system", "status", "enabled", "change_status")
    search_fields = ("person__employee_number", "external_id")
    list_select_related = ("person",)
    fields = with_badge(f.name for f in Account._meta.fields) + ["history"]
    readonly_fields = fields
    inlines = [AccountEventInline]

    @admin.display(description="账号历史（创建与变更）")
    def history(self, obj):
        rows = [(timezone.localtime(entry["at"]).strftime("%Y-%m-%d %H:%M:%S"),
                 AccountCreationTask.Operation(entry["operation"]).label,
                 "、".join(entry["fields"]) or "—", "成功" if entry["result"] == "succeeded" else "失败",
                 entry["code"] or "—", mask_phones(entry["message"]) or "—")
                for entry in selectors.account_history(obj)]
        if not rows:
            return "—"
        return format_html("<table><tr><th>时间</th><th>操作</th><th>字段</th><th>结果</th><th>目标系统代码</th>"
                           "<th>目标系统信息</th></tr>{}</table>",
                           format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                                                "<td>{}</td></tr>", rows))


class AttemptInline(admin.TabularInline):
    model = TaskAttempt
    fields = ("attempt_number", "outcome", "code", "message", "duration_ms", "worker", "started_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    ordering = ("started_at",)


@admin.register(AccountCreationTask)
class AccountCreationTaskAdmin(StatusBadgeMixin, AuditedActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "person", "system", "operation", "status_badge", "priority", "attempts", "next_attempt_at",
                    "last_error_code", "locked_by", "updated_at")
    list_filter = ("status", "system", "operation")
    search_fields = ("person__employee_number", "request_item__request__request_id")
    list_select_related = ("person",)
    fields = with_badge(f.name for f in AccountCreationTask._meta.fields)
    readonly_fields = fields
    inlines = [AttemptInline]
    actions = ["retry_tasks"]

    @admin.action(description="重试所选失败的任务")
    def retry_tasks(self, request, queryset):
        with transaction.atomic():
            # One entry per failed task chosen: each gets a successor (a fresh task, or one already open).
            failed = list(queryset.filter(status=AccountCreationTask.Status.FAILED))
            count = tasks_retry(tasks=failed)
            for task in failed:
                self.audit(request, task, Action.TASK_RETRY)
        self.message_user(request, f"已为 {count} 个失败的任务创建新任务。")


@admin.register(TaskAttempt)
class TaskAttemptAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("task", "attempt_number", "outcome", "code", "duration_ms", "worker", "started_at")
    list_filter = ("outcome", "task__system")
    search_fields = ("task__person__employee_number", "code")
    readonly_fields = [f.name for f in TaskAttempt._meta.fields]


@admin.register(HrSyncState)
class HrSyncStateAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("name", "watermark_updated_at", "watermark_person_id", "last_run_at", "last_success_at",
                    "persons_synced")
    readonly_fields = [f.name for f in HrSyncState._meta.fields]


@admin.register(Notification)
class NotificationAdmin(StatusBadgeMixin, AuditedActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("message_id", "request", "channel", "target_display", "status_badge", "attempts",
                    "last_status_code", "next_attempt_at", "delivered_at")
    list_filter = ("status", "channel")
    search_fields = ("request__request_id", "message_id")
    list_select_related = ("request",)
    # Neither the payload (the status document holds phone numbers) nor the full callback URL (its query may
    # carry the receiver's token) is shown.
    fields = ("request", "channel", "target_display", "message_id", "status_badge", "attempts", "max_attempts",
              "next_attempt_at", "lease_expires_at", "last_status_code", "last_error", "created_at",
              "delivered_at")
    readonly_fields = fields
    ordering = ("-created_at",)
    actions = ["resend"]

    @admin.display(description="目标")
    def target_display(self, obj):
        if obj.channel != Notification.Channel.WEBHOOK:
            return obj.target
        try:
            parts = urlsplit(obj.target)
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "-"
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        return f"{parts.scheme}://{host}{port}/…"

    def has_resend_permission(self, request):
        return request.user.has_perm("syncservice.change_notification")

    @admin.action(description="重新发送", permissions=["resend"])
    def resend(self, request, queryset):
        with transaction.atomic():
            failed = list(wait_locked(Notification.objects.filter(
                pk__in=queryset.values("pk"), status=Notification.Status.FAILED).order_by("id")))
            count = notifications_resend(notifications=failed)
            for notification in failed:
                self.audit(request, notification, Action.NOTIFICATION_RESEND)
        self.message_user(request, f"已将 {count} 条失败的通知重新排队发送。")


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "status", "mode", "repair", "force", "started_at", "finished_at", "counts", "note")
    list_filter = ("status", "mode", "repair")
    readonly_fields = [f.name for f in ReconciliationRun._meta.fields]
    ordering = ("-started_at",)


@admin.register(ReconciliationFinding)
class ReconciliationFindingAdmin(AuditedActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("run", "system", "employee_number", "kind", "field", "ours", "theirs", "external_id", "repair",
                    "action_status")
    list_filter = ("run", "system", "kind", "repair")
    search_fields = ("employee_number", "external_id")
    readonly_fields = [*(f.name for f in ReconciliationFinding._meta.fields), "action_status"]
    list_select_related = ("run", "action")
    actions = ["link_orphans", "disable_orphans"]

    # Linking or disabling an orphan acts on a target: for those who may act on findings, not every viewer.
    def has_act_permission(self, request):
        return request.user.has_perm("syncservice.add_orphanaction")

    @admin.display(description="停用处理")
    def action_status(self, obj):
        action = getattr(obj, "action", None)
        if action is None:
            return "-"
        error = f"（{action.last_error_code} {action.last_error}）" if action.last_error else ""
        return f"{action.get_status_display()}{error}"

    @admin.action(description="停用所选目标系统多出的账号（仅改启用状态）", permissions=["act"])
    def disable_orphans(self, request, queryset):
        with transaction.atomic():
            opened, refused = orphans_disable(list(queryset), requested_by=request.user.get_username())
            for action in opened:
                self.audit(request, action.finding, Action.ORPHAN_DISABLE,
                           details={"system": action.system, "action": action.pk})
        if opened:
            self.message_user(request, f"已为 {len(opened)} 个账号发起停用，由处理阶段执行。")
        reasons = sorted(set(refused.values()))
        if reasons:
            self.message_user(request, f"{len(refused)} 项未停用：" + "；".join(reasons), messages.WARNING)

    @admin.action(description="将所选目标系统多出的账号关联到我方人员", permissions=["act"])
    def link_orphans(self, request, queryset):
        with transaction.atomic():
            chosen = list(queryset.filter(kind=ReconciliationFinding.Kind.ORPHAN).exclude(
                repair=ReconciliationFinding.Repair.OPENED))
            linked = orphans_link(chosen)
            for finding in chosen:
                finding.refresh_from_db()
                if finding.repair == ReconciliationFinding.Repair.OPENED:
                    self.audit(request, finding, Action.ORPHAN_LINK)
        self.message_user(request, f"已关联 {linked} 个账号；"
                                   "其余所选项无法关联（无对应人员、我方已有账号或仍有任务）。")


@admin.register(OrphanAction)
class OrphanActionAdmin(StatusBadgeMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "system", "external_id", "employee_number", "operation", "status_badge", "attempts",
                    "last_error_code", "requested_by", "created_at", "finished_at")
    list_filter = ("status", "system", "operation")
    search_fields = ("external_id", "employee_number")
    fields = with_badge(f.name for f in OrphanAction._meta.fields if f.name != "lease_token")
    readonly_fields = fields
    ordering = ("-created_at",)
