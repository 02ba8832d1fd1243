"""API clients: creation and token rotation."""

from django.db import transaction

from ..models import ApiClient


@transaction.atomic
def api_client_create(*, name: str, origin_system: str = "", is_operator: bool = False,
                      default_priority: int = 0) -> tuple[ApiClient, str]:
    """Create a client and return it with its token, which is shown once and stored only as a hash."""
    client = ApiClient(name=name, origin_system=origin_system, is_operator=is_operator,
                       default_priority=default_priority)
    token = client.set_new_token()
    client.full_clean(exclude=["token_hash", "token_hint"])
    client.save()
    return client, token


def api_client_rotate_token(*, client: ApiClient) -> str:
    token = client.set_new_token()
    client.save(update_fields=["token_hash", "token_hint"])
    return token
