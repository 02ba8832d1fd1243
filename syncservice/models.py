"""Data model: persons, their accounts, the request buffer and the provisioning tasks."""

import hashlib
import re
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

THROTTLE_RATE_RE = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")


def validate_throttle_rate(value: str) -> None:
    if value and not THROTTLE_RATE_RE.match(value):
        raise ValidationError(f"{value!r} is not a rate like '120/min' or '10/s'.")


class System(models.TextChoices):
    IDAAS = "idaas", "IDaaS"
    WELINK = "welink", "WeLink"
    EMAIL = "email", "企业邮箱"


class ApiClient(models.Model):
    """A caller of the API: an origin system, or an operator bound to no origin."""

    TOKEN_PREFIX = "aps_"

    name = models.CharField("名称", max_length=100, unique=True)
    origin_system = models.CharField(
        "来源系统", max_length=64, blank=True, default="", db_index=True,
        help_text="此客户端可提交和查询的 originSystem；运维客户端留空。",
    )
    is_operator = models.BooleanField("运维客户端", default=False)
    is_active = models.BooleanField("启用", default=True)
    token_hash = models.CharField("令牌摘要", max_length=64, unique=True, editable=False)
    token_hint = models.CharField("令牌前缀", max_length=16, editable=False)
    default_priority = models.SmallIntegerField("默认优先级", default=0)
    throttle_rate = models.CharField(
        "限流速率", max_length=32, blank=True, default="", validators=[validate_throttle_rate],
        help_text="允许的请求速率，如 120/min 或 10/s；留空则用默认值（API_THROTTLE_RATE）。",
    )
    webhook_secret_encrypted = models.TextField("回调密钥（加密）", blank=True, default="", editable=False)
    notify_email = models.EmailField("通知邮箱", blank=True, default="",
                                     help_text="此客户端的请求结束时，向该地址发送邮件。")
    created_at = models.DateTimeField("创建时间", auto_now_add=True)
    last_used_at = models.DateTimeField("最近使用", null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API 客户端"
        verbose_name_plural = "API 客户端"
        constraints = [
            models.CheckConstraint(
                condition=Q(is_operator=True) | ~Q(origin_system=""),
                name="api_client_origin_or_operator",
            ),
        ]

    def __str__(self):
        return self.name

    # A DRF-authenticated principal: views and permissions check these like a user's.
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_staff(self) -> bool:
        return False

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()

    def set_new_token(self) -> str:
        """Give the client a fresh random token; return it (it is never stored in clear)."""
        token = self.TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.token_hash = self.hash_token(token)
        self.token_hint = token[:10]
        return token


class HrPerson(models.Model):
    """One person as the HR master data knows them, or as an origin system submitted them."""

    class CreatedBy(models.TextChoices):
        API = "account_creation_api", "账号创建接口"
        HR_SYNC = "hr_sync", "HR 同步"

    person_id = models.BigIntegerField("人员ID", unique=True)
    employee_number = models.CharField("员工编号", max_length=64, unique=True)
    full_name = models.CharField("姓名", max_length=100)
    telephone_number1 = models.CharField("电话号码", max_length=32, blank=True, default="")
    person_type = models.CharField("人员类型", max_length=64, blank=True, default="")
    employee_status = models.CharField("员工状态", max_length=64, blank=True, default="")
    tenant_id = models.CharField("租户", max_length=128, blank=True, default="")
    person_dept = models.JSONField("部门", default=list, blank=True)
    email = models.EmailField("邮箱", max_length=254, unique=True, null=True, blank=True)
    created_by = models.CharField("创建来源", max_length=32, choices=CreatedBy.choices)
    last_updated_by = models.CharField("最后更新来源", max_length=32, choices=CreatedBy.choices)
    creation_date = models.DateTimeField("创建时间", default=timezone.now)
    last_update_date = models.DateTimeField("最后更新时间", default=timezone.now, db_index=True)

    class Meta:
        verbose_name = "HR 人员"
        verbose_name_plural = "HR 人员"

    def __str__(self):
        return f"{self.employee_number} {self.full_name}"


class Account(models.Model):
    """A person's account in one target system.

    `status` is the account's creation; once it is `created`, `enabled` says whether the person should
    have it active (a leaver's is not), `applied` what the target was last given (the values and the
    active state), and `change_status` whether a change (update, disable, enable) is on its way or failed.
    """

    class Status(models.TextChoices):
        NOT_CREATED = "not_created", "未创建"
        CREATING = "creating", "创建中"
        CREATED = "created", "已创建"
        FAILED = "failed", "失败"

    class ChangeStatus(models.TextChoices):
        NONE = "", "无"
        UPDATING = "updating", "变更中"
        FAILED = "failed", "变更失败"

    person = models.ForeignKey(HrPerson, on_delete=models.CASCADE, related_name="accounts", verbose_name="人员")
    system = models.CharField("系统", max_length=16, choices=System.choices)
    status = models.CharField("状态", max_length=16, choices=Status.choices, default=Status.NOT_CREATED)
    external_id = models.CharField("目标系统ID", max_length=255, blank=True, default="")
    error_message = models.TextField("错误信息", blank=True, default="")
    created_at = models.DateTimeField("创建时间", auto_now_add=True)
    updated_at = models.DateTimeField("更新时间", auto_now=True)
    provisioned_at = models.DateTimeField("开通时间", null=True, blank=True)
    # Database defaults too: the stages insert accounts and tasks in set-based SQL that names the old columns.
    enabled = models.BooleanField("应启用", default=True, db_default=True,
                                  help_text="人员离职后（HR 或停用请求）为否。")
    applied = models.JSONField("目标系统现值", default=dict, db_default={}, blank=True,
                               help_text="最近一次写入目标系统的字段值与启用状态。")
    change_status = models.CharField("变更状态", max_length=16, choices=ChangeStatus.choices, blank=True,
                                     default=ChangeStatus.NONE, db_default=ChangeStatus.NONE)
    last_change = models.JSONField("最近变更", default=dict, db_default={}, blank=True,
                                   help_text="最近一次执行或尝试的变更：操作、字段、结果、代码。")

    class Meta:
        verbose_name = "账号"
        verbose_name_plural = "账号"
        constraints = [
            models.UniqueConstraint(fields=["person", "system"], name="account_unique_person_system"),
        ]
        indexes = [models.Index(fields=["system", "status"], name="account_system_status")]

    def __str__(self):
        return f"人员 {self.person_id} 的{self.get_system_display()}账号：{self.get_status_display()}"


class AccountCreationRequest(models.Model):
    """A batch submitted by an origin system: the buffer the scheduled stages work from."""

    class Status(models.TextChoices):
        PENDING = "pending", "待处理"
        PROCESSING = "processing", "处理中"
        COMPLETED = "completed", "已完成"
        PARTIAL_FAILED = "partial_failed", "部分失败"
        FAILED = "failed", "失败"
        CANCELLED = "cancelled", "已取消"

    class RequestType(models.TextChoices):
        CREATE = "create", "创建账号"
        DEACTIVATE = "deactivate", "停用账号"

    FINAL_STATUSES = (Status.COMPLETED, Status.PARTIAL_FAILED, Status.FAILED, Status.CANCELLED)

    request_id = models.CharField("请求ID", max_length=32, unique=True)
    request_type = models.CharField("请求类型", max_length=16, choices=RequestType.choices,
                                    default=RequestType.CREATE, db_default=RequestType.CREATE)
    origin_system = models.CharField("来源系统", max_length=64)
    business_key = models.CharField("业务键", max_length=128)
    account_type = models.CharField("账号类型", max_length=64)
    employee_type = models.CharField("员工类型", max_length=64)
    system_list = models.JSONField("系统列表", default=list)
    status = models.CharField("状态", max_length=16, choices=Status.choices, default=Status.PENDING)
    total_users = models.IntegerField("总用户数", default=0)
    processed_users = models.IntegerField("已处理用户数", default=0)
    error_summary = models.JSONField("错误摘要", null=True, blank=True)
    error_history = models.JSONField(
        "历史错误", default=list, blank=True,
        help_text="每次重试前的错误摘要（最早的在前），附当时的状态与重试时间。",
    )
    created_at = models.DateTimeField("创建时间", auto_now_add=True)
    updated_at = models.DateTimeField("更新时间", auto_now=True)
    completed_at = models.DateTimeField("完成时间", null=True, blank=True)
    client = models.ForeignKey(
        ApiClient, on_delete=models.SET_NULL, null=True, blank=True, related_name="requests", verbose_name="客户端"
    )
    priority = models.SmallIntegerField("优先级", default=0)
    cancel_requested_at = models.DateTimeField("取消时间", null=True, blank=True)
    callback_url = models.URLField("回调地址", max_length=2048, blank=True, default="")
    payload_fingerprint = models.CharField("请求指纹", max_length=64, editable=False)

    class Meta:
        verbose_name = "账号创建请求"
        verbose_name_plural = "账号创建请求"
        constraints = [
            models.UniqueConstraint(
                fields=["origin_system", "business_key"], name="request_unique_origin_business_key"
            ),
            models.CheckConstraint(
                condition=Q(processed_users__gte=0) & Q(processed_users__lte=models.F("total_users")),
                name="request_processed_within_total",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-priority", "created_at"], name="request_claim"),
            models.Index(fields=["origin_system", "-created_at"], name="request_origin_newest"),
        ]

    def __str__(self):
        return self.request_id

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES

    @property
    def progress(self) -> str:
        if not self.total_users:
            return "0.0%"
        return f"{self.processed_users * 100 / self.total_users:.1f}%"


class AccountCreationRequestItem(models.Model):
    """One person of a request."""

    class Status(models.TextChoices):
        PENDING = "pending", "待处理"
        SYNCED = "synced", "已同步"
        TASK_CREATED = "task_created", "已创建任务"
        COMPLETED = "completed", "已完成"
        FAILED = "failed", "失败"
        CANCELLED = "cancelled", "已取消"

    FINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    request = models.ForeignKey(
        AccountCreationRequest, on_delete=models.CASCADE, related_name="items", verbose_name="请求"
    )
    employee_number = models.CharField("员工编号", max_length=64)
    employee_name = models.CharField("员工姓名", max_length=100)
    department_code = models.CharField("部门代码", max_length=64, blank=True, default="")
    phone_number = models.CharField("电话号码", max_length=32)
    partner_company = models.CharField("合作公司", max_length=200, blank=True, default="")
    country = models.CharField("国家", max_length=64, blank=True, default="")
    status = models.CharField("状态", max_length=16, choices=Status.choices, default=Status.PENDING)
    hr_person = models.ForeignKey(
        HrPerson, on_delete=models.SET_NULL, null=True, blank=True, related_name="request_items",
        verbose_name="HR 人员",
    )
    error_message = models.TextField("错误信息", blank=True, default="")
    created_at = models.DateTimeField("创建时间", auto_now_add=True)
    updated_at = models.DateTimeField("更新时间", auto_now=True)

    class Meta:
        verbose_name = "账号创建请求项"
        verbose_name_plural = "账号创建请求项"
        constraints = [
            models.UniqueConstraint(
                fields=["request", "employee_number"], name="request_item_unique_employee"
            ),
        ]
        indexes = [
            # A stage batch takes one request's items in id order: a range scan of this index that stops early.
            models.Index(fields=["status", "request", "id"], name="request_item_stage"),
            models.Index(fields=["hr_person", "status"], name="request_item_person"),
            models.Index(fields=["employee_number"], name="request_item_employee"),
        ]

    def __str__(self):
        return f"{self.request_id}:{self.employee_number}"


class AccountCreationTask(models.Model):
    """The unit of work: make sure one person has an account in one target system, and keep it true.

    `operation` is `create`, or a change of an account that exists (`update`, `disable`, `enable`) whose
    wanted values are in `change`. A (person, system) has at most one open task of any operation.
    A person's IDaaS and WeLink creations wait `blocked` while their mailbox is being created: they carry the
    address the mail system confirmed (it may move to the next candidate when the first is taken there).
    """

    class Operation(models.TextChoices):
        CREATE = "create", "创建"
        UPDATE = "update", "更新"
        DISABLE = "disable", "停用"
        ENABLE = "enable", "启用"

    class Status(models.TextChoices):
        PENDING = "pending", "待执行"
        RUNNING = "running", "执行中"
        WAITING = "waiting", "等待目标系统"
        SUCCEEDED = "succeeded", "成功"
        FAILED = "failed", "失败"
        CANCELLED = "cancelled", "已取消"
        BLOCKED = "blocked", "等待邮箱开通"
        # A failed task a retry replaced with a fresh one: final, its failure no longer the account's.
        RETRIED = "retried", "已重试"

    OPEN_STATUSES = (Status.PENDING, Status.RUNNING, Status.WAITING, Status.BLOCKED)

    person = models.ForeignKey(HrPerson, on_delete=models.CASCADE, related_name="tasks", verbose_name="人员")
    system = models.CharField("系统", max_length=16, choices=System.choices)
    operation = models.CharField("操作", max_length=16, choices=Operation.choices, default=Operation.CREATE,
                                 db_default=Operation.CREATE)
    change = models.JSONField("变更内容", default=dict, db_default={}, blank=True,
                              help_text="变更要写入的字段值与启用状态；创建任务为空。")
    status = models.CharField("状态", max_length=16, choices=Status.choices, default=Status.PENDING)
    request_item = models.ForeignKey(
        AccountCreationRequestItem, on_delete=models.SET_NULL, null=True, blank=True, related_name="tasks",
        verbose_name="请求项",
    )
    priority = models.SmallIntegerField("优先级", default=0)
    attempts = models.IntegerField("尝试次数", default=0)
    max_attempts = models.IntegerField("最大尝试次数", default=5)
    next_attempt_at = models.DateTimeField("下次执行时间", default=timezone.now)
    lease_expires_at = models.DateTimeField("租约到期", null=True, blank=True)
    locked_by = models.CharField("执行者", max_length=128, blank=True, default="")
    lease_token = models.CharField("租约令牌", max_length=32, blank=True, default="", editable=False)
    backend_state = models.JSONField("目标系统状态", default=dict, blank=True)
    last_error_code = models.CharField("最近错误码", max_length=64, blank=True, default="")
    last_error = models.TextField("最近错误", blank=True, default="")
    created_at = models.DateTimeField("创建时间", auto_now_add=True)
    updated_at = models.DateTimeField("更新时间", auto_now=True)
    finished_at = models.DateTimeField("结束时间", null=True, blank=True)

    class Meta:
        verbose_name = "账号创建任务"
        verbose_name_plural = "账号创建任务"
        constraints = [
            models.UniqueConstraint(
                fields=["person", "system"],
                condition=Q(status__in=["pending", "running", "waiting", "blocked"]),
                name="task_one_open_per_person_system",
            ),
        ]
        indexes = [
            models.Index(
                fields=["system", "-priority", "next_attempt_at"],
                condition=Q(status__in=["pending", "waiting"]),
                name="task_due",
            ),
            models.Index(
                fields=["lease_expires_at"], condition=Q(status="running"), name="task_lease",
            ),
            models.Index(fields=["status", "system"], name="task_status_system"),
        ]

    def __str__(self):
        return (f"任务 {self.pk}（{self.get_system_display()}{self.get_operation_display()}，人员 {self.person_id}）："
                f"{self.get_status_display()}")


class TaskAttempt(models.Model):
    """One call to a target system for a task: what happened, verbatim."""

    class Outcome(models.TextChoices):
        CREATED = "created", "已创建"
        LINKED = "linked", "已关联"
        APPLIED = "applied", "已变更"
        IN_PROGRESS = "in_progress", "处理中"
        TRANSIENT = "transient", "临时失败"
        PERMANENT = "permanent", "永久失败"

    task = models.ForeignKey(AccountCreationTask, on_delete=models.CASCADE, related_name="attempt_log",
                             verbose_name="任务")
    attempt_number = models.IntegerField("尝试序号")
    outcome = models.CharField("结果", max_length=16, choices=Outcome.choices)
    code = models.CharField("目标系统代码", max_length=64, blank=True, default="")
    message = models.TextField("目标系统信息", blank=True, default="")
    duration_ms = models.IntegerField("耗时(ms)", default=0)
    worker = models.CharField("执行者", max_length=128, blank=True, default="")
    started_at = models.DateTimeField("开始时间")

    class Meta:
        verbose_name = "执行记录"
        verbose_name_plural = "执行记录"
        indexes = [models.Index(fields=["task", "started_at"], name="attempt_task")]

    def __str__(self):
        return f"任务 {self.task_id} 第 {self.attempt_number} 次执行：{self.get_outcome_display()}"


class AccountEvent(models.Model):
    """One thing that happened to an account at its target: created, updated (which fields), disabled,
    enabled, or a failed try of one of them, with the target's code. Written with the task's result."""

    class Result(models.TextChoices):
        SUCCEEDED = "succeeded", "成功"
        FAILED = "failed", "失败"

    # Written with every batch of results: no index but the (account, created_at) one the history reads.
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="events", verbose_name="账号",
                                db_index=False)
    task = models.ForeignKey(AccountCreationTask, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="+", verbose_name="任务", db_index=False)
    operation = models.CharField("操作", max_length=16, choices=AccountCreationTask.Operation.choices)
    fields = models.JSONField("变更字段", default=list, blank=True)
    result = models.CharField("结果", max_length=16, choices=Result.choices)
    code = models.CharField("目标系统代码", max_length=64, blank=True, default="")
    message = models.TextField("目标系统信息", blank=True, default="")
    created_at = models.DateTimeField("时间")

    class Meta:
        verbose_name = "账号历史"
        verbose_name_plural = "账号历史"
        indexes = [models.Index(fields=["account", "created_at"], name="account_event_account")]

    def __str__(self):
        return f"账号 {self.account_id} {self.get_operation_display()}：{self.get_result_display()}"


class HrSyncState(models.Model):
    """Watermark of the incremental HR sync: the (last_update_date, person_id) read up to."""

    name = models.CharField("名称", max_length=64, unique=True, default="default")
    watermark_updated_at = models.DateTimeField("水位时间", null=True, blank=True)
    watermark_person_id = models.BigIntegerField("水位人员ID", null=True, blank=True)
    last_run_at = models.DateTimeField("最近运行", null=True, blank=True)
    last_success_at = models.DateTimeField("最近成功", null=True, blank=True)
    last_error = models.TextField("最近错误", blank=True, default="")
    persons_synced = models.BigIntegerField("累计同步人数", default=0)

    class Meta:
        verbose_name = "HR 同步状态"
        verbose_name_plural = "HR 同步状态"

    def __str__(self):
        return self.name


class LocalTargetAccount(models.Model):
    """An account held by the in-process `local` backends: the demo's stand-in for the target systems."""

    system = models.CharField("系统", max_length=16, choices=System.choices)
    employee_number = models.CharField("员工编号", max_length=64)
    external_id = models.CharField("目标系统ID", max_length=64, unique=True)
    email = models.CharField("邮箱", max_length=254, blank=True, default="")
    full_name = models.CharField("姓名", max_length=100, blank=True, default="")
    mobile = models.CharField("手机", max_length=32, blank=True, default="", db_default="")
    department_code = models.CharField("部门代码", max_length=64, blank=True, default="", db_default="")
    active = models.BooleanField("启用", default=True, db_default=True)
    created_at = models.DateTimeField("创建时间", auto_now_add=True)
    updated_at = models.DateTimeField("更新时间", auto_now=True, db_default=Now())

    class Meta:
        verbose_name = "本地目标系统账号"
        verbose_name_plural = "本地目标系统账号"
        constraints = [
            models.UniqueConstraint(fields=["system", "employee_number"], name="local_account_unique_person"),
        ]

    def __str__(self):
        return f"{self.get_system_display()}：{self.employee_number}"


class Notification(models.Model):
    """Outbox of completion notifications: a signed webhook or an email, delivered by the process stage."""

    class Channel(models.TextChoices):
        WEBHOOK = "webhook", "回调"
        EMAIL = "email", "邮件"

    class Status(models.TextChoices):
        PENDING = "pending", "待发送"
        SENDING = "sending", "发送中"
        DELIVERED = "delivered", "已送达"
        FAILED = "failed", "失败"

    request = models.ForeignKey(AccountCreationRequest, on_delete=models.CASCADE, related_name="notifications",
                                verbose_name="请求")
    channel = models.CharField("渠道", max_length=16, choices=Channel.choices)
    target = models.CharField("目标", max_length=2048)
    message_id = models.CharField("消息ID", max_length=64, unique=True)
    payload = models.JSONField("内容")
    status = models.CharField("状态", max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.IntegerField("尝试次数", default=0)
    max_attempts = models.IntegerField("最大尝试次数", default=8)
    next_attempt_at = models.DateTimeField("下次发送时间", default=timezone.now)
    lease_expires_at = models.DateTimeField("租约到期", null=True, blank=True)
    lease_token = models.CharField("租约令牌", max_length=32, blank=True, default="", editable=False)
    last_status_code = models.IntegerField("最近响应码", null=True, blank=True)
    last_error = models.TextField("最近错误", blank=True, default="")
    created_at = models.DateTimeField("创建时间", auto_now_add=True)
    delivered_at = models.DateTimeField("送达时间", null=True, blank=True)

    class Meta:
        verbose_name = "完成通知"
        verbose_name_plural = "完成通知"
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(status__in=["pending", "sending"]),
                         name="notification_due"),
        ]

    def __str__(self):
        return f"{self.get_channel_display()}通知 {self.message_id}：{self.get_status_display()}"


class TargetThrottle(models.Model):
    """Shared pacing of calls to one target system, or to one endpoint of it, across every worker process.

    The row with an empty `endpoint` paces the system as a whole (the *_MAX_CALLS_PER_SECOND settings);
    a row per endpoint (the API path) paces what the vendor limits per API / per cgi."""

    system = models.CharField("系统", max_length=16, choices=System.choices)
    endpoint = models.CharField("接口", max_length=64, blank=True, default="")
    next_call_at = models.DateTimeField("下一次可调用时间", default=timezone.now)
    paused_until = models.DateTimeField("暂停至", null=True, blank=True)
    pause_reason = models.CharField("暂停原因", max_length=255, blank=True, default="")
    updated_at = models.DateTimeField("更新时间", auto_now=True)

    class Meta:
        verbose_name = "目标系统限速"
        verbose_name_plural = "目标系统限速"
        constraints = [models.UniqueConstraint(fields=["system", "endpoint"], name="target_throttle_system_endpoint")]

    def __str__(self):
        return f"{self.get_system_display()} {self.endpoint}".strip()


class Lease(models.Model):
    """One of a scope's numbered slots, held by one process until it releases it or the lease expires.

    The HR sync's singleton (one slot) and each target's concurrency slots (N). A slot is taken by one
    statement when it is free or expired, renewed while its holder works, and released by that holder only;
    a holder killed with kill -9 blocks it until the lease expires. Nothing lives in a database session, so
    it holds behind PgBouncer in transaction pooling mode (syncservice.db.leases).
    """

    scope = models.CharField("范围", max_length=64)
    slot = models.PositiveIntegerField("槽位", default=0)
    holder = models.CharField("持有者", max_length=128, blank=True, default="")
    acquired_at = models.DateTimeField("获取时间", null=True, blank=True)
    expires_at = models.DateTimeField("到期时间", null=True, blank=True)

    class Meta:
        verbose_name = "租约"
        verbose_name_plural = "租约"
        constraints = [models.UniqueConstraint(fields=["scope", "slot"], name="lease_scope_slot_unique")]

    def __str__(self):
        return f"{self.scope}#{self.slot}"


class AuditEntry(models.Model):
    """One operator action: who, what, on which object, when, under which request (or stage run) id.

    Written by `syncservice.audit.audit_record` in the action's own transaction, so that an action that
    fails leaves none. Rows are never changed: the admin shows them read-only and `save` refuses an update.
    Details hold counts and flags, never a secret or a phone number.
    """

    class ActorType(models.TextChoices):
        USER = "user", "员工用户"
        CLIENT = "client", "API 客户端"
        SYSTEM = "system", "系统"

    class Action(models.TextChoices):
        REQUEST_CANCEL = "request.cancel", "取消请求"
        REQUEST_RETRY = "request.retry", "重试请求"
        ITEM_RETRY = "item.retry", "重试用户"
        TASK_RETRY = "task.retry", "重试任务"
        NOTIFICATION_RESEND = "notification.resend", "重新发送通知"
        STAGE_RUN = "stage.run", "运行阶段"
        CLIENT_CREATE = "client.create", "创建客户端"
        CLIENT_ROTATE_TOKEN = "client.rotate_token", "轮换客户端令牌"
        CLIENT_ROTATE_WEBHOOK_SECRET = "client.rotate_webhook_secret", "轮换回调密钥"
        CLIENT_CHANGE = "client.change", "修改客户端"
        CLIENT_DISABLE = "client.disable", "停用客户端"
        CLIENT_ENABLE = "client.enable", "启用客户端"
        ORPHAN_LINK = "reconciliation.link", "关联对账发现的账号"
        ORPHAN_DISABLE = "reconciliation.disable", "停用对账发现的账号"

    created_at = models.DateTimeField("时间", auto_now_add=True)
    actor_type = models.CharField("操作者类型", max_length=16, choices=ActorType.choices)
    actor = models.CharField("操作者", max_length=150)
    # Kept when the user or client is deleted: `actor` still names them.
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name="员工用户", null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    actor_client = models.ForeignKey(ApiClient, verbose_name="API 客户端", null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="+")
    action = models.CharField("操作", max_length=64, choices=Action.choices)
    object_type = models.CharField("对象类型", max_length=100, help_text="app_label.model，"
                                                                       "如 syncservice.accountcreationrequest")
    object_id = models.CharField("对象ID", max_length=64)
    object_repr = models.CharField("对象", max_length=200)
    request_id = models.CharField("请求追踪ID", max_length=128, blank=True, default="",
                                  help_text="API 或管理后台请求的请求ID，或阶段运行的ID，"
                                            "与日志中的一致。")
    details = models.JSONField("详情", default=dict, blank=True)

    class Meta:
        verbose_name = "操作审计记录"
        verbose_name_plural = "操作审计记录"
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(fields=["-created_at"], name="audit_recent"),
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
            models.Index(fields=["request_id"], name="audit_request_id"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(actor_type__in=["user", "client", "system"]),
                                   name="audit_actor_type_known"),
        ]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.get_action_display()} {self.object_repr}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("An audit entry is never changed once written.")
        super().save(*args, **kwargs)


class ReconciliationRun(models.Model):
    """One comparison of our records with what the targets hold (reconcile_accounts), and its repairs."""

    class Status(models.TextChoices):
        RUNNING = "running", "运行中"
        COMPLETED = "completed", "已完成"
        FAILED = "failed", "失败"

    class Mode(models.TextChoices):
        RUN = "run", "运行"
        DRY_RUN = "dry_run", "试运行"

    status = models.CharField("状态", max_length=16, choices=Status.choices, default=Status.RUNNING)
    mode = models.CharField("模式", max_length=16, choices=Mode.choices, default=Mode.RUN)
    repair = models.BooleanField("修复", default=False)
    force = models.BooleanField("越过修复上限", default=False)
    systems = models.JSONField("系统", default=list)
    started_at = models.DateTimeField("开始时间", default=timezone.now)
    finished_at = models.DateTimeField("结束时间", null=True, blank=True)
    counts = models.JSONField("发现统计", default=dict, blank=True, help_text="各类发现的数量。")
    # Per system: target accounts read, ours compared, whether orphans could be checked, where it stopped.
    compared = models.JSONField("比对情况", default=dict, blank=True)
    # Per system: repairs planned and opened, the guard's limit, whether the guard held them back.
    repairs = models.JSONField("修复情况", default=dict, blank=True)
    note = models.TextField("说明", blank=True, default="")
    triggered_by = models.CharField("触发者", max_length=128, blank=True, default="")

    class Meta:
        verbose_name = "对账运行"
        verbose_name_plural = "对账运行"
        ordering = ("-started_at", "-id")

    def __str__(self):
        return f"对账 {self.pk}（{self.started_at:%Y-%m-%d %H:%M}）：{self.get_status_display()}"


class ReconciliationFinding(models.Model):
    """One difference a reconciliation found: missing, orphan, drift (a field) or duplicate."""

    class Kind(models.TextChoices):
        MISSING = "missing", "目标系统缺失"
        ORPHAN = "orphan", "目标系统多出"
        DRIFT = "drift", "字段不一致"
        DUPLICATE = "duplicate", "重复账号"

    class Repair(models.TextChoices):
        NONE = "", "不修复"
        PLANNED = "planned", "待修复"
        OPENED = "opened", "已发起修复"
        HELD = "held", "超出修复上限"
        REPORT_ONLY = "report_only", "仅报告"

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="findings",
                            verbose_name="对账运行")
    system = models.CharField("系统", max_length=16, choices=System.choices)
    employee_number = models.CharField("员工编号", max_length=64, blank=True, default="")
    kind = models.CharField("类型", max_length=16, choices=Kind.choices)
    field = models.CharField("字段", max_length=32, blank=True, default="")
    ours = models.TextField("我方记录", blank=True, default="")
    theirs = models.TextField("目标系统", blank=True, default="")
    external_id = models.CharField("目标系统ID", max_length=255, blank=True, default="")
    repair = models.CharField("修复", max_length=16, choices=Repair.choices, blank=True, default=Repair.NONE)
    account = models.ForeignKey(Account, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
                                verbose_name="账号")

    class Meta:
        verbose_name = "对账发现"
        verbose_name_plural = "对账发现"
        indexes = [models.Index(fields=["run", "system", "kind"], name="finding_run_system_kind")]

    def __str__(self):
        return f"{self.get_system_display()} {self.employee_number} {self.get_kind_display()} {self.field}".strip()


class OrphanAction(models.Model):
    """An operator's disable of an orphan (an account at a target that no person of ours owns), as a job on
    the shared queue: the process stage calls the target's `disable_account`, which changes nothing but the
    account's active state. One per finding; the finding reads `已发起修复` from then on."""

    class Operation(models.TextChoices):
        DISABLE = "disable", "停用"

    class Status(models.TextChoices):
        PENDING = "pending", "待执行"
        RUNNING = "running", "执行中"
        SUCCEEDED = "succeeded", "已完成"
        FAILED = "failed", "失败"

    finding = models.OneToOneField(ReconciliationFinding, on_delete=models.CASCADE, related_name="action",
                                   verbose_name="对账发现")
    system = models.CharField("系统", max_length=16, choices=System.choices)
    external_id = models.CharField("目标系统ID", max_length=255)
    employee_number = models.CharField("员工编号", max_length=64, blank=True, default="")
    operation = models.CharField("操作", max_length=16, choices=Operation.choices, default=Operation.DISABLE)
    requested_by = models.CharField("发起者", max_length=150, blank=True, default="")
    status = models.CharField("状态", max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.IntegerField("尝试次数", default=0)
    max_attempts = models.IntegerField("最大尝试次数", default=5)
    next_attempt_at = models.DateTimeField("下次执行时间", default=timezone.now)
    lease_expires_at = models.DateTimeField("租约到期", null=True, blank=True)
    locked_by = models.CharField("执行者", max_length=128, blank=True, default="")
    lease_token = models.CharField(max_length=32, blank=True, default="", editable=False)
    last_error_code = models.CharField("最近错误码", max_length=64, blank=True, default="")
    last_error = models.TextField("最近错误", blank=True, default="")
    created_at = models.DateTimeField("创建时间", auto_now_add=True)
    updated_at = models.DateTimeField("更新时间", auto_now=True)
    finished_at = models.DateTimeField("完成时间", null=True, blank=True)

    class Meta:
        verbose_name = "对账账号处理"
        verbose_name_plural = "对账账号处理"
        indexes = [
            models.Index(fields=["system", "next_attempt_at"], condition=Q(status__in=["pending", "running"]),
                         name="orphan_action_due"),
        ]

    def __str__(self):
        return (f"{self.get_system_display()} {self.external_id} "
                f"{self.get_operation_display()}：{self.get_status_display()}")


class ReconciliationSeen(models.Model):
    """Scratch rows of a running reconciliation: the keys a target holds, so that missing accounts and
    duplicates are found in the database rather than in memory. Deleted when the run ends."""

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="+")
    system = models.CharField(max_length=16)
    key = models.CharField(max_length=64)
    external_id = models.CharField(max_length=255)

    class Meta:
        indexes = [models.Index(fields=["run", "system", "key"], name="seen_run_system_key")]

    def __str__(self):
        return f"{self.system}:{self.key}"
