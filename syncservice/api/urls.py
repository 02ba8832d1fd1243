from django.urls import path

from . import views

urlpatterns = [
    path("create_accounts/", views.CreateAccountsView.as_view(), name="account-creation-create"),
    path("requests/", views.RequestListView.as_view(), name="account-creation-request-list"),
    path("requests/<str:request_id>/", views.RequestDetailView.as_view(), name="account-creation-request-detail"),
    path("requests/<str:request_id>/cancel/", views.RequestCancelView.as_view(), name="account-creation-request-cancel"),
    path("requests/<str:request_id>/retry/", views.RequestRetryView.as_view(), name="account-creation-request-retry"),
]
