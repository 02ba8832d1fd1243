"""Routes at the site's root: the operators' dashboard inside the admin, and the load balancers' probes."""

from django.contrib import admin
from django.urls import path

from .dashboard import dashboard_view
from .health import healthz, readyz

urlpatterns = [
    path("admin/dashboard/", admin.site.admin_view(dashboard_view), name="admin-dashboard"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]
