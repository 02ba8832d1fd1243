from django.apps import AppConfig


class TaskmanagementConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "taskmanagement"
    verbose_name = "任务管理"
