"""The audit trail: one AuditEntry per operator action, written in the action's own transaction.

The API views, the admin and the commands of both apps call `audit_record` right after the service that made
the change, inside the same transaction: an action that fails (a guard that refuses it, a crash) records
nothing, and an entry that cannot be written undoes the action. It lives below the
views, the admin and the commands of both apps, which import it; it imports only models and logging helpers.
"""

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import models

from config.logging import redact, request_id_var

from .models import ApiClient, AuditEntry

Action = AuditEntry.Action

# Who acts: a staff user, an API client, or the name of a command run from a shell.
Actor = AbstractBaseUser | ApiClient | str


def audit_record(*, actor: Actor, action: str, target: models.Model, details: dict | None = None) -> AuditEntry:
    """Record that `actor` did `action` to `target`, under the current request (or stage run) id.

    `actor` is a staff user, an API client (the authenticated principal of an API request) or, for a
    management command run from a shell, its name ("create_api_client"). Strings in `details` are masked
    like log lines (tokens, secrets, phone numbers) as a last guard: callers pass counts, flags and field
    names, never such values.
    """
    request_id = request_id_var.get()
    return AuditEntry.objects.create(
        **_actor_fields(actor), action=Action(action), object_type=target._meta.label_lower,
        object_id=str(target.pk), object_repr=str(target)[:200],
        request_id="" if request_id == "-" else request_id[:128], details=_masked(details or {}),
    )


def _actor_fields(actor: Actor) -> dict:
    if isinstance(actor, ApiClient):
        return {"actor_type": AuditEntry.ActorType.CLIENT, "actor": actor.name, "actor_client": actor}
    if isinstance(actor, AbstractBaseUser):
        return {"actor_type": AuditEntry.ActorType.USER, "actor": actor.get_username(), "actor_user": actor}
    if isinstance(actor, str) and actor:
        return {"actor_type": AuditEntry.ActorType.SYSTEM, "actor": actor[:150]}
    raise TypeError(f"cannot audit an action by {actor!r}: expected a user, an API client or a name")


def _masked(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(key): _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value
