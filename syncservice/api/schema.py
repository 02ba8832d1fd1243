"""The OpenAPI schema states exactly what the API enforces: these pieces are built from the same constants.

drf-spectacular derives most of the schema from the serializers in serializers.py. Where a serializer cannot
say what the hand-written validation does (surrounding whitespace, forbidden characters, phone separators,
unique systems, null for optional fields, unknown fields refused), an extension here replaces its schema;
every other serializer of the API is closed (`additionalProperties: false`) by `StrictSerializerExtension`.
"""

from django.conf import settings
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.plumbing import force_instance
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter

from .. import validation as v


def _text(max_length: int, *, required: bool = True, description: str = "") -> dict:
    schema = {"type": "string", "maxLength": max_length,
              "pattern": v.TEXT_PATTERN if required else v.OPTIONAL_TEXT_PATTERN}
    if required:
        schema["minLength"] = 1
    else:
        schema["nullable"] = True
    if description:
        schema["description"] = description
    return schema


def _identifier(max_length: int, pattern: str, description: str) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": pattern,
            "description": description}


USER_LIST_NOTE = (
    "Each employeeNumber at most once in the batch, compared case-insensitively (`e001` repeats `E001`): a "
    "repeat refuses the whole batch with 400, an error coded `duplicate` at `userList[i].employeeNumber` "
    "naming the first one.")
TEXT_NOTE = ("Control and invisible formatting characters are refused; surrounding whitespace is dropped and the "
             "text is stored in Unicode normal form C.")


def user_input_schema() -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["employeeNumber", "employeeName", "departmentCode", "phoneNumber"],
        "properties": {
            "employeeNumber": _identifier(
                v.EMPLOYEE_NUMBER_MAX, v.EMPLOYEE_NUMBER_PATTERN,
                "Letters, digits, '.', '_' and '-', starting with a letter or digit; unique in the batch, "
                "case-insensitively."),
            "employeeName": _text(v.EMPLOYEE_NAME_MAX, description=TEXT_NOTE),
            "departmentCode": _text(v.DEPARTMENT_CODE_MAX),
            "phoneNumber": {
                "type": "string", "minLength": 1, "maxLength": v.PHONE_RAW_MAX, "pattern": v.PHONE_PATTERN,
                "description": "A mainland mobile number (11 digits, 13-19…, optionally +86) or an international "
                               "number starting with '+'; whitespace, '-' and parentheses are ignored.",
            },
            "partnerCompany": _text(v.PARTNER_COMPANY_MAX, required=False),
            "country": _text(v.COUNTRY_MAX, required=False),
        },
    }


def create_accounts_input_schema(user_ref: dict) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["originSystem", "businessKey", "accountType", "employeeType", "systemList", "userList"],
        "properties": {
            "originSystem": _identifier(v.ORIGIN_SYSTEM_MAX, v.ORIGIN_SYSTEM_PATTERN,
                                        "The caller's own origin system; another one is refused (403)."),
            "businessKey": _text(v.BUSINESS_KEY_MAX, description=(
                "Idempotency key: the same key with the same payload returns the original request (200), "
                "with a different payload 409.")),
            "accountType": _text(v.ACCOUNT_TYPE_MAX),
            "employeeType": _text(v.EMPLOYEE_TYPE_MAX),
            "systemList": {
                "type": "array", "minItems": 1, "maxItems": len(settings.PROVISIONING_SYSTEMS), "uniqueItems": True,
                "items": {"type": "string", "enum": list(settings.PROVISIONING_SYSTEMS)},
                "description": "Target systems, each at most once.",
            },
            "userList": {
                "type": "array", "minItems": 1, "maxItems": settings.MAX_USERS_PER_REQUEST, "items": user_ref,
                # JSON Schema cannot say this (uniqueItems compares whole users): the description must.
                "description": USER_LIST_NOTE,
            },
            "priority": {
                "type": "integer", "minimum": v.PRIORITY_MIN, "maximum": v.PRIORITY_MAX, "nullable": True,
                "description": "Higher runs first; null or absent: the client's default priority.",
            },
            "callbackUrl": {
                "type": "string", "maxLength": v.CALLBACK_URL_MAX, "pattern": v.CALLBACK_URL_PATTERN,
                "nullable": True,
                "description": (
                    "Receives the final status document when the request ends, signed the Standard Webhooks way "
                    "with the client's webhook secret (a client without one: 400 no_webhook_secret). https only "
                    "(plain http only for allow-listed hosts); no credentials in the URL; the host must resolve "
                    "to public addresses. Blank or null: no callback."),
            },
        },
    }


def deactivate_accounts_input_schema() -> dict:
    base = create_accounts_input_schema({})["properties"]
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["originSystem", "businessKey", "userList"],
        "properties": {
            "originSystem": base["originSystem"],
            "businessKey": {**base["businessKey"], "description": (
                "Idempotency key, shared with create_accounts: the same key with the same payload returns the "
                "original request (200), with a different payload 409.")},
            "systemList": {**base["systemList"], "nullable": True, "description": (
                "The systems to disable the accounts in, each at most once; absent or null: every system the "
                "person has an account in.")},
            "userList": {
                "type": "array", "minItems": 1, "maxItems": settings.MAX_USERS_PER_REQUEST,
                "items": {"type": "object", "additionalProperties": False, "required": ["employeeNumber"],
                          "properties": {"employeeNumber": _identifier(
                              v.EMPLOYEE_NUMBER_MAX, v.EMPLOYEE_NUMBER_PATTERN,
                              "A person this originSystem submitted through create_accounts; another is "
                              "refused (400, `not_submitted_by_origin` at userList[i].employeeNumber).")}},
                "description": USER_LIST_NOTE,
            },
            "priority": base["priority"],
            "callbackUrl": base["callbackUrl"],
        },
    }


def _strict_doc() -> str:
    from drf_spectacular.plumbing import get_doc

    from .serializers import StrictSerializer

    return get_doc(StrictSerializer)


class StrictSerializerExtension(OpenApiSerializerExtension):
    """Every document of the API is closed: a property the schema does not name is never sent or accepted."""

    target_class = "syncservice.api.serializers.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_basic_serializer(force_instance(self.target), direction)
        if schema.get("description") == _strict_doc():
            del schema["description"]  # inherited from the base class, says nothing about this document
        schema["additionalProperties"] = False
        return schema


class UserInputExtension(OpenApiSerializerExtension):
    target_class = "syncservice.api.serializers.UserInputSerializer"

    def map_serializer(self, auto_schema, direction):
        return user_input_schema()


class CreateAccountsInputExtension(OpenApiSerializerExtension):
    target_class = "syncservice.api.serializers.CreateAccountsInputSerializer"

    def map_serializer(self, auto_schema, direction):
        from .serializers import UserInputSerializer

        user = auto_schema.resolve_serializer(UserInputSerializer, direction)
        return create_accounts_input_schema(user.ref)


class DeactivateAccountsInputExtension(OpenApiSerializerExtension):
    target_class = "syncservice.api.serializers.DeactivateAccountsInputSerializer"

    def map_serializer(self, auto_schema, direction):
        return deactivate_accounts_input_schema()


# Response headers and parameters shared by the views.
REQUEST_ID_PARAMETER = OpenApiParameter(
    "request_id", {"type": "string", "pattern": v.REQUEST_ID_PATTERN}, OpenApiParameter.PATH, required=True,
    description="A requestId as create_accounts returned it (req_YYYYMMDD_<12 hex digits>); another origin's "
                "request answers 404 like one that does not exist.",
)


ITEM_ID_MAX = 2**63 - 1  # a bigint primary key
ITEM_ID_PARAMETER = OpenApiParameter(
    "item_id", {"type": "integer", "minimum": 1, "maximum": ITEM_ID_MAX}, OpenApiParameter.PATH, required=True,
    description="An item's `id` in the request's status document; an item of another request answers 404.",
)


PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
# A bound the schema can state, past the last page of any list: at the default page size, 50 million rows.
PAGE_MAX = 1_000_000


def page_parameters() -> list[OpenApiParameter]:
    return [
        OpenApiParameter("page", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX},
                         description=f"1-based, at most {PAGE_MAX}; past the last page: 404."),
        OpenApiParameter("page_size", {"type": "integer", "minimum": 1, "maximum": PAGE_SIZE_MAX},
                         description=f"At most {PAGE_SIZE_MAX}; default {PAGE_SIZE_DEFAULT}."),
    ]


RETRY_AFTER_HEADER = OpenApiParameter(
    "Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[429],
    description="Seconds until the client may call again.",
)

ERROR_DESCRIPTIONS = {
    400: "Invalid body or query parameters: `errors` names every offending field (nothing is stored).",
    401: "No token, an unknown token, or a disabled or deleted client.",
    403: "Authenticated, but not allowed to do this.",
    404: "No such resource, or one that belongs to another origin.",
    405: "This method is not allowed on this path (the `Allow` header lists those that are).",
    406: "The Accept header excludes application/json.",
    409: "The resource is not in a state that allows this.",
    413: "The body is larger than MAX_REQUEST_BODY_BYTES.",
    415: "The body is not application/json.",
    429: "Too many requests from this client; try again after `Retry-After` seconds.",
    500: "An unexpected error; it is logged with the request id.",
}
# Every authenticated endpoint can answer these; endpoints that read a JSON body add BODY_ERRORS.
COMMON_ERRORS = (401, 403, 405, 406, 429, 500)
BODY_ERRORS = (400, 413, 415)


def error_responses(*codes: int) -> dict:
    from drf_spectacular.utils import OpenApiResponse

    from .serializers import ErrorSerializer

    return {code: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[code])
            for code in sorted(set(codes) | set(COMMON_ERRORS))}
