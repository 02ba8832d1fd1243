"""Stage runs in the admin: what ran, when, how it ended; when each stage last checked for work; and the audit
trail of what operators did."""

from django.apps import apps
from django.contrib import admin

from syncservice.models import AuditEntry

from .dashboard import run_summary
from .models import StageHeartbeat, TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ("id", "stage", "trigger", "dry_run_mark", "outcome", "summary_display", "started_at",
                    "finished_at", "host")
    list_filter = ("stage", "outcome", "trigger", "dry_run")
    search_fields = ("summary", "host", "triggered_by")
    # The stored summary is English (for the logs and the API); the page shows the Chinese one.
    fields = ["summary_display" if f.name == "summary" else f.name for f in TaskRun._meta.fields]
    readonly_fields = fields
    date_hierarchy = "started_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="摘要")
    def summary_display(self, obj):
        return run_summary(obj)

    # Django's boolean icons would mark every real run with a red cross, which reads as an error.
    @admin.display(description="试运行", ordering="dry_run")
    def dry_run_mark(self, obj):
        return "是" if obj.dry_run else ""


@admin.register(StageHeartbeat)
class StageHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("stage", "last_checked_at", "last_outcome", "last_succeeded_at", "last_duration_ms")
    readonly_fields = [f.name for f in StageHeartbeat._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit trail, read only: nobody adds, changes or deletes an entry, not even a superuser."""

    list_display = ("created_at", "actor_type", "actor", "action", "object_type_display", "object_repr",
                    "object_id", "request_id")
    list_filter = ("action", "actor_type", "created_at")
    search_fields = ("object_id", "object_repr", "request_id", "actor")
    date_hierarchy = "created_at"
    fields = ("created_at", "actor_type", "actor", "actor_user", "actor_client", "action", "object_type",
              "object_id", "object_repr", "request_id", "details")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="对象类型", ordering="object_type")
    def object_type_display(self, obj):
        try:
            return apps.get_model(obj.object_type)._meta.verbose_name
        except (LookupError, ValueError):  # a model since removed
            return obj.object_type
