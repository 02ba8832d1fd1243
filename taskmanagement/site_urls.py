"""Routes at the site's root: the landing page, the operators' dashboard inside the admin, the probes."""

from django.contrib import admin
from django.urls import path
from django.views.generic import TemplateView

from .dashboard import dashboard_view
from .health import healthz, readyz
from .metrics import metrics_view

urlpatterns = [
    # Links to everything a person opens in a browser; the API's own paths answer only with a token.
    path("", TemplateView.as_view(template_name="taskmanagement/landing.html"), name="landing"),
    path("admin/dashboard/", admin.site.admin_view(dashboard_view), name="admin-dashboard"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # Prometheus's scrapes; 404 unless METRICS_ENABLED, and only with METRICS_TOKEN.
    path("metrics", metrics_view, name="metrics"),
]
