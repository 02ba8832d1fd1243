"""Runs of the pipeline stages: a TaskRun for each run worth keeping, a heartbeat per stage for every run."""

from django.db import models


class TaskRun(models.Model):
    class Stage(models.TextChoices):
        SYNC_HR_PERSONS = "sync_hr_persons", "HR 数据同步"
        CREATE_ACCOUNT_TASKS = "create_account_tasks", "账号任务创建"
        PROCESS_ACCOUNT_TASKS = "process_account_creation_tasks", "账号任务处理"
        PURGE_ACCOUNT_REQUESTS = "purge_account_requests", "过期请求清理"
        RECONCILE_ACCOUNTS = "reconcile_accounts", "账号对账"

    class Trigger(models.TextChoices):
        CRON = "cron", "定时任务"
        API = "api", "接口"
        COMMAND = "command", "命令行"
        SCHEDULER = "scheduler", "调度循环"

    class Outcome(models.TextChoices):
        RUNNING = "running", "运行中"
        SUCCEEDED = "succeeded", "成功"
        FAILED = "failed", "失败"

    stage = models.CharField("阶段", max_length=64, choices=Stage.choices)
    trigger = models.CharField("触发方式", max_length=16, choices=Trigger.choices)
    dry_run = models.BooleanField("试运行", default=False)
    outcome = models.CharField("结果", max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    counts = models.JSONField("统计", default=dict, blank=True)
    summary = models.TextField("摘要", blank=True, default="")
    started_at = models.DateTimeField("开始时间", auto_now_add=True)
    finished_at = models.DateTimeField("结束时间", null=True, blank=True)
    host = models.CharField("主机", max_length=128, blank=True, default="")
    pid = models.IntegerField("进程号", null=True, blank=True)
    triggered_by = models.CharField("触发者", max_length=128, blank=True, default="")

    class Meta:
        verbose_name = "阶段运行记录"
        verbose_name_plural = "阶段运行记录"
        indexes = [models.Index(fields=["stage", "-started_at"], name="taskrun_stage_recent")]

    def __str__(self):
        return f"{self.get_stage_display()} {self.started_at:%Y-%m-%d %H:%M:%S}：{self.get_outcome_display()}"


class StageHeartbeat(models.Model):
    """The last run of one stage, idle or not: what readiness and the dashboard read.

    An idle scheduled run (cron, run_scheduler: nothing claimed, nothing done) keeps no TaskRun; this row is
    how it is still known that the stage is alive. Dry runs prove nothing about the schedule and leave it alone.
    """

    stage = models.CharField("阶段", max_length=64, choices=TaskRun.Stage.choices, unique=True)
    last_checked_at = models.DateTimeField("最近检查")
    last_outcome = models.CharField("最近结果", max_length=16, choices=TaskRun.Outcome.choices)
    last_succeeded_at = models.DateTimeField("最近成功", null=True, blank=True)
    last_duration_ms = models.IntegerField("最近耗时(ms)", default=0)

    class Meta:
        verbose_name = "阶段心跳"
        verbose_name_plural = "阶段心跳"

    def __str__(self):
        return f"{self.get_stage_display()} {self.last_checked_at:%Y-%m-%d %H:%M:%S}：{self.get_last_outcome_display()}"

