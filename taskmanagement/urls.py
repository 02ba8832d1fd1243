from django.urls import path

from . import api

urlpatterns = [
    path("sync_hr_persons/", api.SyncHrPersonsView.as_view(), name="task-sync-hr-persons"),
    path("create_account_tasks/", api.CreateAccountTasksView.as_view(), name="task-create-account-tasks"),
    path("process_account_tasks/", api.ProcessAccountTasksView.as_view(), name="task-process-account-tasks"),
    path("runs/", api.RunListView.as_view(), name="task-runs"),
    path("reconcile_accounts/", api.ReconcileAccountsView.as_view(), name="task-reconcile-accounts"),
    path("reconciliations/", api.ReconciliationListView.as_view(), name="task-reconciliations"),
    path("reconciliations/<str:run_id>/", api.ReconciliationDetailView.as_view(), name="task-reconciliation"),
]
