from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from delivery.models import DeliveryAttempt
from esaroutes import permissions, roles
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db
Outcome = DeliveryAttempt.Outcome


def test_metrics_from_loopback_without_login(client):
    m = make_message(recipients=("a@dest.test", "b@dest.test"))
    attempt(m, host="mx1.dest.test", rids=(0,))
    attempt(m, host="mx2.dest.test", code=421, reply="later", outcome=Outcome.DELAYED, rids=(1,))
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'esaroutes_recipients_delivered_total{domain="dest.test"} 1.0' in text
    assert 'esaroutes_recipients_received_total{domain="dest.test"} 2.0' in text
    assert 'esaroutes_recipients_delayed{domain="dest.test"} 1.0' in text
    assert 'esaroutes_host_failures_total{host="mx2.dest.test",port="25"} 1.0' in text
    assert "esaroutes_queue_recipients 1.0" in text
    assert 'esaroutes_delivery_latency_seconds_bucket{le="+Inf"} 1.0' in text
    assert "esaroutes_delivery_latency_seconds_count 1.0" in text
    assert "esaroutes_queue_oldest_age_seconds" in text


def test_metrics_refuse_other_networks_without_the_token(client, settings):
    settings.ESAROUTES_METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.9").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.9", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    ok = client.get("/metrics", REMOTE_ADDR="192.0.2.9", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert ok.status_code == 200


def test_migration_created_the_four_groups():
    assert set(Group.objects.filter(name__in=roles.ROLES).values_list("name", flat=True)) == set(roles.ROLES)


@pytest.mark.parametrize(
    ("capability", "allowed"),
    [
        ("dashboard.view", {"alice", "bob", "carol"}),
        ("queue.change", {"alice", "bob"}),
        ("hosts.change", {"alice", "bob"}),
        ("routes.change", {"alice", "bob"}),
        ("access.change", {"alice", "bob"}),
        ("routes.view", {"alice", "bob", "carol"}),
        ("tracking.view", {"alice", "bob", "carol", "dave"}),
        ("maillog.view", {"alice", "bob", "carol", "dave"}),
        ("message.raw", {"alice"}),
        ("users.change", {"alice"}),
    ],
)
def test_capabilities_per_role(alice, bob, carol, dave, capability, allowed):
    users = {"alice": alice, "bob": bob, "carol": carol, "dave": dave}
    assert {n for n, u in users.items() if permissions.can(u, capability)} == allowed


def test_role_of(alice, bob, carol, dave):
    assert [roles.role_of(u) for u in (alice, bob, carol, dave)] == [
        "Administrator",
        "Operator",
        "Read-only operator",
        "Help desk",
    ]


def test_unknown_capability_is_a_programming_error(alice):
    with pytest.raises(ValueError):
        permissions.can(alice, "queue.explode")


def test_latency_histogram_buckets(client):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    m = make_message(at=now - timedelta(minutes=10))
    attempt(m, host="mx1.dest.test", at=now)
    text = client.get("/metrics").content.decode()
    assert 'esaroutes_delivery_latency_seconds_bucket{le="300.0"} 0.0' in text
    assert 'esaroutes_delivery_latency_seconds_bucket{le="900.0"} 1.0' in text
    total = next(line for line in text.splitlines() if line.startswith("esaroutes_delivery_latency_seconds_sum"))
    assert abs(float(total.split()[-1]) - 600) < 1
