"""A route's fallback relay: validated like a destination host wherever a route is edited, audited, shown on the
route test page. Delivery through it is tested in tests/delivery/test_fallback.py."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from routes import domains, services
from routes.models import AuditEntry, Route
from tests.routes.helpers import form_data, make_route
from tests.routes.test_admin import _route_post

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("", ""),
        ("  ", ""),
        ("Relay.Example.NET", "relay.example.net"),
        ("relay.example.net:2525", "relay.example.net:2525"),
        ("[relay.example.net]:25", "relay.example.net"),  # never looked up by MX anyway: no brackets kept
        ("10.0.0.9:587", "10.0.0.9:587"),
        ("[2001:db8::1]:2525", "[2001:db8::1]:2525"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_a_fallback_relay_is_stored_normalised(text, stored):
    assert domains.fallback_relay_text(text) == stored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.example, b.example", "give one fallback relay"),
        ("USEDNS", "USEDNS is not a host"),
        ("relay.example.net:0", "port must be from 1 to 65535"),
        ("relay.example.net/pri=5", "a fallback relay has no priority"),
        ("bad_host.example", 'contains "_"'),
        ("2001:db8::zz", "is not a valid IPv6 address"),
    ],
)
def test_a_bad_fallback_relay_says_why(text, message):
    with pytest.raises(ValueError, match=message):
        domains.parse_fallback_relay(text)


def test_the_route_form_saves_audits_and_errs_at_the_field(client, alice):
    client.force_login(alice)
    bad = form_data("example.com", [("0", "mx.example.com", "25")], fallback_relay="relay.example.net:99999")
    response = client.post(reverse("routes:route-add"), bad, **HTMX)
    assert response.status_code == 422
    body = response.content.decode()
    assert "relay.example.net:99999&quot;: port must be from 1 to 65535" in body
    assert 'value="relay.example.net:99999"' in body
    assert not Route.objects.exists()
    good = form_data("example.com", [("0", "mx.example.com", "25")], fallback_relay="Relay.Example.net:2525")
    assert client.post(reverse("routes:route-add"), good, **HTMX).status_code == 200
    route = Route.objects.get()
    assert route.fallback_relay == "relay.example.net:2525"
    assert AuditEntry.objects.get().after["fallback_relay"] == "relay.example.net:2525"
    edit = client.get(reverse("routes:route-edit", args=[route.pk])).content.decode()
    assert 'value="relay.example.net:2525"' in edit
    devnull = form_data("void.example", [("0", "/dev/null", "")], fallback_relay="relay.example.net")
    response = client.post(reverse("routes:route-add"), devnull, **HTMX)
    assert response.status_code == 422
    assert "A /dev/null route delivers nothing, so it has no fallback relay" in response.content.decode()


def test_the_admin_validates_and_saves_it_through_the_services(client, alice):
    client.force_login(alice)
    bad = _route_post("example.com", [("0", "mx.example.com", "25")], fallback_relay="a.example, b.example")
    body = client.post(reverse("admin:routes_route_add"), bad).content.decode()
    assert "Give one fallback relay" in body and not Route.objects.exists()
    good = _route_post("example.com", [("0", "mx.example.com", "25")], fallback_relay="[::1]:2525")
    assert client.post(reverse("admin:routes_route_add"), good).status_code == 302
    assert Route.objects.get().fallback_relay == "[::1]:2525"
    assert AuditEntry.objects.get().after["fallback_relay"] == "[::1]:2525"


def test_smtproutes_new_and_edit_take_a_fallback_relay():
    out = StringIO()
    call_command(
        "smtproutes", "new", "example.com", "mx.example.com", "--fallback-relay", "relay.test:2525", stdout=out
    )
    assert "(fallback relay relay.test:2525)" in out.getvalue()
    call_command("smtproutes", "edit", "example.com", "mx2.example.com", stdout=StringIO())
    assert Route.objects.get().fallback_relay == "relay.test:2525"  # not given: unchanged
    call_command("smtproutes", "edit", "example.com", "mx2.example.com", "--fallback-relay", "", stdout=StringIO())
    assert Route.objects.get().fallback_relay == ""
    with pytest.raises(CommandError, match=r"fallback relay: .*port must be from 1 to 65535"):
        call_command("smtproutes", "edit", "example.com", "mx.example.com", "--fallback-relay", "r.test:0")
    updates = AuditEntry.objects.filter(action="update").order_by("id")
    assert [(e.before["fallback_relay"], e.after["fallback_relay"]) for e in updates] == [
        ("relay.test:2525", "relay.test:2525"),
        ("relay.test:2525", ""),
    ]


def test_the_route_test_page_shows_the_fallback_relay(client, alice, settings):
    client.force_login(alice)
    make_route("example.com", "mx.example.com", fallback_relay="relay.example.net:2525")
    make_route("mx.example", "USEDNS")
    page = client.get(reverse("routes:route-test"), {"address": "u@example.com"}, **HTMX).content.decode()
    assert "Fallback relay: <strong>relay.example.net:2525</strong>" in page
    settings.ESAROUTES_DELIVERY_FALLBACK_RELAY = ("smarthost.example.net", 25)
    usedns = client.get(reverse("routes:route-test"), {"address": "u@mx.example"}, **HTMX).content.decode()
    assert "Fallback relay: <strong>smarthost.example.net:25</strong>" in usedns
    none = client.get(reverse("routes:route-test"), {"address": "u@other.test"}, **HTMX).content.decode()
    assert "Fallback relay: <strong>smarthost.example.net:25</strong>" in none
    services.route_update(
        route_id=Route.objects.get(domain="example.com").pk,
        data=services.RouteData(domain="example.com", destination=domains.parse_hosts("mx.example.com")),
        actor="test",
    )
    routed = client.get(reverse("routes:route-test"), {"address": "u@example.com"}, **HTMX).content.decode()
    assert "Fallback relay" not in routed  # the setting is for mail delivered by MX only
