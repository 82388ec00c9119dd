"""`/api/v1/auth-profiles/`: the happy path and each refusal (role, read-only token, validation at its field,
If-Match, a profile in use), every change audited with the token's name, and the password write-only: never in an
answer's bytes, an ETag's input or an audit row."""

from __future__ import annotations

import pytest
from django.urls import reverse

from esaroutes.api import conditional
from routes import auth_profiles, services
from routes.models import AuditEntry, AuthProfile
from tests.api.conftest import is_problem
from tests.routes.helpers import make_route

URL = "/api/v1/auth-profiles/"
SECRET = "Tr0ub4dor&3-api-outgoing"
NEW_SECRET = "c0rrect-h0rse-api-new"
FIELDS = {"id", "name", "username", "has_password", "updated_at"}


def new_profile(client, name="smarthost", **extra):
    return client.post(URL, {"name": name, "username": "relay-user", "password": SECRET, **extra}, format="json")


def audited() -> list[tuple[str, str, str]]:
    rows = AuditEntry.objects.filter(object_type="auth profile").order_by("pk")
    return list(rows.values_list("action", "actor_name", "object_repr"))


def shows_no_secret(response) -> None:
    """Neither password, nor the stored ciphertext, in the raw bytes of the answer; the ETag is the body's digest."""
    for secret in (SECRET, NEW_SECRET, *AuthProfile.objects.values_list("password_encrypted", flat=True)):
        assert secret.encode() not in response.content
    assert b"password" not in response.content.replace(b"has_password", b"")
    if response.status_code == 200 and "results" not in response.json():
        assert response["ETag"] == conditional.etag(response.json())  # nothing else went into it


def test_create_read_list_change_replace_delete_and_audit(bob, api_client):
    client = api_client(bob, name="cmdb")
    made = new_profile(client)
    assert made.status_code == 201, made.content
    shows_no_secret(made)
    profile = made.json()
    assert set(profile) == FIELDS
    assert (profile["name"], profile["username"], profile["has_password"]) == ("smarthost", "relay-user", True)
    assert auth_profiles.credentials(profile["id"]) == ("relay-user", SECRET)
    url = f"{URL}{profile['id']}/"
    assert made["Location"].endswith(url)
    read = client.get(url)
    shows_no_secret(read)
    assert read.json() == profile and read["ETag"] == made["ETag"] == conditional.etag(profile)
    listed = client.get(URL)
    shows_no_secret(listed)
    assert listed.json()["results"] == [profile]

    renamed = client.patch(url, {"username": "relay2"}, format="json", HTTP_IF_MATCH=read["ETag"])
    assert renamed.status_code == 200, renamed.content
    shows_no_secret(renamed)
    assert renamed.json()["username"] == "relay2" and renamed["ETag"] == client.get(url)["ETag"] != read["ETag"]
    assert auth_profiles.credentials(profile["id"]) == ("relay2", SECRET)  # PATCH without a password keeps it
    new_password = client.patch(url, {"password": NEW_SECRET}, format="json", HTTP_IF_MATCH=renamed["ETag"])
    assert new_password.status_code == 200, new_password.content
    shows_no_secret(new_password)
    assert new_password["ETag"] != renamed["ETag"]  # a changed password is a change to what was read
    assert auth_profiles.credentials(profile["id"]) == ("relay2", NEW_SECRET)
    replaced = client.put(url, {"name": "smarthost2", "username": "relay3"}, format="json", HTTP_IF_MATCH="*")
    assert replaced.status_code == 200, replaced.content
    shows_no_secret(replaced)
    assert auth_profiles.credentials(profile["id"]) == ("relay3", NEW_SECRET)  # so does a PUT without one
    assert client.patch(url, {"password": ""}, format="json", HTTP_IF_MATCH="*").status_code == 200
    assert auth_profiles.credentials(profile["id"]) == ("relay3", NEW_SECRET)  # and an empty one
    assert client.delete(url, HTTP_IF_MATCH=client.get(url)["ETag"]).status_code == 204
    assert not AuthProfile.objects.exists()

    assert audited() == [
        ("create", "api:bob/cmdb", "smarthost"),
        ("update", "api:bob/cmdb", "smarthost"),
        ("update", "api:bob/cmdb", "smarthost"),
        ("update", "api:bob/cmdb", "smarthost2"),
        ("delete", "api:bob/cmdb", "smarthost2"),
    ]
    changed_password = AuditEntry.objects.filter(object_type="auth profile", action="update").order_by("pk")[1]
    assert changed_password.after["password"] == "changed"
    for entry in AuditEntry.objects.all():
        row = repr((entry.object_repr, entry.before, entry.after)).encode()
        assert SECRET.encode() not in row and NEW_SECRET.encode() not in row
    audit_log = client.get("/api/v1/audit/?object_type=auth profile")
    assert audit_log.status_code == 200 and len(audit_log.json()["results"]) == 5
    assert SECRET.encode() not in audit_log.content and NEW_SECRET.encode() not in audit_log.content


def test_a_change_bumps_the_route_table_version(bob, api_client):
    client = api_client(bob)
    version = services.current_version()
    made = new_profile(client)
    assert services.current_version() > version
    version = services.current_version()
    client.patch(f"{URL}{made.json()['id']}/", {"password": NEW_SECRET}, format="json", HTTP_IF_MATCH="*")
    assert services.current_version() > version  # routes using it log in with the new password


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"username": "u", "password": SECRET}, "name"),
        ({"name": "", "username": "u", "password": SECRET}, "name"),
        ({"name": "x" * 65, "username": "u", "password": SECRET}, "name"),
        ({"name": ["x"], "username": "u", "password": SECRET}, "name"),
        ({"name": "p", "password": SECRET}, "username"),
        ({"name": "p", "username": "", "password": SECRET}, "username"),
        ({"name": "p", "username": "u" * 256, "password": SECRET}, "username"),
        ({"name": "p", "username": "u"}, "password"),  # a new profile needs one
        ({"name": "p", "username": "u", "password": ""}, "password"),
        ({"name": "p", "username": "u", "password": "x" * 1025}, "password"),
        ({"name": "p", "username": "u", "password": "a\x00b"}, "password"),
    ],
)
def test_invalid_profiles_are_refused_at_their_field(bob, api_client, body, field):
    response = api_client(bob).post(URL, body, format="json")
    is_problem(response, 400, field)
    assert SECRET.encode() not in response.content
    assert not AuthProfile.objects.exists()
    assert audited() == []


def test_names_stay_unique(bob, api_client):
    client = api_client(bob)
    first, second = new_profile(client).json(), new_profile(client, "other").json()
    body = is_problem(new_profile(client), 400, "name")
    assert "already exists" in body["detail"] and SECRET not in str(body)
    is_problem(
        client.patch(f"{URL}{second['id']}/", {"name": "smarthost"}, format="json", HTTP_IF_MATCH="*"), 400, "name"
    )
    assert sorted(AuthProfile.objects.values_list("name", flat=True)) == ["other", "smarthost"]
    assert AuthProfile.objects.get(pk=first["id"]).username == "relay-user"


def test_a_profile_routes_use_is_kept(bob, api_client):
    client = api_client(bob)
    used = new_profile(client).json()
    make_route("b.example", auth_profile_id=used["id"])
    make_route("a.example", auth_profile_id=used["id"])
    body = is_problem(client.delete(f"{URL}{used['id']}/", HTTP_IF_MATCH="*"), 409)
    assert "2 routes use this auth profile (a.example, b.example)" in body["detail"]
    assert auth_profiles.credentials(used["id"]) == ("relay-user", SECRET)
    assert [a for a, _, _ in audited()] == ["create"]


def test_writes_need_the_current_etag(bob, api_client):
    client = api_client(bob)
    made = new_profile(client)
    url = f"{URL}{made.json()['id']}/"
    is_problem(client.patch(url, {"username": "u2"}, format="json"), 428)
    is_problem(client.put(url, {"name": "p", "username": "u2"}, format="json"), 428)
    is_problem(client.delete(url), 428)
    assert client.patch(url, {"username": "u2"}, format="json", HTTP_IF_MATCH=made["ETag"]).status_code == 200
    is_problem(client.patch(url, {"password": NEW_SECRET}, format="json", HTTP_IF_MATCH=made["ETag"]), 412)
    is_problem(client.put(url, {"name": "p", "username": "u3"}, format="json", HTTP_IF_MATCH=made["ETag"]), 412)
    is_problem(client.delete(url, HTTP_IF_MATCH=made["ETag"]), 412)
    assert auth_profiles.credentials(made.json()["id"]) == ("u2", SECRET)
    is_problem(client.get(f"{URL}999999/"), 404)
    is_problem(client.patch(f"{URL}999999/", {"username": "u"}, format="json", HTTP_IF_MATCH="*"), 404)
    is_problem(client.delete(f"{URL}999999/", HTTP_IF_MATCH="*"), 404)


def test_a_bad_change_is_refused_before_if_match_and_changes_nothing(bob, api_client):
    client = api_client(bob)
    url = f"{URL}{new_profile(client).json()['id']}/"
    is_problem(client.patch(url, {"username": ""}, format="json", HTTP_IF_MATCH='"stale"'), 400, "username")
    is_problem(client.put(url, {"name": "p"}, format="json", HTTP_IF_MATCH="*"), 400, "username")
    is_problem(client.patch(url, {"password": "x" * 1025}, format="json", HTTP_IF_MATCH="*"), 400, "password")
    assert AuthProfile.objects.get().username == "relay-user"
    assert [a for a, _, _ in audited()] == ["create"]


def test_roles_and_read_only_tokens(alice, bob, carol, dave, api_client):
    profile = new_profile(api_client(alice)).json()
    url = f"{URL}{profile['id']}/"
    for who in (api_client(carol), api_client(bob, read_only=True)):  # a Read-only operator, a read-only token
        assert who.get(URL).json()["results"] == [profile] and who.get(url).json() == profile
        is_problem(new_profile(who, "other"), 403)
        is_problem(who.patch(url, {"password": NEW_SECRET}, format="json", HTTP_IF_MATCH="*"), 403)
        is_problem(who.put(url, {"name": "p", "username": "u"}, format="json", HTTP_IF_MATCH="*"), 403)
        is_problem(who.delete(url, HTTP_IF_MATCH="*"), 403)
    for path in (URL, url):
        is_problem(api_client(dave).get(path), 403)  # the help desk sees no configuration
    assert auth_profiles.credentials(profile["id"]) == ("relay-user", SECRET)
    assert [a for a, _, _ in audited()] == ["create"]


def test_the_schema_marks_the_password_write_only(carol, api_client):
    schema = api_client(carol).get(reverse("api:schema") + "?format=json").json()
    read = schema["components"]["schemas"]["AuthProfile"]
    assert "password" not in read["properties"]
    written = schema["components"]["schemas"]["AuthProfileRequest"]["properties"]["password"]
    assert written["writeOnly"] is True
    assert set(schema["paths"]["/api/v1/auth-profiles/{id}/"]) >= {"get", "put", "patch", "delete"}
