"""API tokens: `manage.py apitoken`, the token page, and what the database keeps (a digest, never the secret)."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from rest_framework.test import APIClient

from esaroutes.api import auth
from esaroutes.models import ApiToken
from routes.models import AuditEntry

pytestmark = pytest.mark.usefixtures("_fast_passwords")


@pytest.fixture
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("apitoken", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def schema_status(secret: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client.get(reverse("api:schema")).status_code


def test_create_prints_the_token_once_and_keeps_only_its_digest(bob):
    out, err = command("create", "bob", "--name", "deploy", "--read-only", "--expires", "30")
    secret = out.strip()
    assert out == secret + "\n" and secret.startswith("esr_") and len(secret) > 40
    assert "deploy" in err and "read-only" in err and secret not in err
    token = ApiToken.objects.get(name="deploy")
    assert token.user == bob and token.read_only and token.expires_at is not None
    assert token.digest == auth.digest(secret) and secret not in (token.prefix, token.digest)
    assert schema_status(secret) == 200
    entry = AuditEntry.objects.get(object_type="API token")
    assert entry.action == "create" and entry.actor_name.startswith("cli:") and entry.object_repr == "deploy"
    listing, _ = command("list")
    assert "deploy\tbob\t" in listing and secret not in listing


def test_revoke_refuses_the_token_from_then_on(bob):
    secret = command("create", "bob", "--name", "ci")[0].strip()
    assert schema_status(secret) == 200
    command("revoke", "ci")
    assert schema_status(secret) == 401
    assert AuditEntry.objects.filter(object_type="API token", action="delete", object_repr="ci").exists()
    with pytest.raises(CommandError, match="no token named 'ci'"):
        command("revoke", "ci")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "nobody"), "no user named 'nobody'"),
        (("create", "bob", "--name", "has space"), "--name: Use 1 to 64"),
        (("create", "bob", "--expires", "0"), "--expires: Give a number of days"),
    ],
)
def test_create_refuses_bad_input_by_name(bob, args, message):
    with pytest.raises(CommandError, match=message):
        command(*args)
    assert not ApiToken.objects.exists()


def test_a_token_name_is_unique(bob, carol):
    command("create", "bob", "--name", "sync")
    with pytest.raises(CommandError, match="exists already"):
        command("create", "carol", "--name", "sync")


def test_the_page_shows_a_new_token_once(client, carol):
    client.force_login(carol)
    response = client.post(reverse("token-create"), {"name": "report", "read_only": "on", "expires": "7"})
    assert response.status_code == 201
    secret = response.context["secret"]
    assert secret.encode() in response.content
    assert schema_status(secret) == 200
    page = client.get(reverse("token-list"))
    assert page.status_code == 200 and b"report" in page.content and secret.encode() not in page.content
    token = ApiToken.objects.get(name="report")
    assert token.user == carol and token.read_only


def test_the_page_puts_errors_at_their_field(client, carol):
    client.force_login(carol)
    client.post(reverse("token-create"), {"name": "taken"})
    response = client.post(reverse("token-create"), {"name": "taken", "expires": "0"})
    assert response.status_code == 422
    form = response.context["form"]
    assert "expires" in form.errors
    response = client.post(reverse("token-create"), {"name": "taken"})
    assert response.status_code == 422 and "exists already" in response.context["form"].errors["name"][0]


def test_users_revoke_their_own_tokens_and_administrators_anyones(client, alice, bob, carol):
    client.force_login(bob)
    client.post(reverse("token-create"), {"name": "bobs"})
    token = ApiToken.objects.get(name="bobs")
    client.force_login(carol)
    assert b"bobs" not in client.get(reverse("token-list")).content
    assert client.post(reverse("token-revoke", args=[token.pk])).status_code == 403
    assert ApiToken.objects.filter(pk=token.pk).exists()
    client.force_login(alice)
    assert b"bobs" in client.get(reverse("token-list")).content
    assert client.post(reverse("token-revoke", args=[token.pk])).status_code == 302
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    assert AuditEntry.objects.get(object_type="API token", action="delete").actor == alice
