"""delivery.resolve: where mail for a domain goes now (route, MX hosts, MX exchanges of route host names)."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from delivery import resolve
from delivery.engine import Host
from delivery.models import HostStatus
from delivery.outbound import hosts
from delivery.spool import plan as planner
from routes import matching, snapshot
from tests.delivery.conftest import queue_message
from tests.routes.helpers import make_route

pytestmark = pytest.mark.django_db


def fresh() -> matching.RouteTable:
    return snapshot.current_table(max_age=0)


def names(hosts: list[Host]) -> list[str]:
    return [f"{h.address}:{h.port}" for h in hosts]


# --- the pure order ----------------------------------------------------------------------------------------


def route_resolution(*hosts: Host, exchanges: dict[str, tuple[str, ...]] | None = None) -> resolve.Resolution:
    return resolve.Resolution("dest.test", resolve.Kind.ROUTE, hosts=hosts, exchanges=exchanges or {})


def test_order_rotates_equal_priorities_and_expands_mx_names_in_place():
    r = route_resolution(
        Host("a.test", 25, 10), Host("relay.test", 25, 10), Host("backup.test", 25, 20),
        exchanges={"relay.test": ("mx1.test", "mx2.test")},
    )  # fmt: skip
    assert names(r.order(0, set())) == ["a.test:25", "mx1.test:25", "mx2.test:25", "backup.test:25"]
    assert names(r.order(1, set())) == ["mx1.test:25", "mx2.test:25", "a.test:25", "backup.test:25"]
    assert r.via() == {("mx1.test", 25): "relay.test", ("mx2.test", 25): "relay.test"}
    assert r.host_keys() == {
        ("a.test", 25),
        ("relay.test", 25),
        ("backup.test", 25),
        ("mx1.test", 25),
        ("mx2.test", 25),
    }


@pytest.mark.parametrize(
    ("resolution", "expected"),
    [
        # one route covering several domains: a group per domain, on the route's one round-robin counter
        (resolve.Resolution("a.test", resolve.Kind.ROUTE, matching.RouteEntry(7, "all", ())), ("7", "a.test")),
        (resolve.Resolution("b.test", resolve.Kind.ROUTE, matching.RouteEntry(7, "all", ())), ("7", "b.test")),
        (resolve.Resolution("mx.test", resolve.Kind.MX), ("mx:mx.test", "mx.test")),
        (
            resolve.Resolution("mx.test", resolve.Kind.USEDNS, matching.RouteEntry(3, "all", (), special="usedns")),
            ("mx:mx.test", "mx.test"),
        ),
        # a redirect: one relay whatever the domain, not counted per domain
        (resolve.redirected("a.test", "relay.test", 2525), ("redirect:relay.test:2525", "")),
        (resolve.redirected("b.test", "relay.test", 2525), ("redirect:relay.test:2525", "")),
    ],
)
def test_mail_is_grouped_per_route_and_recipient_domain_except_a_redirect(resolution, expected):
    assert resolution.group_key == expected
    assert resolution.group_key[0] == resolution.key  # the round-robin key stays the route's


def test_down_hosts_and_exchanges_are_left_out_while_another_is_up():
    r = route_resolution(
        Host("a.test", 25, 10), Host("relay.test", 25, 10), exchanges={"relay.test": ("mx1.test", "mx2.test")}
    )
    assert names(r.order(0, {("a.test", 25), ("mx1.test", 25)})) == ["mx2.test:25"]
    # every host down: all are tried, in the same order
    every = {("a.test", 25), ("relay.test", 25), ("mx1.test", 25), ("mx2.test", 25)}
    assert names(r.order(0, every)) == ["a.test:25", "mx1.test:25", "mx2.test:25"]


def test_the_round_robin_key_is_the_route_id_or_the_domain():
    assert resolve.Resolution("dest.test", resolve.Kind.MX).key == "mx:dest.test"
    assert resolve.Resolution("dest.test", resolve.Kind.USEDNS).key == "mx:dest.test"


# --- against the route table and a DNS server on loopback ----------------------------------------------------


def test_a_route_host_name_with_an_mx_is_expanded_unless_bracketed_or_an_address(dns_server):
    dns_server.add("relay.dest.test", "MX", "20 mx2.dest.test.")
    dns_server.add("relay.dest.test", "MX", "10 mx1.dest.test.")
    dns_server.add("plain.dest.test", "A", "127.0.0.1")
    route = make_route(
        "dest.test", "relay.dest.test:2525/pri=1, plain.dest.test/pri=2, [bracketed.dest.test]/pri=3, 127.0.0.5/pri=4"
    )
    r = resolve.Resolver(fresh()).resolve("dest.test")
    assert r.kind == resolve.Kind.ROUTE and r.entry is not None and r.entry.id == route.pk and r.key == str(route.pk)
    assert r.exchanges == {"relay.dest.test": ("mx1.dest.test", "mx2.dest.test")}
    assert names(r.order(0, set())) == [
        "mx1.dest.test:2525", "mx2.dest.test:2525", "plain.dest.test:25", "bracketed.dest.test:25", "127.0.0.5:25",
    ]  # fmt: skip
    assert dns_server.count("plain.dest.test", "MX") == 1
    assert dns_server.count("bracketed.dest.test") == 0 and dns_server.count("127.0.0.5") == 0


def test_without_dns_nothing_is_looked_up(dns_server):
    dns_server.add("relay.dest.test", "MX", "10 mx1.dest.test.")
    make_route("dest.test", "relay.dest.test")
    make_route("dns.test", "USEDNS")
    resolver = resolve.Resolver(fresh(), dns=False)
    assert names(resolver.resolve("dest.test").order(0, set())) == ["relay.dest.test:25"]
    usedns = resolver.resolve("dns.test")
    assert usedns.kind == resolve.Kind.USEDNS and not usedns.looked_up and usedns.hosts == ()
    assert dns_server.queries == []


def test_usedns_no_route_devnull_and_dns_failures(dns_server, settings):
    settings.ESAROUTES_DELIVERY_MX_PORT = 2525
    dns_server.add("dns.test", "MX", "10 mx.dns.test.")
    dns_server.add("unrouted.test", "MX", "10 mx.unrouted.test.")
    dns_server.servfail("flaky.test")
    make_route("dns.test", "USEDNS")
    make_route("null.test", "/dev/null")
    resolver = resolve.Resolver(fresh())
    usedns = resolver.resolve("dns.test")
    assert usedns.kind == resolve.Kind.USEDNS and names(list(usedns.hosts)) == ["mx.dns.test:2525"]
    unrouted = resolver.resolve("unrouted.test")
    assert unrouted.kind == resolve.Kind.MX and unrouted.entry is None and unrouted.key == "mx:unrouted.test"
    assert resolver.resolve("null.test").kind == resolve.Kind.DEVNULL
    flaky = resolver.resolve("flaky.test")
    assert flaky.dns_error and not flaky.dns_hard and flaky.hosts == ()
    gone = resolver.resolve("nxdomain.test")
    assert gone.dns_error and gone.dns_hard
    resolver.resolve("dns.test")
    assert dns_server.count("dns.test", "MX") == 1  # once per resolver


def test_preview_lists_the_order_then_the_hosts_left_out_with_their_health(dns_server):
    dns_server.add("relay.dest.test", "MX", "10 mx1.dest.test.")
    dns_server.add("relay.dest.test", "MX", "20 mx2.dest.test.")
    make_route("dest.test", "relay.dest.test/pri=10, a.dest.test/pri=20")
    now = timezone.now()
    HostStatus.objects.create(
        host="mx1.dest.test", port=25, down_until=now + timedelta(minutes=5), last_error="refused"
    )
    p = resolve.preview("dest.test", now=now)
    rows = [(c.host.address, c.via, c.skipped) for c in p.candidates]
    assert rows == [
        ("mx2.dest.test", "relay.dest.test", False),
        ("a.dest.test", "", False),
        ("mx1.dest.test", "relay.dest.test", True),
    ]
    assert p.candidates[-1].last_error == "refused" and p.candidates[-1].down(now)


# --- every caller agrees ----------------------------------------------------------------------------------------


def _page_order(body: str, names: list[str]) -> list[str]:
    """The hosts of the route test page's table, in the order of its rows."""
    rows = re.findall(r"<tr><td>(\d+|skipped)</td><td>\d+</td><td>([^<\s]+)", body)
    return [host for n, host in rows if n != "skipped" and host in names]


def _hoststatus_order(domain: str) -> list[str]:
    out = io.StringIO()
    call_command("hoststatus", domain, stdout=out)
    text = out.getvalue()
    rows = [line.split() for line in text[text.index("SMTP routes for this host:") :].splitlines()]
    return [row[2].rsplit(":", 1)[0] for row in rows if row and row[0].isdigit()]


def _domain_page_order(body: str) -> list[str]:
    return re.findall(r'<tr><td>\d+</td><td class="num">\d+</td><td>([^<\s]+):\d+', body)


def test_planner_route_test_page_hoststatus_and_domain_page_agree_mx_expansion_included(dns_server, client, alice):
    """The same route table, host states and round-robin position give the same hosts in the same order."""
    dns_server.add("relay.dest.test", "MX", "10 mx1.dest.test.")
    dns_server.add("relay.dest.test", "MX", "20 mx2.dest.test.")
    route = make_route("dest.test", "relay.dest.test/pri=10, a.dest.test/pri=10, backup.dest.test/pri=20")
    now = timezone.now()
    HostStatus.objects.create(host="mx1.dest.test", port=25, down_until=now + timedelta(minutes=5), last_error="x")
    hosts.next_rr_offset(str(route.pk))  # the route's next connection starts one host further
    mid = queue_message("u@dest.test")
    every = ["a.dest.test", "relay.dest.test", "mx1.dest.test", "mx2.dest.test", "backup.dest.test"]

    shown = [c.host.address for c in resolve.preview("dest.test").candidates if not c.skipped]
    client.force_login(alice)
    body = client.get(reverse("routes:route-test"), {"address": "u@dest.test"}).content.decode()
    page = _page_order(body, every)
    command = _hoststatus_order("dest.test")
    domain_page = _domain_page_order(client.get("/hosts/domain/dest.test/").content.decode())
    planned = [h.address for h in planner.plan([mid], now=timezone.now()).groups[0].hosts]  # takes the turn

    # relay.dest.test and a.dest.test take turns (the counter may hold earlier tests' turns); mx1 is down
    after = hosts.current_rr_offset(route.pk)
    first = ["a.dest.test", "mx2.dest.test"] if after % 2 == 0 else ["mx2.dest.test", "a.dest.test"]
    assert planned == [*first, "backup.dest.test"]
    assert shown == page == command == domain_page == planned
    assert "(MX of relay.dest.test)" in body
