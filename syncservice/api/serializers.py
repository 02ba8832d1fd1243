"""Serializers that describe the API's documents in the OpenAPI schema.

Validation of create_accounts lives in ``syncservice.validation`` (one pass, every error); the schema of
its body is built from the same constants in ``schema.py``, so the published schema and the behaviour agree.
"""

from rest_framework import serializers

from ..models import (
    Account,
    AccountCreationRequest,
    AccountCreationRequestItem,
    AccountCreationTask,
    AccountEvent,
    TaskAttempt,
)
from ..selectors import ACCOUNT_STATES


class StrictSerializer(serializers.Serializer):
    """A document of the API: closed in the schema (schema.StrictSerializerExtension)."""


def page_serializer(name: str, results: type[serializers.Serializer]) -> type[StrictSerializer]:
    """The schema of one page of query.Pagination, named `name`, whose results are `results` documents."""
    return type(name, (StrictSerializer,), {
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": results(many=True),
    })


class UserInputSerializer(serializers.Serializer):
    """One person of a batch; its schema is schema.user_input_schema(), built from the validation rules."""


class CreateAccountsInputSerializer(serializers.Serializer):
    """The create_accounts body; its schema is schema.create_accounts_input_schema()."""


class DeactivateAccountsInputSerializer(serializers.Serializer):
    """The deactivate_accounts body; its schema is schema.deactivate_accounts_input_schema()."""


class CreateAccountsResponseSerializer(StrictSerializer):
    success = serializers.BooleanField()
    requestId = serializers.CharField()
    status = serializers.ChoiceField(choices=AccountCreationRequest.Status.choices)
    totalUsers = serializers.IntegerField()
    message = serializers.CharField()


class HrPersonInfoSerializer(StrictSerializer):
    employeeNumber = serializers.CharField()
    fullName = serializers.CharField()
    email = serializers.EmailField(allow_null=True)


class TaskErrorSerializer(StrictSerializer):
    code = serializers.CharField(allow_null=True, help_text="The target's code, or the service's own.")
    message = serializers.CharField(help_text="As the target answered, with phone numbers masked.")


class LastChangeSerializer(StrictSerializer):
    operation = serializers.ChoiceField(choices=AccountCreationTask.Operation.choices)
    fields = serializers.ListField(child=serializers.CharField(), help_text="The values it changed.")
    result = serializers.ChoiceField(choices=AccountEvent.Result.choices)
    code = serializers.CharField(allow_null=True, help_text="The target's code.")
    at = serializers.DateTimeField()


class ItemAccountSerializer(StrictSerializer):
    system = serializers.CharField()
    status = serializers.ChoiceField(choices=Account.Status.choices,
                                     help_text="The account's creation (unchanged by later changes).")
    status_display = serializers.CharField()
    state = serializers.ChoiceField(
        choices=ACCOUNT_STATES,
        help_text="What the account is now: its creation's status until it exists, then `created` or `linked`, "
                  "`updating` while a change is on its way, `disabled`, or `failed` when its creation or its "
                  "last change failed.")
    state_display = serializers.CharField()
    enabled = serializers.BooleanField(help_text="Whether the person should have the account active.")
    lastChange = LastChangeSerializer(allow_null=True, help_text="The last change applied or tried.")
    externalId = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField(
        help_text="Calls made by the person's open task for this system, or else by its latest one; 0 before any.")
    lastError = TaskErrorSerializer(
        allow_null=True, help_text="That task's last failure, while it is retried too; null when it has none.")
    lastAttemptAt = serializers.DateTimeField(allow_null=True, help_text="When that task's latest call started.")
    nextAttemptAt = serializers.DateTimeField(
        allow_null=True, help_text="When the open task is next due; null once the task is final, and while it "
                                   "waits for the person's mailbox (its task `blocked`).")


class RequestItemSerializer(StrictSerializer):
    id = serializers.IntegerField()
    employeeNumber = serializers.CharField()
    employeeName = serializers.CharField()
    departmentCode = serializers.CharField()
    phoneNumber = serializers.CharField()
    partnerCompany = serializers.CharField()
    country = serializers.CharField()
    status = serializers.ChoiceField(choices=AccountCreationRequestItem.Status.choices)
    status_display = serializers.CharField()
    hrPersonInfo = HrPersonInfoSerializer(allow_null=True)
    accounts = ItemAccountSerializer(many=True)
    errorMessage = serializers.CharField(allow_null=True)
    createdAt = serializers.DateTimeField()
    updatedAt = serializers.DateTimeField()


class RequestSummarySerializer(StrictSerializer):
    requestId = serializers.CharField()
    requestType = serializers.ChoiceField(choices=AccountCreationRequest.RequestType.choices)
    originSystem = serializers.CharField()
    businessKey = serializers.CharField()
    accountType = serializers.CharField()
    employeeType = serializers.CharField()
    systemList = serializers.ListField(child=serializers.CharField())
    status = serializers.ChoiceField(choices=AccountCreationRequest.Status.choices)
    status_display = serializers.CharField()
    totalUsers = serializers.IntegerField()
    processedUsers = serializers.IntegerField()
    progress = serializers.CharField(help_text='Share of users in a final state, e.g. "100.0%".')
    errorSummary = serializers.JSONField(allow_null=True)
    errorHistory = serializers.ListField(
        child=serializers.DictField(),
        help_text="The errorSummary of every earlier end that a retry cleared, oldest first, each with the "
                  "status it had (`status`), when it was retried (`retriedAt`) and `retried: true`.")
    createdAt = serializers.DateTimeField()
    updatedAt = serializers.DateTimeField()
    completedAt = serializers.DateTimeField(allow_null=True)


class RequestDetailSerializer(RequestSummarySerializer):
    items = RequestItemSerializer(many=True)


class ErrorDetailSerializer(StrictSerializer):
    field = serializers.CharField(help_text="JSON path of the offending field, e.g. userList[3].phoneNumber.")
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(StrictSerializer):
    success = serializers.BooleanField(help_text="Always false.")
    code = serializers.CharField(help_text="Machine-readable error code.")
    message = serializers.CharField()
    errors = ErrorDetailSerializer(many=True, help_text="One entry per invalid field; empty for other errors.")
    requestId = serializers.CharField(required=False, help_text="On business_key_conflict: the existing request.")
    runId = serializers.IntegerField(required=False, allow_null=True,
                                     help_text="On stage_failed: the failed stage run, when it was recorded.")


RequestPageSerializer = page_serializer("RequestPageSerializer", RequestSummarySerializer)


class ItemLogEntrySerializer(StrictSerializer):
    startedAt = serializers.DateTimeField()
    system = serializers.CharField()
    operation = serializers.ChoiceField(choices=AccountCreationTask.Operation.choices,
                                        help_text="What was asked of the target.")
    outcome = serializers.ChoiceField(choices=TaskAttempt.Outcome.choices)
    outcome_display = serializers.CharField()
    attemptNumber = serializers.IntegerField(help_text="The call's number within its task (a retry starts at 1).")
    code = serializers.CharField(allow_null=True, help_text="The target's code, verbatim.")
    message = serializers.CharField(allow_null=True, help_text="The target's message, with phone numbers masked.")
    durationMs = serializers.IntegerField()
    worker = serializers.CharField(allow_null=True, help_text="The worker process that made the call.")


ItemLogPageSerializer = page_serializer("ItemLogPageSerializer", ItemLogEntrySerializer)


class ActionResponseSerializer(StrictSerializer):
    success = serializers.BooleanField()
    requestId = serializers.CharField()
    status = serializers.ChoiceField(choices=AccountCreationRequest.Status.choices)
    status_display = serializers.CharField()
    message = serializers.CharField()


# Import the schema extensions with the serializers they describe, so that they are registered before any
# schema is generated.
from . import schema  # noqa: E402,F401
