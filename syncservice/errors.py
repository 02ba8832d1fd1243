"""Domain errors: each carries a machine-readable code and the HTTP status the API answers with."""


class ServiceError(Exception):
    code = "service_error"
    status_code = 400
    default_message = "无法处理该请求。"

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 errors: list[dict] | None = None, extra: dict | None = None):
        self.message = message or self.default_message
        if code:
            self.code = code
        self.errors = errors or []
        self.extra = extra or {}
        super().__init__(self.message)


class PayloadInvalid(ServiceError):
    code = "validation_error"
    status_code = 400
    default_message = "请求体无效。"


class OriginForbidden(ServiceError):
    code = "origin_forbidden"
    status_code = 403
    default_message = "此客户端不能代表该 originSystem 操作。"


class BusinessKeyConflict(ServiceError):
    code = "business_key_conflict"
    status_code = 409
    default_message = "该 businessKey 已以不同的内容提交过。"


class InvalidTransition(ServiceError):
    code = "invalid_transition"
    status_code = 409
    default_message = "请求当前的状态不允许此操作。"


class RequestNotFound(ServiceError):
    code = "not_found"
    status_code = 404
    default_message = "请求不存在。"
