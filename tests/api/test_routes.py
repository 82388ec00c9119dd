"""`/api/v1/routes/`: each endpoint's happy path and its refusals (role, read-only token, validation, If-Match)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from routes.models import AuditEntry, Route
from tests.api.conftest import is_problem

ROUTES = "/api/v1/routes/"


def new_route(client, domain="dest.test", destination=("127.0.0.1:2525/pri=5", "[mx.dest.test]")):
    return client.post(ROUTES, {"domain": domain, "destination": list(destination)}, format="json")


def test_create_read_list_and_audit_with_the_tokens_name(bob, api_client):
    client = api_client(bob, name="cmdb")
    response = new_route(client)
    assert response.status_code == 201, response.content
    route = response.json()
    assert route["domain"] == "dest.test" and route["destination"] == ["127.0.0.1:2525/pri=5", "[mx.dest.test]"]
    assert response["Location"].endswith(f"{ROUTES}{route['id']}/")
    read = client.get(f"{ROUTES}{route['id']}/")
    assert read.json() == route and read["ETag"] == response["ETag"]
    listing = client.get(ROUTES + "?q=mx.dest&kind=exact").json()
    assert [r["domain"] for r in listing["results"]] == ["dest.test"]
    assert AuditEntry.objects.get(object_type="route", action="create").actor_name == "api:bob/cmdb"


def test_unicode_domains_and_specials(bob, api_client):
    client = api_client(bob)
    route = new_route(client, "bücher.example", ["USEDNS"]).json()
    assert route["domain"] == "xn--bcher-kva.example" and route["display_domain"] == "bücher.example"
    assert route["destination"] == ["USEDNS"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"domain": "bad domain", "destination": ["127.0.0.1"]}, "domain"),
        ({"domain": "a.test", "destination": ["127.0.0.1", "127.0.0.1:99999"]}, "destination.1"),
        ({"domain": "a.test", "destination": ["127.0.0.1", "127.0.0.1"]}, "destination.1"),
        ({"domain": "a.test", "destination": []}, "destination"),
        ({"domain": "a.test", "destination": ["127.0.0.1"], "tls": "maybe"}, "tls"),
        ({"domain": "a.test", "destination": ["127.0.0.1"], "auth_profile": 999999}, "auth_profile"),
        ({"domain": "ALL", "destination": ["USEDNS"]}, "destination"),
        ({"destination": ["127.0.0.1"]}, "domain"),
    ],
)
def test_invalid_routes_are_refused_at_their_field(bob, api_client, body, field):
    before = Route.objects.count()
    is_problem(api_client(bob).post(ROUTES, body, format="json"), 400, field)
    assert Route.objects.count() == before


def test_an_existing_domain_is_refused_at_domain(bob, api_client):
    client = api_client(bob)
    new_route(client)
    is_problem(new_route(client), 400, "domain")


def test_update_needs_the_current_etag(bob, api_client):
    client = api_client(bob)
    created = new_route(client)
    url = f"{ROUTES}{created.json()['id']}/"
    body = {"domain": "dest.test", "destination": ["127.0.0.2"]}
    is_problem(client.put(url, body, format="json"), 428)
    changed = client.patch(url, {"tls": "required"}, format="json", HTTP_IF_MATCH=created["ETag"])
    assert changed.status_code == 200, changed.content
    assert changed.json()["tls"] == "required" and changed.json()["destination"] == created.json()["destination"]
    is_problem(client.put(url, body, format="json", HTTP_IF_MATCH=created["ETag"]), 412)  # stale now
    etag = client.get(url)["ETag"]
    replaced = client.put(url, body, format="json", HTTP_IF_MATCH=etag)
    assert replaced.status_code == 200 and replaced.json()["destination"] == ["127.0.0.2"]
    assert replaced.json()["tls"] == "opportunistic"  # PUT replaces: the default again
    is_problem(client.patch(url, {"destination": ["x:0"]}, format="json", HTTP_IF_MATCH="*"), 400, "destination.0")


def test_delete_needs_the_current_etag(bob, api_client):
    client = api_client(bob)
    created = new_route(client)
    url = f"{ROUTES}{created.json()['id']}/"
    is_problem(client.delete(url), 428)
    is_problem(client.delete(url, HTTP_IF_MATCH='"stale"'), 412)
    assert client.delete(url, HTTP_IF_MATCH=created["ETag"]).status_code == 204
    assert not Route.objects.filter(domain="dest.test").exists()
    is_problem(client.get(url), 404)


def test_roles_and_read_only_tokens(bob, carol, dave, api_client):
    created = new_route(api_client(bob))
    url = f"{ROUTES}{created.json()['id']}/"
    reader = api_client(carol)
    assert reader.get(url).status_code == 200
    is_problem(new_route(reader, "other.test"), 403)
    is_problem(reader.delete(url, HTTP_IF_MATCH="*"), 403)
    is_problem(api_client(dave).get(ROUTES), 403)
    read_only = api_client(bob, read_only=True)
    assert read_only.get(url).status_code == 200
    is_problem(read_only.delete(url, HTTP_IF_MATCH="*"), 403)
    assert Route.objects.filter(domain="dest.test").exists()


def test_the_route_test_plans_and_the_probe_needs_change(bob, carol, api_client, smtp_sink_port=None):
    new_route(api_client(bob), "dest.test", ["127.0.0.1:9"])
    plan = api_client(carol).post(f"{ROUTES}test/", {"address": "user@dest.test"}, format="json")
    assert plan.status_code == 200, plan.content
    body = plan.json()
    assert body["route"] == "dest.test" and [(h["host"], h["port"]) for h in body["hosts"]] == [("127.0.0.1", 9)]
    is_problem(api_client(carol).post(f"{ROUTES}test/", {"address": "x@dest.test", "probe": True}, format="json"), 403)
    probed = api_client(bob).post(f"{ROUTES}test/", {"address": "x@dest.test", "probe": True}, format="json").json()
    assert probed["hosts"][0]["probe"]["ok"] is False  # nothing listens on port 9: refused, said so
    is_problem(api_client(bob).post(f"{ROUTES}test/", {"address": "not an address"}, format="json"), 400, "address")


def test_export_and_import_with_a_dry_run(bob, api_client):
    client = api_client(bob)
    new_route(client, "old.test", ["127.0.0.1"])
    export = client.get(f"{ROUTES}export/")
    assert export.status_code == 200 and export["Content-Type"].startswith("text/plain")
    assert "old.test" in export.content.decode()
    text = b"new.test 127.0.0.1:2525\nold.test 127.0.0.2\n"
    dry = client.post(f"{ROUTES}import/?mode=merge&dry_run=1", text, content_type="text/plain")
    assert dry.status_code == 200, dry.content
    body = dry.json()
    assert body["added"] == ["new.test"] and body["changed"] == ["old.test"] and body["removed"] == []
    assert {c["kind"] for c in body["hosts"]["old.test"]} >= {"added", "removed"}
    assert not Route.objects.filter(domain="new.test").exists()  # a dry run changes nothing
    is_problem(client.post(f"{ROUTES}import/?mode=merge", text, content_type="text/plain"), 428)
    is_problem(client.post(f"{ROUTES}import/?mode=merge", text, content_type="text/plain", HTTP_IF_MATCH='"x"'), 412)
    applied = client.post(f"{ROUTES}import/?mode=merge", text, content_type="text/plain", HTTP_IF_MATCH=dry["ETag"])
    assert applied.status_code == 200, applied.content
    assert Route.objects.filter(domain="new.test").exists()
    assert AuditEntry.objects.filter(action="import").get().actor_name.startswith("api:bob/")
    bad = client.post(f"{ROUTES}import/?dry_run=1", b"ok.test 127.0.0.1\nbad domain here\n", content_type="text/plain")
    body = is_problem(bad, 400, "body")
    assert "2" in body["detail"]  # the line number


def test_route_urls_are_in_the_api_namespace():
    assert reverse("api:route-list") == ROUTES


def test_sender_source_address_and_ehlo_name_are_read_written_and_kept(bob, api_client):
    client = api_client(bob)
    body = {
        "domain": "dest.test",
        "destination": ["127.0.0.1:2525"],
        "sender": "Alerts@App.Example",
        "source_address": "127.0.0.1",
        "ehlo_name": "relay.app.example",
    }
    created = client.post(ROUTES, body, format="json")
    assert created.status_code == 201, created.content
    route = created.json()
    assert (route["sender"], route["source_address"], route["ehlo_name"]) == (
        "alerts@app.example",
        "127.0.0.1",
        "relay.app.example",
    )
    url = f"{ROUTES}{route['id']}/"
    changed = client.patch(url, {"tls": "required"}, format="json", HTTP_IF_MATCH=created["ETag"]).json()
    assert (changed["sender"], changed["source_address"], changed["ehlo_name"]) == (
        "alerts@app.example",
        "127.0.0.1",
        "relay.app.example",
    )
    plain = client.post(ROUTES, {"domain": "dest.test", "destination": ["127.0.0.2"]}, format="json")
    assert plain.status_code == 201 and plain.json()["sender"] == ""  # the same domain for every other sender


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"sender": "not a pattern@@"}, "sender"),
        ({"source_address": "not-an-address"}, "source_address"),
        ({"source_address": "192.0.2.1"}, "source_address"),  # not one of this machine's (never connected to)
        ({"ehlo_name": "bad..name"}, "ehlo_name"),
        ({"fallback_relay": "host:0"}, "fallback_relay"),
    ],
)
def test_sender_and_source_problems_are_at_their_field(bob, api_client, extra, field):
    body = {"domain": "dest.test", "destination": ["127.0.0.1"], **extra}
    is_problem(api_client(bob).post(ROUTES, body, format="json"), 400, field)
    assert not Route.objects.filter(domain="dest.test").exists()
