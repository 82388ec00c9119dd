"""`/api/v1/destinations/`: the destination controls' happy path and refusals (role, read-only token, validation
at its field, If-Match, the Default entry kept)."""

from __future__ import annotations

import pytest

from routes import services
from routes.models import AuditEntry, DestinationControl
from tests.api.conftest import is_problem

URL = "/api/v1/destinations/"


def new_destination(client, destination="dest.test", **extra):
    return client.post(URL, {"destination": destination, **extra}, format="json")


def test_create_read_list_change_delete_and_audit(bob, api_client):
    client = api_client(bob, name="cmdb")
    response = new_destination(client, "Bücher.example", max_connections=5, recipient_limit=10, recipient_minutes=5)
    assert response.status_code == 201, response.content
    control = response.json()
    assert control["destination"] == "xn--bcher-kva.example" and control["display_destination"] == "bücher.example"
    assert control["max_connections"] == 5 and control["recipient_limit"] == 10 and not control["is_default"]
    url = f"{URL}{control['id']}/"
    assert response["Location"].endswith(url)
    read = client.get(url)
    assert read.json() == control and read["ETag"] == response["ETag"]
    listed = client.get(URL).json()["results"]
    assert "xn--bcher-kva.example" in [d["destination"] for d in listed]
    changed = client.patch(url, {"tls": "required"}, format="json", HTTP_IF_MATCH=read["ETag"])
    assert changed.status_code == 200, changed.content
    assert changed.json()["tls"] == "required" and changed.json()["max_connections"] == 5
    replaced = client.put(url, {"destination": "bücher.example"}, format="json", HTTP_IF_MATCH=changed["ETag"])
    assert replaced.status_code == 200 and replaced.json()["tls"] == "preferred"  # PUT: the defaults again
    assert replaced.json()["recipient_limit"] is None
    assert client.delete(url, HTTP_IF_MATCH=replaced["ETag"]).status_code == 204
    assert not DestinationControl.objects.filter(pk=control["id"]).exists()
    actions = list(
        AuditEntry.objects.filter(object_type=services.DESTINATION_OBJECT).values_list("action", "actor_name")
    )
    assert sorted(actions) == sorted((a, "api:bob/cmdb") for a in ("create", "update", "update", "delete"))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"destination": "bad domain"}, "destination"),
        ({"destination": "a.test", "max_connections": 0}, "max_connections"),
        ({"destination": "a.test", "max_connections": 10**12}, "max_connections"),
        ({"destination": "a.test", "max_messages_per_connection": 5000}, "max_messages_per_connection"),
        ({"destination": "a.test", "recipient_limit": 10}, "recipient_minutes"),
        ({"destination": "a.test", "tls": "maybe"}, "tls"),
        ({"destination": "a.test", "limit_scope": "planet"}, "limit_scope"),
        ({"destination": "a.test", "bounce_profile": 999999}, "bounce_profile"),
        ({"destination": "default"}, "destination"),
        ({}, "destination"),
    ],
)
def test_invalid_entries_are_refused_at_their_field(bob, api_client, body, field):
    services.default_destination()
    before = DestinationControl.objects.count()
    is_problem(api_client(bob).post(URL, body, format="json"), 400, field)
    assert DestinationControl.objects.count() == before


def test_an_existing_destination_is_refused_at_destination(bob, api_client):
    client = api_client(bob)
    assert new_destination(client).status_code == 201
    is_problem(new_destination(client), 400, "destination")


def test_the_default_entry_is_neither_deleted_nor_renamed(bob, api_client):
    default = services.default_destination()
    client = api_client(bob)
    url = f"{URL}{default.pk}/"
    body = is_problem(client.delete(url, HTTP_IF_MATCH="*"), 409)
    assert "cannot be deleted" in body["detail"]
    is_problem(client.patch(url, {"destination": "x.test"}, format="json", HTTP_IF_MATCH="*"), 400, "destination")
    changed = client.patch(url, {"max_connections": 7}, format="json", HTTP_IF_MATCH="*")
    assert changed.status_code == 200 and changed.json()["is_default"] and changed.json()["max_connections"] == 7
    assert DestinationControl.objects.filter(destination="default").exists()


def test_writes_need_the_current_etag(bob, api_client):
    client = api_client(bob)
    created = new_destination(client)
    url = f"{URL}{created.json()['id']}/"
    is_problem(client.patch(url, {"max_connections": 3}, format="json"), 428)
    is_problem(client.delete(url), 428)
    assert client.patch(url, {"max_connections": 3}, format="json", HTTP_IF_MATCH=created["ETag"]).status_code == 200
    is_problem(client.put(url, {"destination": "dest.test"}, format="json", HTTP_IF_MATCH=created["ETag"]), 412)
    is_problem(client.delete(url, HTTP_IF_MATCH=created["ETag"]), 412)
    assert DestinationControl.objects.get(pk=created.json()["id"]).max_connections == 3
    is_problem(client.get(f"{URL}999999/"), 404)


def test_roles_and_read_only_tokens(bob, carol, dave, api_client):
    created = new_destination(api_client(bob))
    url = f"{URL}{created.json()['id']}/"
    reader = api_client(carol)
    assert reader.get(url).status_code == 200 and reader.get(URL).status_code == 200
    is_problem(new_destination(reader, "other.test"), 403)
    is_problem(reader.patch(url, {"max_connections": 3}, format="json", HTTP_IF_MATCH="*"), 403)
    is_problem(reader.delete(url, HTTP_IF_MATCH="*"), 403)
    is_problem(api_client(dave).get(URL), 403)
    read_only = api_client(bob, read_only=True)
    assert read_only.get(url).status_code == 200
    is_problem(read_only.delete(url, HTTP_IF_MATCH="*"), 403)
    is_problem(new_destination(read_only, "other.test"), 403)
    assert DestinationControl.objects.filter(destination="dest.test").exists()
    assert not DestinationControl.objects.filter(destination="other.test").exists()
