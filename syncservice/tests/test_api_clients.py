"""create_api_client: tokens shown once, stored hashed, bound to an origin or operator."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from syncservice.models import ApiClient

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
