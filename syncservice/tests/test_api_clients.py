"""create_api_client: tokens shown once, stored hashed, bound to an origin or operator."""

import base64
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from syncservice.models import ApiClient
from syncservice.services.clients import api_client_webhook_secret

from .fixtures import Caller, note_example

pytestmark = pytest.mark.django_db


def run(*args) -> list[str]:
    out = StringIO()
    call_command("create_api_client", *args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_origin_client_token_is_the_last_line_and_works(client):
    lines = run("HR_SYSTEM")
    token = lines[-1]

    api_client = ApiClient.objects.get(name="HR_SYSTEM")
    assert api_client.origin_system == "HR_SYSTEM" and not api_client.is_operator
    assert token not in (api_client.token_hash, api_client.token_hint)
    assert api_client.token_hash == ApiClient.hash_token(token)
    assert Caller(client, token).submit(note_example()).status_code == 202


@pytest.mark.parametrize(("args", "first_line"), [
    (["SUPPLIER"], "Created client 'SUPPLIER' (id {id}) for originSystem SUPPLIER."),
    (["SUPPLIER", "--name", "portal"], "Created client 'portal' (id {id}) for originSystem SUPPLIER."),
    (["ops-console", "--operator"], "Created operator client 'ops-console' (id {id})."),
])
def test_the_first_line_names_the_client_and_its_origin_once_each(args, first_line):
    lines = run(*args)
    api_client = ApiClient.objects.get()
    assert lines[0] == first_line.format(id=api_client.pk)
    assert lines[1] == "Its token follows; it is shown only this once. Send it as 'Authorization: Bearer <token>'."
    assert len(lines) == 3


def test_operator_client_is_bound_to_no_origin_and_reads_everything(client):
    token = run("ops-console", "--operator")[-1]
    api_client = ApiClient.objects.get(name="ops-console")
    assert api_client.is_operator and api_client.origin_system == ""
    assert Caller(client, token).get("/account-creation/requests/").status_code == 200


def test_existing_name_is_an_error_unless_rotating(client):
    old = run("HR_SYSTEM")[-1]
    with pytest.raises(CommandError, match="exists"):
        run("HR_SYSTEM")
    new = run("HR_SYSTEM", "--rotate")[-1]
    assert new != old
    assert Caller(client, old).get("/account-creation/requests/").status_code == 401
    assert Caller(client, new).get("/account-creation/requests/").status_code == 200


@pytest.mark.parametrize("origin", ["HR SYSTEM", "", "X" * 65, "_lead", "HR/SYSTEM"])
def test_invalid_origin_system_is_refused(origin):
    with pytest.raises(CommandError, match="Invalid ORIGIN_SYSTEM"):
        run(origin)
    assert not ApiClient.objects.exists()


WEBHOOK_SECRET_LINE = "Webhook secret (shown once): "


def stored_secret(name: str) -> str:
    return api_client_webhook_secret(client=ApiClient.objects.get(name=name))


def test_webhook_secret_is_shown_once_before_the_token_and_stored_encrypted(client):
    lines = run("HR_SYSTEM", "--webhook-secret")

    token = lines[-1]
    assert Caller(client, token).submit(note_example()).status_code == 202
    [secret_line] = [line for line in lines if line.startswith(WEBHOOK_SECRET_LINE)]
    assert lines.index(secret_line) < len(lines) - 1
    secret = secret_line.removeprefix(WEBHOOK_SECRET_LINE)
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    api_client = ApiClient.objects.get(name="HR_SYSTEM")
    assert secret not in api_client.webhook_secret_encrypted
    assert stored_secret("HR_SYSTEM") == secret


def test_client_created_without_the_option_has_no_webhook_secret():
    lines = run("HR_SYSTEM")
    assert not any(WEBHOOK_SECRET_LINE in line for line in lines)
    assert ApiClient.objects.get(name="HR_SYSTEM").webhook_secret_encrypted == ""


def test_rotating_the_webhook_secret_prints_the_new_one_last_and_keeps_the_token(client):
    token = run("HR_SYSTEM", "--webhook-secret")[-1]
    old = stored_secret("HR_SYSTEM")

    new = run("HR_SYSTEM", "--rotate-webhook-secret")[-1]

    assert new.startswith("whsec_") and new != old
    assert stored_secret("HR_SYSTEM") == new
    assert Caller(client, token).get("/account-creation/requests/").status_code == 200


def test_rotating_token_and_secret_together_keeps_the_token_last(client):
    run("HR_SYSTEM")
    lines = run("HR_SYSTEM", "--rotate", "--rotate-webhook-secret")

    assert Caller(client, lines[-1]).get("/account-creation/requests/").status_code == 200
    assert WEBHOOK_SECRET_LINE + stored_secret("HR_SYSTEM") in lines[:-1]


def test_webhook_secret_option_on_an_existing_client_is_an_error():
    run("HR_SYSTEM")
    with pytest.raises(CommandError, match="--rotate-webhook-secret"):
        run("HR_SYSTEM", "--webhook-secret")
    assert ApiClient.objects.get(name="HR_SYSTEM").webhook_secret_encrypted == ""


def test_notify_email_is_set_at_creation_and_can_be_changed():
    run("HR_SYSTEM", "--notify-email", "ops@example.com")
    assert ApiClient.objects.get(name="HR_SYSTEM").notify_email == "ops@example.com"

    run("HR_SYSTEM", "--notify-email", "it-ops@example.com")
    assert ApiClient.objects.get(name="HR_SYSTEM").notify_email == "it-ops@example.com"
    run("HR_SYSTEM", "--notify-email", "")
    assert ApiClient.objects.get(name="HR_SYSTEM").notify_email == ""


def test_invalid_notify_email_is_refused_and_nothing_is_created():
    with pytest.raises(CommandError, match="notify_email"):
        run("HR_SYSTEM", "--notify-email", "not-an-address", "--webhook-secret")
    assert not ApiClient.objects.exists()
    run("HR_SYSTEM")
    with pytest.raises(CommandError, match="Invalid --notify-email 'also bad'"):
        run("HR_SYSTEM", "--notify-email", "also bad")
