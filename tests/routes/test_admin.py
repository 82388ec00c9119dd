from __future__ import annotations

import pytest
from django.urls import reverse

from routes import auth_profiles, services
from routes.models import AuditEntry, AuthProfile, Route
from tests.routes.helpers import make_route

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_alice(client, alice):
    client.force_login(alice)
    return client


def _route_post(domain, rows, special="", initial=0, **extra):
    data = {
        "domain": domain,
        "special": special,
        "tls": "opportunistic",
        "hosts-TOTAL_FORMS": str(len(rows)),
        "hosts-INITIAL_FORMS": str(initial),
        "hosts-MIN_NUM_FORMS": "0",
        "hosts-MAX_NUM_FORMS": "100",
    }
    for i, row in enumerate(rows):
        priority, destination, port = row[:3]
        data[f"hosts-{i}-priority"] = priority
        data[f"hosts-{i}-destination"] = destination
        data[f"hosts-{i}-port"] = port
        if len(row) > 3:
            data[f"hosts-{i}-id"] = str(row[3])
    data.update(extra)
    return data


def test_admin_creates_a_route_with_hosts_inline_through_the_services(admin_client_alice, alice):
    data = _route_post("Bücher.Example", [("10", "mx1.example.com", "25"), ("20", "[relay.example.net]", "2525")])
    response = admin_client_alice.post(reverse("admin:routes_route_add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    route = Route.objects.get()
    assert route.domain == "xn--bcher-kva.example"
    assert services.route_state(route)["destination"] == "mx1.example.com/pri=10, [relay.example.net]:2525/pri=20"
    entry = AuditEntry.objects.get()
    assert entry.actor == alice and entry.action == "create"
    assert services.current_version() == 1


def test_admin_shows_the_same_validation_errors_as_the_form(admin_client_alice):
    bad = _route_post("example.com", [("0", "mx.example.com", "0")])
    body = admin_client_alice.post(reverse("admin:routes_route_add"), bad).content.decode()
    assert "Port must be from 1 to 65535" in body
    dup = _route_post("example.com", [("0", "mx.example.com", "25"), ("0", "mx.example.com", "")])
    body = admin_client_alice.post(reverse("admin:routes_route_add"), dup).content.decode()
    assert "is listed more than once" in body
    usedns_all = _route_post("ALL", [], special="usedns")
    body = admin_client_alice.post(reverse("admin:routes_route_add"), usedns_all).content.decode()
    assert "USEDNS cannot be the destination of the default route" in body
    bad_domain = _route_post("exa mple.com", [("0", "mx.example.com", "")])
    assert "contains a space" in admin_client_alice.post(reverse("admin:routes_route_add"), bad_domain).content.decode()
    assert not Route.objects.exists()


def test_admin_flags_all_four_bad_fields_in_one_answer_like_the_page(admin_client_alice):
    bad = _route_post("", [("-1", "bad_host..name!", "70000")])
    body = admin_client_alice.post(reverse("admin:routes_route_add"), bad).content.decode()
    assert "This field is required." in body
    assert "Priority must be from 0 to 65535" in body and "Port must be from 1 to 65535" in body
    assert "&quot;bad_host..name!&quot;: not a valid host name" in body
    dup = _route_post("exa_mple.com", [("0", "127.0.0.1", "2525"), ("0", "127.0.0.1", "")])
    body = admin_client_alice.post(reverse("admin:routes_route_add"), dup).content.decode()
    assert "contains &quot;_&quot;" in body and "The host 127.0.0.1 already has an alternate port (2525)." in body
    assert not Route.objects.exists()


def test_admin_refuses_an_existing_domain_with_the_esa_message(admin_client_alice):
    make_route("example.com")
    body = admin_client_alice.post(
        reverse("admin:routes_route_add"), _route_post("EXAMPLE.com", [("0", "a.example", "")])
    ).content.decode()
    assert "The value example.com is already in the routing table." in body


def test_admin_edit_changes_priority_and_audits_before_and_after(admin_client_alice):
    route = make_route("example.com", "mx1.example.com/pri=10, mx2.example.com/pri=20")
    ids = list(route.hosts.order_by("position").values_list("pk", flat=True))
    page = admin_client_alice.get(reverse("admin:routes_route_change", args=[route.pk])).content.decode()
    assert 'value="mx2.example.com"' in page
    data = _route_post(
        "example.com", [("10", "mx1.example.com", "25", ids[0]), ("5", "mx2.example.com", "25", ids[1])], initial=2
    )
    response = admin_client_alice.post(reverse("admin:routes_route_change", args=[route.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    update = AuditEntry.objects.get(action="update")
    assert update.before["destination"] == "mx1.example.com/pri=10, mx2.example.com/pri=20"
    assert update.after["destination"] == "mx1.example.com/pri=10, mx2.example.com/pri=5"


def test_admin_delete_action_goes_through_the_services(admin_client_alice):
    a = make_route("a.example")
    b = make_route("b.example")
    response = admin_client_alice.post(
        reverse("admin:routes_route_changelist"),
        {"action": "delete_selected", "_selected_action": [a.pk, b.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not Route.objects.exists()
    assert AuditEntry.objects.filter(action="delete").count() == 2


def test_admin_search_and_filters(admin_client_alice):
    make_route("xn--bcher-kva.example", "mx.example.com")
    make_route(".partial.example", "relay.other.test")
    url = reverse("admin:routes_route_changelist")
    assert "bücher.example" in admin_client_alice.get(url, {"q": "bücher"}).content.decode()
    body = admin_client_alice.get(url, {"q": "other.test"}).content.decode()
    assert ".partial.example" in body and "bücher" not in body
    assert "bücher" not in admin_client_alice.get(url, {"kind": "partial"}).content.decode()


def test_auth_profile_password_is_write_only_and_encrypted(admin_client_alice):
    response = admin_client_alice.post(
        reverse("admin:routes_authprofile_add"),
        {"name": "o365", "username": "relay@example.com", "password": "hunter2-pw"},
    )
    assert response.status_code == 302
    profile = AuthProfile.objects.get()
    assert "hunter2" not in profile.password_encrypted
    assert auth_profiles.credentials(profile.pk) == ("relay@example.com", "hunter2-pw")
    page = admin_client_alice.get(reverse("admin:routes_authprofile_change", args=[profile.pk])).content.decode()
    assert "hunter2" not in page
    admin_client_alice.post(
        reverse("admin:routes_authprofile_change", args=[profile.pk]),
        {"name": "o365", "username": "other", "password": ""},
    )
    assert auth_profiles.credentials(profile.pk) == ("other", "hunter2-pw")
    assert all("hunter2" not in str(e.before) + str(e.after) for e in AuditEntry.objects.all())


def test_audit_log_is_read_only(admin_client_alice):
    make_route("example.com")
    entry = AuditEntry.objects.get()
    assert admin_client_alice.get(reverse("admin:routes_auditentry_changelist")).status_code == 200
    assert admin_client_alice.get(reverse("admin:routes_auditentry_change", args=[entry.pk])).status_code == 200
    assert admin_client_alice.get(reverse("admin:routes_auditentry_add")).status_code == 403
    assert (
        admin_client_alice.post(reverse("admin:routes_auditentry_delete", args=[entry.pk]), {"post": "yes"}).status_code
        == 403
    )
