"""URL routes: the API, the task-management endpoints, the schema and the admin."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from taskmanagement.dashboard import dashboard_view
from taskmanagement.health import healthz, readyz

urlpatterns = [
    path("account-creation/", include("syncservice.api.urls")),
    path("task-management/", include("taskmanagement.urls")),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[]),
         name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[],
                                                      authentication_classes=[]), name="api-docs"),
    path("admin/dashboard/", admin.site.admin_view(dashboard_view), name="admin-dashboard"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]

admin.site.site_header = "账号开通服务管理后台"
admin.site.site_title = "账号开通服务"
admin.site.index_title = "管理"
admin.site.index_template = "admin/aps_index.html"
