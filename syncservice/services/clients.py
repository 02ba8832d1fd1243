"""API clients: creation, token rotation, webhook signing secrets and the notify address."""

import base64
import secrets

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction

from ..models import ApiClient
from . import crypto

WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_BYTES = 32


@transaction.atomic
def api_client_create(*, name: str, origin_system: str = "", is_operator: bool = False,
                      default_priority: int = 0, notify_email: str = "") -> tuple[ApiClient, str]:
    """Create a client and return it with its token, which is shown once and stored only as a hash."""
    client = ApiClient(name=name, origin_system=origin_system, is_operator=is_operator,
                       default_priority=default_priority, notify_email=notify_email)
    token = client.set_new_token()
    client.full_clean(exclude=["token_hash", "token_hint"])
    client.save()
    return client, token


def api_client_rotate_token(*, client: ApiClient) -> str:
    token = client.set_new_token()
    client.save(update_fields=["token_hash", "token_hint"])
    return token


def api_client_set_active(*, client: ApiClient, is_active: bool) -> bool:
    """Enable or disable a client (a disabled one is refused at once); return whether it changed."""
    if client.is_active == is_active:
        return False
    client.is_active = is_active
    client.save(update_fields=["is_active"])
    return True


def api_client_rotate_webhook_secret(*, client: ApiClient) -> str:
    """Give the client a new webhook signing secret and return it; it is stored encrypted, shown only now.

    The Standard Webhooks form: "whsec_" + base64 of 32 random bytes. The previous secret stops signing at once.
    """
    secret = WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode("ascii")
    client.webhook_secret_encrypted = crypto.encrypt(secret)
    client.save(update_fields=["webhook_secret_encrypted"])
    return secret


def api_client_webhook_secret(*, client: ApiClient) -> str:
    """The client's webhook secret in clear ("" when it has none), for signing only."""
    if not client.webhook_secret_encrypted:
        return ""
    return crypto.decrypt(client.webhook_secret_encrypted)


def api_client_set_notify_email(*, client: ApiClient, notify_email: str) -> None:
    """Set (or, with "", clear) the address told when one of the client's requests ends."""
    notify_email = notify_email.strip()
    if notify_email:
        validate_email(notify_email)
        if len(notify_email) > ApiClient._meta.get_field("notify_email").max_length:
            raise ValidationError("The notify address is too long.")
    client.notify_email = notify_email
    client.save(update_fields=["notify_email"])
