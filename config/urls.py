"""URL routes: both APIs, the start page, the dashboard and probes, the schema and its pages, the admin."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

urlpatterns = [
    path("account-creation/", include("syncservice.api.urls")),
    path("task-management/", include("taskmanagement.urls")),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[]),
         name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[],
                                                      authentication_classes=[]), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="syncservice/redoc.html",
                                                    permission_classes=[], authentication_classes=[]),
         name="api-redoc"),
    # Before the admin's own routes, whose catch-all would answer /admin/dashboard/ with a 404.
    path("", include("taskmanagement.site_urls")),
    path("admin/", admin.site.urls),
]

# A path the API does not have answers in the API's error shape; any other, Django's 404 page.
handler404 = "syncservice.api.exceptions.page_not_found"

admin.site.site_header = "账号开通服务管理后台"
admin.site.site_title = "账号开通服务"
admin.site.index_title = "管理"
admin.site.index_template = "admin/aps_index.html"
