"""Outgoing SMTP AUTH passwords: encrypted at rest under the configured key, never in a page, an export, the audit
log or the application log. Inbound SMTP AUTH passwords are stored hashed."""

from __future__ import annotations

import base64
import logging

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import call_command
from django.db import connection

from routes import auth_profiles
from routes.models import AuditEntry, AuthProfile, Route, SmtpUser

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("_fast_passwords")]

SECRET = "Tr0ub4dor&3-outgoing"
NEW_SECRET = "c0rrect-h0rse-new-one"


def raw_column(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT password_encrypted FROM {AuthProfile._meta.db_table} WHERE name = %s", [name])
        return str(cursor.fetchone()[0])


def leaks(text: str | bytes, *secrets: str) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode()
    found = []
    for secret in secrets:
        for form in (secret.encode(), base64.b64encode(secret.encode()), secret.encode().hex().encode()):
            if form in data:
                found.append(secret)
    return found


def test_passwords_are_encrypted_at_rest_under_the_configured_key_and_shown_nowhere(
    client, alice, settings, caplog, capsys
):
    key = Fernet.generate_key().decode()
    settings.ESAROUTES_ENCRYPTION_KEY = key
    caplog.set_level(logging.DEBUG)
    client.force_login(alice)
    response = client.post(
        "/admin/routes/authprofile/add/", {"name": "smarthost", "username": "relay-user", "password": SECRET}
    )
    assert response.status_code == 302, response.content[:2000]
    profile = AuthProfile.objects.get(name="smarthost")
    column = raw_column("smarthost")
    assert column and not leaks(column, SECRET)
    assert Fernet(key.encode()).decrypt(column.encode()).decode() == SECRET
    with pytest.raises(InvalidToken):
        Fernet(Fernet.generate_key()).decrypt(column.encode())
    assert auth_profiles.credentials(profile.pk) == ("relay-user", SECRET)

    # a new password replaces the old one, still encrypted; an empty one keeps it
    edit = f"/admin/routes/authprofile/{profile.pk}/change/"
    assert client.post(edit, {"name": "smarthost", "username": "relay-user", "password": NEW_SECRET}).status_code == 302
    assert auth_profiles.credentials(profile.pk) == ("relay-user", NEW_SECRET)
    assert client.post(edit, {"name": "smarthost", "username": "relay-user", "password": ""}).status_code == 302
    assert auth_profiles.credentials(profile.pk) == ("relay-user", NEW_SECRET)
    assert not leaks(raw_column("smarthost"), SECRET, NEW_SECRET)

    route = Route.objects.create(domain="dest.test", auth_profile=profile)
    route.hosts.create(host="127.0.0.1", port=9, priority=0, position=0)
    pages = [
        edit,
        "/admin/routes/authprofile/",
        "/admin/routes/route/",
        f"/admin/routes/route/{route.pk}/change/",
        "/admin/routes/auditentry/",
        *(f"/admin/routes/auditentry/{pk}/change/" for pk in AuditEntry.objects.values_list("pk", flat=True)),
        "/routes/",
        f"/routes/{route.pk}/",
        "/audit/",
        "/routes/export/",
        "/routes/test/?address=x@dest.test",
    ]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        assert not leaks(response.content, SECRET, NEW_SECRET), path
    assert b"smarthost" in client.get("/routes/").content  # the profile is named, its password is not

    for entry in AuditEntry.objects.all():
        assert not leaks(repr((entry.before, entry.after, entry.object_repr)), SECRET, NEW_SECRET)
    call_command("smtproutes", "export", "-")
    call_command("smtproutes", "print")
    assert not leaks(capsys.readouterr().out, SECRET, NEW_SECRET)
    assert not leaks("\n".join(r.getMessage() for r in caplog.records), SECRET, NEW_SECRET)


def test_a_stored_password_cannot_be_read_with_another_key(settings):
    settings.ESAROUTES_ENCRYPTION_KEY = Fernet.generate_key().decode()
    profile = auth_profiles.save(profile_id=None, name="p", username="u", password=SECRET, actor="test")
    settings.ESAROUTES_ENCRYPTION_KEY = Fernet.generate_key().decode()
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="enter the password again"):
        auth_profiles.credentials(profile.pk)


def test_inbound_smtp_auth_passwords_are_hashed_and_never_shown(client, alice):
    client.force_login(alice)
    response = client.post(
        "/routes/access/users/",
        {"username": "app", "password": SECRET, "is_active": "on"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200, response.content[:2000]
    stored = SmtpUser.objects.get(username="app").password
    assert stored != SECRET and stored.split("$", 1)[0] in ("md5", "pbkdf2_sha256", "argon2", "bcrypt_sha256")
    for path in ("/routes/access/", "/audit/", "/admin/routes/smtpuser/"):
        content = client.get(path).content
        assert not leaks(content, SECRET), path
        assert stored.encode() not in content, path
