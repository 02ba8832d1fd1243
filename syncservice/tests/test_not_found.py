"""With debug off, a path under the API that names no endpoint answers 404 in the API's one error shape;
any other unknown path keeps Django's HTML 404 page."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.views import APIView

from syncservice.api.exceptions import API_PATH_PREFIXES

pytestmark = pytest.mark.django_db

# Documents about the API rather than the API: pages for people and the schema.
API_DOCUMENT_ROUTES = {"api/schema/", "api/docs/", "api/redoc/"}


@pytest.fixture(autouse=True)
def debug_off(settings):
    settings.DEBUG = False  # Django's handler404 answers only then; with debug on, its technical page does


def assert_api_not_found(response):
    assert response.status_code == 404, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["success"] is False and body["code"] == "not_found" and body["errors"] == []
    assert "/api/schema/" in body["message"]
    return body


@pytest.mark.parametrize("path", [
    "/account-creation/nope/", "/task-management/nope/", "/account-creation/", "/task-management/",
    "/account-creation/create_accounts/extra/", "/task-management/runs/1/", "/account-creation/nope",
])
@pytest.mark.parametrize("method", ["get", "post", "put", "delete"])
def test_an_unknown_path_under_the_api_answers_404_in_the_error_shape(client, path, method):
    assert_api_not_found(getattr(client, method)(path))


def test_the_404_of_an_unknown_path_has_the_shape_of_the_apis_own_404s(hr_caller):
    unknown = assert_api_not_found(hr_caller.get("/account-creation/nope/"))
    no_such_request = hr_caller.get("/account-creation/requests/req_20250121_0123456789ab/")
    assert no_such_request.status_code == 404
    assert set(unknown) == set(no_such_request.json())


@pytest.mark.parametrize("path", ["/nope/", "/account-creationx/", "/api/nope/", "/static/nope.css"])
def test_an_unknown_path_elsewhere_keeps_djangos_html_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_an_unknown_admin_page_keeps_djangos_html_404(staff_client):
    response = staff_client.get("/admin/nope/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def api_endpoint_routes() -> list[str]:
    """The route of every DRF view the project serves, the schema's documents aside."""
    found = []

    def walk(patterns, prefix: str):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                view_class = getattr(pattern.callback, "cls", None)
                route = prefix + str(pattern.pattern)
                is_api_view = isinstance(view_class, type) and issubclass(view_class, APIView)
                if is_api_view and route not in API_DOCUMENT_ROUTES:
                    found.append("/" + route)

    walk(get_resolver().url_patterns, "")
    return found


def test_the_api_prefixes_are_where_the_api_endpoints_are():
    routes = api_endpoint_routes()
    assert [route for route in routes if not route.startswith(API_PATH_PREFIXES)] == []
    assert {prefix for prefix in API_PATH_PREFIXES if any(route.startswith(prefix) for route in routes)} \
        == set(API_PATH_PREFIXES)
