"""Make sure the demo has an origin client, an operator client and an admin login; print them."""

import json
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from syncservice.models import ApiClient
from syncservice.services.clients import api_client_create, api_client_rotate_token

DEMO_ORIGIN = "HR_SYSTEM"
DEMO_OPERATOR = "demo-operator"
DEMO_ADMIN = "admin"


def credentials_path() -> Path:
    return Path(os.environ.get("DEMO_CREDENTIALS_FILE") or settings.BASE_DIR / ".demo-credentials.json")


class Command(BaseCommand):
    help = (
        "Development only: ensure a demo origin client (HR_SYSTEM), an operator client and an admin login "
        "exist, store their secrets in .demo-credentials.json (mode 600) and print them."
    )

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, base_url, **options):
        path = credentials_path()
        stored = {}
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                stored = {}
        credentials = {
            "baseUrl": base_url,
            "originSystem": DEMO_ORIGIN,
            "token": self._ensure_client(DEMO_ORIGIN, stored.get("token"), operator=False),
            "operatorToken": self._ensure_client(DEMO_OPERATOR, stored.get("operatorToken"), operator=True),
            "adminUser": DEMO_ADMIN,
            "adminPassword": self._ensure_admin(stored.get("adminPassword")),
        }
        path.write_text(json.dumps(credentials, indent=2))
        path.chmod(0o600)
        self.stdout.write(f"Demo credentials (also in {path}):")
        self.stdout.write(f"  Start page:     {base_url}/")
        self.stdout.write(f"  API:            {base_url}/account-creation/create_accounts/")
        self.stdout.write(f"  API docs:       {base_url}/api/docs/")
        self.stdout.write(f"  Admin:          {base_url}/admin/  user {DEMO_ADMIN!r} "
                          f"password {credentials['adminPassword']!r}")
        self.stdout.write(f"  {DEMO_ORIGIN} token:  {credentials['token']}")
        self.stdout.write(f"  operator token: {credentials['operatorToken']}")

    def _ensure_client(self, name: str, token: str | None, *, operator: bool) -> str:
        client = ApiClient.objects.filter(name=name).first()
        if client is None:
            return api_client_create(name=name, origin_system="" if operator else name, is_operator=operator)[1]
        if not client.is_active:
            client.is_active = True
            client.save(update_fields=["is_active"])
        if token and client.token_hash == ApiClient.hash_token(token):
            return token
        return api_client_rotate_token(client=client)

    def _ensure_admin(self, password: str | None) -> str:
        user_model = get_user_model()
        user = user_model.objects.filter(username=DEMO_ADMIN).first()
        if user is not None and password and user.check_password(password):
            return password
        password = secrets.token_urlsafe(12)
        if user is None:
            user_model.objects.create_superuser(DEMO_ADMIN, "admin@example.com", password)
        else:
            user.set_password(password)
            user.is_staff = user.is_superuser = user.is_active = True
            user.save()
        return password
