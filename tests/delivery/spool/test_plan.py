"""delivery.spool.plan: claimed messages become groups per route and recipient domain (no network: the route's
host is an IP address, nothing is looked up or connected to)."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from delivery import outcome
from delivery.models import Recipient
from delivery.spool import plan
from routes import services
from tests.delivery.conftest import queue_message
from tests.routes.helpers import make_route

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_table(settings: Any) -> None:
    settings.ESAROUTES_ROUTE_REFRESH = 0.0  # the planner reads the routes and controls made by the test


def control(destination: str, **limits: Any) -> None:
    services.create_destination(data=services.DestinationData(destination=destination, **limits), actor="test")


def by_domain(groups: list[outcome.Group]) -> dict[str, list[outcome.Group]]:
    out: dict[str, list[outcome.Group]] = {}
    for group in groups:
        out.setdefault(group.domain, []).append(group)
    return out


def test_an_all_route_gets_one_group_per_recipient_domain_each_with_its_own_control():
    make_route("ALL", "192.0.2.10:2525", tls="off")  # the destinations alone decide
    control("a.test", max_connections=1, max_messages_per_connection=2, tls="none", ip_preference="ipv6-preferred")
    control("b.test", max_connections=3, max_messages_per_connection=5, tls="required")
    mids = [queue_message(f"u{i}@a.test", f"v{i}@b.test", f"w{i}@c.test") for i in range(3)]
    groups = by_domain(plan.plan(mids, now=timezone.now()).groups)
    assert sorted(groups) == ["a.test", "b.test", "c.test"]
    a, b, c = groups["a.test"], groups["b.test"], groups["c.test"]
    # one route (one round-robin counter), three destination controls
    assert {g.route_key for gs in groups.values() for g in gs} == {a[0].route_key}
    assert [g.limits.destination for g in a] == ["a.test", "a.test"]  # 3 messages, 2 per connection
    assert [len(g.jobs) for g in a] == [2, 1]
    assert {(g.template.domain, g.template.max_messages, g.template.tls, g.template.ip_preference) for g in a} == {
        ("a.test", 2, outcome.TlsPolicy.OFF, "ipv6-preferred")
    }
    assert [(g.limits.destination, len(g.jobs)) for g in b] == [("b.test", 3)]
    assert (b[0].template.domain, b[0].template.max_messages, b[0].template.tls) == (
        "b.test",
        5,
        outcome.TlsPolicy.REQUIRED,
    )
    assert [(g.limits.is_default, g.template.domain) for g in c] == [(True, "c.test")]  # its own copy of Default
    # each job carries its own domain's recipients only
    for domain, gs in groups.items():
        assert {r.domain for g in gs for job in g.jobs for r in job.recipients} == {domain}
    # the connections of different domains are never pooled together: their templates differ
    assert len({g.template for gs in groups.values() for g in gs}) == 3


def test_a_partial_route_groups_per_subdomain():
    make_route(".corp.test", "192.0.2.10")
    control("east.corp.test", max_connections=2)
    mid = queue_message("a@east.corp.test", "b@west.corp.test", "c@east.corp.test")
    groups = by_domain(plan.plan([mid], now=timezone.now()).groups)
    assert sorted(groups) == ["east.corp.test", "west.corp.test"]
    (east,), (west,) = groups["east.corp.test"], groups["west.corp.test"]
    assert (east.limits.destination, east.limits.max_connections) == ("east.corp.test", 2)
    assert west.limits.is_default
    assert [r.address for r in east.jobs[0].recipients] == ["a@east.corp.test", "c@east.corp.test"]


def test_redirected_mail_is_one_group_whatever_the_domain_and_not_counted():
    make_route("ALL", "192.0.2.10")
    mid = queue_message("a@a.test", "b@b.test")
    Recipient.objects.filter(message_id=mid).update(redirect_host="192.0.2.99", redirect_port=2526)
    (group,) = plan.plan([mid], now=timezone.now()).groups
    assert [h.key for h in group.hosts] == [("192.0.2.99", 2526)]
    assert group.limits is None and group.template.domain == ""
    assert {r.domain for r in group.jobs[0].recipients} == {"a.test", "b.test"}


@pytest.mark.parametrize("first", ["a.test", "b.test"])
def test_redirected_mail_takes_the_default_entrys_values_whichever_domain_comes_first(first):
    make_route("ALL", "192.0.2.10")
    services.update_destination(
        destination_id=services.default_destination().pk,
        data=services.DestinationData(
            destination="default", max_messages_per_connection=3, ip_preference="ipv4-required"
        ),
        actor="test",
    )
    control("a.test", max_messages_per_connection=1, ip_preference="ipv6-preferred")
    control("b.test", max_messages_per_connection=7, ip_preference="ipv6-required")
    second = "b.test" if first == "a.test" else "a.test"
    mids = [queue_message(f"u{i}@{first}", f"v{i}@{second}") for i in range(4)]
    Recipient.objects.filter(message_id__in=mids).update(redirect_host="192.0.2.99", redirect_port=2526)
    groups = plan.plan(mids, now=timezone.now()).groups
    assert [len(g.jobs) for g in groups] == [3, 1]  # the Default's 3 per connection, not a.test's 1 nor b.test's 7
    assert {(g.template.max_messages, g.template.ip_preference) for g in groups} == {(3, "ipv4-required")}
    assert all(g.limits is None for g in groups)  # and still not counted
