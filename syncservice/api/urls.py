from django.urls import path, register_converter

from . import views


class AnyRequestId:
    """Whatever stands in the request id's place, slashes and nothing included.

    The view refuses a malformed id with the API's JSON 404; a narrower converter would leave such paths to
    Django's HTML 404 page, which breaks the API's one error shape.
    """

    regex = ".*"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnyRequestId, "any_request_id")

# cancel/, retry/ and items/…/log/ come first: the detail route's id would swallow them.
urlpatterns = [
    path("create_accounts/", views.CreateAccountsView.as_view(), name="account-creation-create"),
    path("deactivate_accounts/", views.DeactivateAccountsView.as_view(), name="account-creation-deactivate"),
    path("requests/", views.RequestListView.as_view(), name="account-creation-request-list"),
    path("requests/<any_request_id:request_id>/items/<str:item_id>/log/", views.RequestItemLogView.as_view(),
         name="account-creation-request-item-log"),
    path("requests/<any_request_id:request_id>/cancel/", views.RequestCancelView.as_view(),
         name="account-creation-request-cancel"),
    path("requests/<any_request_id:request_id>/retry/", views.RequestRetryView.as_view(),
         name="account-creation-request-retry"),
    path("requests/<any_request_id:request_id>/", views.RequestDetailView.as_view(),
         name="account-creation-request-detail"),
]
