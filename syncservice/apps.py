from django.apps import AppConfig


class SyncserviceConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "syncservice"
    verbose_name = "账号同步服务"
