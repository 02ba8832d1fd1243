"""Create an API client and print its token (shown once) as the last line."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from syncservice.audit import Action, audit_record
from syncservice.models import ApiClient
from syncservice.services.clients import (
    api_client_create,
    api_client_rotate_token,
    api_client_rotate_webhook_secret,
    api_client_set_notify_email,
)
from syncservice.validation import ORIGIN_SYSTEM_MAX, ORIGIN_SYSTEM_RE

# The audit trail's actor: whoever has a shell on the server may run this command.
ACTOR = "create_api_client"


class Command(BaseCommand):
    help = (
        "Create an API client bound to ORIGIN_SYSTEM (or, with --operator, an operator client named NAME) "
        "and print its token as the last line of output. Only a hash of the token is stored."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", metavar="ORIGIN_SYSTEM|NAME")
        parser.add_argument("--operator", action="store_true",
                            help="An operator client: bound to no origin, reads every request, runs stages.")
        parser.add_argument("--name", dest="client_name", default="",
                            help="Client name when it should differ from ORIGIN_SYSTEM.")
        parser.add_argument("--priority", type=int, default=0, help="Default priority of the client's requests.")
        parser.add_argument("--rotate", action="store_true",
                            help="If the client exists, give it a new token (the old one stops working).")
        parser.add_argument("--webhook-secret", action="store_true",
                            help="Give the new client a secret that signs its callbacks; printed once, before "
                                 "the token.")
        parser.add_argument("--rotate-webhook-secret", action="store_true",
                            help="Give an existing client a new webhook secret (the old one stops signing at "
                                 "once); printed once, as the last line unless --rotate is given too.")
        parser.add_argument("--notify-email", metavar="ADDRESS", default=None,
                            help="Address that gets an email when one of the client's requests ends "
                                 "(an empty string clears it).")

    def handle(self, *args, name, operator, client_name, priority, rotate, webhook_secret, rotate_webhook_secret,
               notify_email, **options):
        client_name = client_name or name
        existing = ApiClient.objects.filter(name=client_name).first()
        if existing is not None:
            self._update(existing, rotate=rotate, webhook_secret=webhook_secret,
                         rotate_webhook_secret=rotate_webhook_secret, notify_email=notify_email)
            return
        origin_system = ""
        if not operator:
            if len(name) > ORIGIN_SYSTEM_MAX or not ORIGIN_SYSTEM_RE.match(name):
                raise CommandError(
                    f"Invalid ORIGIN_SYSTEM {name!r}: letters, digits, '.', '_' and '-' only, "
                    f"at most {ORIGIN_SYSTEM_MAX} characters."
                )
            origin_system = name
        try:
            # One transaction: a client never exists without the secret it was announced with.
            with transaction.atomic():
                client, token = api_client_create(name=client_name, origin_system=origin_system,
                                                  is_operator=operator, default_priority=priority,
                                                  notify_email=(notify_email or "").strip())
                secret = None
                if webhook_secret or rotate_webhook_secret:
                    secret = api_client_rotate_webhook_secret(client=client)
                audit_record(actor=ACTOR, action=Action.CLIENT_CREATE, target=client,
                             details={"operator": operator, "webhookSecret": secret is not None})
        except ValidationError as e:
            raise CommandError(_describe(e)) from e
        kind = "operator client" if operator else "client"
        bound = "" if operator else f" for originSystem {origin_system}"
        self.stdout.write(f"Created {kind} {client.name!r} (id {client.pk}){bound}.")
        if client.notify_email:
            self.stdout.write(f"Completion emails go to {client.notify_email}.")
        if secret is not None:
            self.stdout.write(f"Webhook secret (shown once): {secret}")
        self.stdout.write("Its token follows; it is shown only this once. Send it as 'Authorization: Bearer <token>'.")
        self.stdout.write(token)

    def _update(self, client: ApiClient, *, rotate: bool, webhook_secret: bool, rotate_webhook_secret: bool,
                notify_email: str | None) -> None:
        if webhook_secret:
            raise CommandError(f"A client named {client.name!r} exists; --webhook-secret is for a new client, "
                               "use --rotate-webhook-secret to replace the secret of an existing one.")
        if not (rotate or rotate_webhook_secret or notify_email is not None):
            raise CommandError(f"A client named {client.name!r} exists; pass --rotate to issue a new token.")
        if notify_email is not None:
            try:
                with transaction.atomic():
                    api_client_set_notify_email(client=client, notify_email=notify_email)
                    audit_record(actor=ACTOR, action=Action.CLIENT_CHANGE, target=client,
                                 details={"fields": ["notify_email"]})
            except ValidationError as e:
                raise CommandError(f"Invalid --notify-email {notify_email!r}: {_describe(e)}") from e
            self.stdout.write(f"Completion emails of client {client.name!r} go to {client.notify_email}."
                              if client.notify_email else f"Client {client.name!r} gets no completion emails.")
        # Whatever is printed, a token stays the last line, as scripts read it from there.
        if rotate_webhook_secret:
            with transaction.atomic():
                secret = api_client_rotate_webhook_secret(client=client)
                audit_record(actor=ACTOR, action=Action.CLIENT_ROTATE_WEBHOOK_SECRET, target=client)
            self.stdout.write(f"Rotated the webhook secret of client {client.name!r}; the old one no longer signs.")
            self.stdout.write(f"Webhook secret (shown once): {secret}" if rotate else secret)
        if rotate:
            with transaction.atomic():
                token = api_client_rotate_token(client=client)
                audit_record(actor=ACTOR, action=Action.CLIENT_ROTATE_TOKEN, target=client)
            self.stdout.write(f"Rotated the token of client {client.name!r}; the old token no longer works.")
            self.stdout.write(token)


def _describe(error: ValidationError) -> str:
    """Validation messages with the field each is about (the messages alone may be in the admin's language)."""
    if hasattr(error, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items())
    return "; ".join(error.messages)
