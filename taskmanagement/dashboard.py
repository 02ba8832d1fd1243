"""The operators' dashboard page in the admin."""

from django.contrib import admin
from django.template.response import TemplateResponse

from .selectors import dashboard


def dashboard_view(request):
    context = {**admin.site.each_context(request), "title": "运行概览", **dashboard()}
    return TemplateResponse(request, "admin/aps_dashboard.html", context)
