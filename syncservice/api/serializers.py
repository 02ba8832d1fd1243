"""Serializers that describe the API's documents in the OpenAPI schema.

Validation of create_accounts lives in ``syncservice.validation`` (one pass, every error); these classes
state the same limits so that the published schema and the behaviour agree.
"""

from django.conf import settings
from rest_framework import serializers

from .. import validation as v
from ..models import Account, AccountCreationRequest, AccountCreationRequestItem


class UserInputSerializer(serializers.Serializer):
    employeeNumber = serializers.RegexField(v.EMPLOYEE_NUMBER_PATTERN, max_length=v.EMPLOYEE_NUMBER_MAX)
    employeeName = serializers.CharField(max_length=v.EMPLOYEE_NAME_MAX)
    departmentCode = serializers.CharField(max_length=v.DEPARTMENT_CODE_MAX)
    phoneNumber = serializers.CharField(
        max_length=v.PHONE_MAX + 10,
        help_text="A mainland mobile number (11 digits, 13-19…) or an international number starting with '+'; "
                  "spaces, '-' and parentheses are ignored.",
    )
    partnerCompany = serializers.CharField(max_length=v.PARTNER_COMPANY_MAX, required=False, allow_blank=True)
    country = serializers.CharField(max_length=v.COUNTRY_MAX, required=False, allow_blank=True)


class CreateAccountsInputSerializer(serializers.Serializer):
    originSystem = serializers.RegexField(v.ORIGIN_SYSTEM_PATTERN, max_length=v.ORIGIN_SYSTEM_MAX)
    businessKey = serializers.CharField(max_length=v.BUSINESS_KEY_MAX)
    accountType = serializers.CharField(max_length=v.ACCOUNT_TYPE_MAX)
    employeeType = serializers.CharField(max_length=v.EMPLOYEE_TYPE_MAX)
    systemList = serializers.ListField(
        child=serializers.ChoiceField(choices=["idaas", "welink", "email"]), min_length=1, max_length=3,
        help_text="Target systems, each at most once.",
    )
    userList = UserInputSerializer(many=True, min_length=1, max_length=settings.MAX_USERS_PER_REQUEST)
    priority = serializers.IntegerField(
        min_value=v.PRIORITY_MIN, max_value=v.PRIORITY_MAX, required=False,
        help_text="Higher runs first; defaults to the client's priority.",
    )
    callbackUrl = serializers.URLField(
        max_length=v.CALLBACK_URL_MAX, required=False, allow_blank=True,
        help_text="Receives the final status document when the request ends, signed the Standard Webhooks way "
                  "with the client's webhook secret. https only (plain http only for allow-listed hosts); no "
                  "credentials in the URL; the host must resolve to public addresses.",
    )


class CreateAccountsResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    requestId = serializers.CharField()
    status = serializers.ChoiceField(choices=AccountCreationRequest.Status.choices)
    totalUsers = serializers.IntegerField()
    message = serializers.CharField()


class HrPersonInfoSerializer(serializers.Serializer):
    employeeNumber = serializers.CharField()
    fullName = serializers.CharField()
    email = serializers.EmailField(allow_null=True)


class ItemAccountSerializer(serializers.Serializer):
    system = serializers.CharField()
    status = serializers.ChoiceField(choices=Account.Status.choices)
    status_display = serializers.CharField()
    externalId = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)


class RequestItemSerializer(serializers.Serializer):
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


class RequestSummarySerializer(serializers.Serializer):
    requestId = serializers.CharField()
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
    createdAt = serializers.DateTimeField()
    updatedAt = serializers.DateTimeField()
    completedAt = serializers.DateTimeField(allow_null=True)


class RequestDetailSerializer(RequestSummarySerializer):
    items = RequestItemSerializer(many=True)


class ErrorDetailSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="JSON path of the offending field, e.g. userList[3].phoneNumber.")
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    success = serializers.BooleanField(default=False)
    code = serializers.CharField(help_text="Machine-readable error code.")
    message = serializers.CharField()
    errors = ErrorDetailSerializer(many=True)
    requestId = serializers.CharField(required=False, help_text="On business_key_conflict: the existing request.")
