"""Stage runs in the admin: what ran, when, how it ended; and when each stage last checked for work."""

from django.contrib import admin

from .models import StageHeartbeat, TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ("id", "stage", "trigger", "dry_run_mark", "outcome", "summary", "started_at", "finished_at",
                    "host")
    list_filter = ("stage", "outcome", "trigger", "dry_run")
    search_fields = ("summary", "host", "triggered_by")
    readonly_fields = [f.name for f in TaskRun._meta.fields]
    date_hierarchy = "started_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

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
