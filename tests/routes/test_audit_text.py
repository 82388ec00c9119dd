"""The audit log as a person reads it: each entry's action by name and its before/after field by field."""

from __future__ import annotations

import pytest
from django.urls import reverse

from delivery.spool import actions
from routes import audit, domains, services
from routes.models import AuditEntry
from tests.routes.helpers import make_route
from tests.support.messages import make_message

pytestmark = pytest.mark.django_db


def test_a_route_update_is_a_field_by_field_difference_with_hosts_host_by_host():
    route = make_route("xn--bcher-kva.example", "a.example.net, b.example.net:2525/pri=5")
    services.route_update(
        route_id=route.pk,
        data=services.RouteData(
            domain="xn--bcher-kva.example",
            destination=domains.parse_hosts("a.example.net/pri=10, c.example.net"),
            tls="required",
        ),
        actor="cli:alice",
    )
    entry = AuditEntry.objects.get(action="update")
    assert audit.action_label(entry) == "Update route"
    assert audit.object_label(entry) == "route bücher.example"
    destination, tls = audit.changes(entry)
    assert (destination.field, destination.before, destination.after) == (
        "Destination hosts",
        "a.example.net:25/pri=0, b.example.net:2525/pri=5",
        "a.example.net:25/pri=10, c.example.net:25/pri=0",
    )
    assert [(h.kind, h.host) for h in destination.hosts] == [
        ("changed", "a.example.net"),
        ("added", "c.example.net"),
        ("removed", "b.example.net"),
    ]
    assert (tls.field, tls.before, tls.after) == ("TLS", "Opportunistic (preferred)", "Required")


def test_a_queue_action_is_named_with_its_count_and_mids(admin_user):
    m1 = make_message(recipients=("a@dest.test", "b@dest.test"))
    actions.bounce_recipients(actions.select_recipients(mids=[m1.pk]), actor=admin_user)
    entry = AuditEntry.objects.get(object_type="queue")
    assert audit.action_label(entry) == "Bounce 2 recipients"
    assert [(c.field, c.before, c.after) for c in audit.changes(entry)] == [
        ("Recipients", "", "2"),
        ("MIDs", "", str(m1.pk)),
    ]


def test_the_audit_page_shows_names_and_differences_not_python_dicts(admin_client):
    route = make_route("example.com", "mx1.example.com")
    services.routes_delete(route_ids=[route.pk], actor="cli:bob")
    body = admin_client.get(reverse("delivery:audit-list")).content.decode()
    assert "<td>Create route</td><td>route example.com</td>" in body
    assert "<td>Delete route</td>" in body
    assert '<th scope="row">Destination hosts</th><td>—</td><td>mx1.example.com:25/pri=0</td>' in body
    assert "{&#x27;" not in body and "{'" not in body and "&#x27;domain&#x27;" not in body


def test_route_changes_lists_route_changes_only(admin_client, admin_user):
    make_route("example.com", "mx1.example.com")
    services.routes_clear(actor="cli:bob")
    m1 = make_message()
    actions.deliver_now(actor=admin_user, mid=m1.pk)
    response = admin_client.get(reverse("routes:audit-list"), follow=True)
    body = response.content.decode()
    assert "Route changes" in body and "Create route" in body and "Clear route table" in body
    assert "Deliver now" not in body
    assert "Deliver now MID" in admin_client.get(reverse("delivery:audit-list")).content.decode()
