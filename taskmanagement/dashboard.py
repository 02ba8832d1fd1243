"""The operators' dashboard page in the admin, and the Chinese summary of a stage run it and the admin show."""

from django.contrib import admin
from django.template.response import TemplateResponse

from syncservice.models import ReconciliationFinding, System

from . import charts
from .models import TaskRun
from .selectors import dashboard, dashboard_charts

SYSTEM_LABELS = dict(System.choices)
FINDING_LABELS = dict(ReconciliationFinding.Kind.choices)


def _by_system(counts: dict) -> str:
    return "，".join(f"{SYSTEM_LABELS.get(k, k)} {v}" for k, v in sorted(counts.items())) or "无"


def _sync(c: dict, dry_run: bool) -> str:
    if dry_run:
        return f"试运行：将领取 {c['requests_claimed']} 个待处理请求、同步 {c['items_synced']} 个请求项；未运行 HR 同步"
    return (f"领取 {c['requests_claimed']} 个请求，同步 {c['items_synced']} 个请求项"
            f"（新建人员 {c['persons_created']}，更新 {c['persons_updated']}）")


def _tasks(c: dict, dry_run: bool) -> str:
    if dry_run:
        return f"试运行：将为 {c['items_processed']} 个已同步请求项和 {c['hr_tasks_created']} 个 HR 同步账号创建任务"
    return (f"{c['items_processed']} 个请求项 → {c['tasks_created']} 个任务（{c['items_already_done']} 个已完成）；"
            f"HR 同步人员任务 {c['hr_tasks_created']} 个")


def _process(c: dict, dry_run: bool) -> str:
    if dry_run:
        return f"试运行：到期任务 {c['claimed']} 个（{_by_system(c.get('by_system', {}))}）"
    text = (f"处理 {c['claimed']} 个任务：成功 {c['succeeded']}，待重试 {c['retried']}，"
            f"等待目标系统 {c['waiting']}，失败 {c['failed']}")
    if c.get("fenced_off"):
        text += f"，丢弃 {c['fenced_off']}（租约已失）"
    if c.get("released"):
        text += f"，未开始即释放 {c['released']}"
    if c.get("notifications_delivered"):
        text += f"；送达通知 {c['notifications_delivered']} 条"
    if c.get("notifications_failed"):
        text += f"，通知最终失败 {c['notifications_failed']} 条"
    return text


def _purge(c: dict, dry_run: bool) -> str:
    verb = "将删除" if dry_run else "已删除"
    return f"{verb} {c['older_than_days']} 天前结束的请求 {c['requests']} 个、请求项 {c['items']} 个"


def _reconcile(c: dict, dry_run: bool) -> str:
    findings = "，".join(f"{FINDING_LABELS.get(kind, kind)} {n}" for kind, n in sorted(c["findings"].items()))
    text = f"对账 {c['reconciliation_id']}：比对 {_by_system(c['compared'])}；{findings or '无发现'}"
    if c["repairs_held"]:
        held = "、".join(SYSTEM_LABELS.get(s, s) for s in c["repairs_held"])
        text += f"；{held} 的修复被 RECONCILE_MAX_REPAIRS 拦下（可用 --force）"
    elif c["repairs_opened"]:
        text += f"；已发起 {c['repairs_opened']} 项修复"
    return text


DESCRIBE = {TaskRun.Stage.SYNC_HR_PERSONS: _sync, TaskRun.Stage.CREATE_ACCOUNT_TASKS: _tasks,
            TaskRun.Stage.PROCESS_ACCOUNT_TASKS: _process, TaskRun.Stage.PURGE_ACCOUNT_REQUESTS: _purge,
            TaskRun.Stage.RECONCILE_ACCOUNTS: _reconcile}


def run_summary(run: TaskRun) -> str:
    """A run's summary in Chinese, from its counts. The stored `summary` (English, for logs and the API) is the
    fallback: a run that failed or is still running has no counts to tell from."""
    describe = DESCRIBE.get(run.stage)
    if run.outcome == TaskRun.Outcome.SUCCEEDED and describe and run.counts:
        try:
            return describe(run.counts, run.dry_run)
        except (KeyError, TypeError, AttributeError):  # counts written by an older version of the stage
            pass
    if run.outcome == TaskRun.Outcome.FAILED:
        return f"运行失败：{run.summary}"
    return run.summary


def dashboard_view(request):
    board = dashboard()
    for entry in board["runs"].values():
        entry["summary"] = run_summary(entry["last"]) if entry["last"] else ""
    figures = dashboard_charts(board["now"])
    context = {
        **admin.site.each_context(request), "title": "运行概览", **board,
        "finished_chart": charts.finished_per_hour_chart(figures),
        "reasons_chart": charts.failure_reasons_chart(figures),
        "waiting_chart": charts.oldest_waiting_chart(figures),
    }
    return TemplateResponse(request, "admin/aps_dashboard.html", context)
