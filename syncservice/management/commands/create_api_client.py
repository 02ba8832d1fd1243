"""Create an API client and print its token (shown once) as the last line."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from syncservice.models import ApiClient
from syncservice.services.clients import api_client_create, api_client_rotate_token
from syncservice.validation import ORIGIN_SYSTEM_MAX, ORIGIN_SYSTEM_RE


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

    def handle(self, *args, name, operator, client_name, priority, rotate, **options):
        client_name = client_name or name
        existing = ApiClient.objects.filter(name=client_name).first()
        if existing is not None:
            if not rotate:
                raise CommandError(f"A client named {client_name!r} exists; pass --rotate to issue a new token.")
            token = api_client_rotate_token(client=existing)
            self.stdout.write(f"Rotated the token of client {client_name!r}; the old token no longer works.")
            self.stdout.write(token)
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
            client, token = api_client_create(name=client_name, origin_system=origin_system,
                                              is_operator=operator, default_priority=priority)
        except ValidationError as e:
            raise CommandError("; ".join(e.messages)) from e
        kind = "operator client" if operator else f"client for originSystem {origin_system!r}"
        self.stdout.write(f"Created {kind} {client.name!r} (id {client.pk}).")
        self.stdout.write("Its token follows; it is shown only this once. Send it as 'Authorization: Bearer <token>'.")
        self.stdout.write(token)
