"""Stage runs in the admin: what ran, when, how it ended."""

from django.contrib import admin

from .models import TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ("id", "stage", "trigger", "dry_run", "outcome", "summary", "started_at", "finished_at", "host")
    list_filter = ("stage", "outcome", "trigger", "dry_run")
    search_fields = ("summary", "host", "triggered_by")
    readonly_fields = [f.name for f in TaskRun._meta.fields]
    date_hierarchy = "started_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
