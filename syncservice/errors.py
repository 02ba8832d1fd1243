"""Domain errors: each carries a machine-readable code and the HTTP status the API answers with."""


class ServiceError(Exception):
    code = "service_error"
    status_code = 400
    default_message = "The request could not be processed."

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
    default_message = "The request body is invalid."


class OriginForbidden(ServiceError):
    code = "origin_forbidden"
    status_code = 403
    default_message = "This client may not act for that originSystem."


class BusinessKeyConflict(ServiceError):
    code = "business_key_conflict"
    status_code = 409
    default_message = "This businessKey was already submitted with a different payload."


class InvalidTransition(ServiceError):
    code = "invalid_transition"
    status_code = 409
    default_message = "The request is not in a state that allows this."


class RequestNotFound(ServiceError):
    code = "not_found"
    status_code = 404
    default_message = "No such request."
