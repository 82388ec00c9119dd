"""Access decisions (pure) and the access pages (htmx, audited)."""

from __future__ import annotations

import ipaddress

import pytest

from delivery import access
from routes import matching
from routes.models import AuditEntry, RecipientAccessRule, RelayNetwork, SmtpUser


def snap(rat=None, routes=()):
    entries = [matching.RouteEntry(id=i, domain=d, hosts=()) for i, d in enumerate(routes)]
    return access.AccessSnapshot(rat=rat or {}, routes=matching.RouteTable(entries))


@pytest.mark.parametrize(
    ("rat", "routes", "domain", "accepted"),
    [
        ({}, (), "example.com", False),
        ({}, ("ALL",), "example.com", False),
        ({}, ("example.com",), "example.com", True),
        ({}, (".example.com",), "a.example.com", True),
        ({}, (".example.com",), "example.com", False),
        ({"example.com": False}, ("example.com",), "example.com", False),
        ({".example.com": True}, (), "x.y.example.com", True),
        ({".example.com": True, "bad.example.com": False}, (), "bad.example.com", False),
        ({"ALL": True}, (), "anything.test", True),
        ({"ALL": False}, ("ALL",), "anything.test", False),
    ],
)
def test_rat_decision_table(rat, routes, domain, accepted):
    assert access.rat_decision(snap(rat, routes), domain).accepted is accepted


@pytest.mark.parametrize(
    ("address", "raw", "accepted"),
    [
        ("a@dest.test", "<a@dest.test>", True),
        ("a%b@dest.test", "<a%b@dest.test>", False),
        ("b!a@dest.test", "<b!a@dest.test>", False),
        ("a@dest.test", "<@x.test:a@dest.test>", False),
        ("a@[192.0.2.1]", "<a@[192.0.2.1]>", False),
        ("A@DEST.TEST.", "<A@DEST.TEST.>", True),
    ],
)
def test_check_recipient_for_non_relay_clients(address, raw, accepted):
    decision = access.check_recipient(snap({"dest.test": True}), address, raw=raw, relay=False)
    assert decision.accepted is accepted
    assert access.check_recipient(snap(), address, raw=raw, relay=True).accepted


def test_relay_match_ipv4_ipv6_and_mapped():
    s = access.AccessSnapshot(
        relay_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    )
    assert str(access.relay_match(s, "10.1.2.3")) == "10.0.0.0/8"
    assert str(access.relay_match(s, "::ffff:10.1.2.3")) == "10.0.0.0/8"
    assert str(access.relay_match(s, "2001:db8::5")) == "2001:db8::/32"
    assert access.relay_match(s, "192.0.2.1") is None
    assert access.relay_match(s, "not an ip") is None


@pytest.mark.django_db
def test_access_page_add_and_delete_are_audited(client, alice):
    client.force_login(alice)
    page = client.get("/routes/access/")
    assert page.status_code == 200 and b"Recipient Access Table" in page.content
    htmx = {"HTTP_HX_REQUEST": "true"}
    resp = client.post("/routes/access/rat/", {"domain": "Bücher.Example", "action": "accept"}, **htmx)
    assert resp.status_code == 200 and b'id="access-rat"' in resp.content
    rule = RecipientAccessRule.objects.get()
    assert rule.domain == "xn--bcher-kva.example"
    resp = client.post("/routes/access/rat/", {"domain": "bad_domain!", "action": "accept"}, **htmx)
    assert resp.status_code == 422
    resp = client.post("/routes/access/rat/", {"domain": "ALL", "action": "accept"}, **htmx)
    assert resp.status_code == 422 and b"open relay" in resp.content
    assert client.post("/routes/access/relay/", {"network": "10.0.0.1/8"}, **htmx).status_code == 200
    assert RelayNetwork.objects.filter(network="10.0.0.0/8").exists()
    assert client.post("/routes/access/relay/", {"network": "10.0.0.300"}, **htmx).status_code == 422
    resp = client.post(
        "/routes/access/users/", {"username": "app", "password": "long-enough-pw", "is_active": "on"}, **htmx
    )
    assert resp.status_code == 200
    user = SmtpUser.objects.get()
    assert user.password.startswith("pbkdf2_") or "$" in user.password
    assert client.post("/routes/access/users/", {"username": "app2", "password": "short"}, **htmx).status_code == 422
    client.post(f"/routes/access/rat/{rule.pk}/delete/", **htmx)
    assert not RecipientAccessRule.objects.exists()
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "object_type"))
    assert actions == [
        ("create", "RecipientAccessRule"),
        ("create", "RelayNetwork"),
        ("create", "SmtpUser"),
        ("delete", "RecipientAccessRule"),
    ]
    assert all(e.actor_name == "alice" for e in AuditEntry.objects.all())
    assert "long-enough-pw" not in str(list(AuditEntry.objects.values_list("after", flat=True)))
