"""Destination controls on the delivery path, against real loopback peers: TLS for MX and routed mail, the IP
address preference, messages per connection and the bounce profile (the limits' own tests: test_slots.py)."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest

from delivery import worker
from delivery.models import BounceProfile, Message
from delivery.spool import plan
from routes import destinations, matching, services
from routes.models import DestinationControl
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def control(destination: str, **limits) -> DestinationControl:
    return services.create_destination(data=services.DestinationData(destination=destination, **limits), actor="test")


def edit_default(**limits) -> None:
    default, _ = DestinationControl.objects.get_or_create(destination=DestinationControl.DEFAULT)  # flushed
    data = dataclasses.replace(services.DestinationData.of(default), **limits)
    services.update_destination(destination_id=default.pk, data=data, actor="test")


def mx_to(peer, dns_server, settings, domain: str = "mx.test") -> None:
    settings.ESAROUTES_DELIVERY_MX_PORT = peer.port
    dns_server.add(domain, "MX", "10 localhost.")  # localhost: ::1 and 127.0.0.1; ipv4-preferred by default


# --- TLS ------------------------------------------------------------------------------------------------


def test_mail_by_mx_gets_the_destination_tls_required(peers, dns_server, settings):
    plain = peers.start()
    mx_to(plain, dns_server, settings)
    make_route("origin.test", "/dev/null")
    control("mx.test", tls="required")
    mid = queue_message("a@mx.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delayed")] and plain.messages == []
    (error,) = grep("Connection Error", log())
    assert "STARTTLS not offered" in error


def test_mail_by_mx_with_tls_preferred_goes_encrypted_when_offered_and_clear_when_not(peers, dns_server, settings):
    tls = peers.start(starttls=True)
    mx_to(tls, dns_server, settings)
    make_route("origin.test", "/dev/null")
    mid = queue_message("a@mx.test")  # the Default entry: preferred
    worker.deliver_batch([mid])
    assert tls.wait_for_messages(1)[0].tls
    edit_default(tls="none")
    mid = queue_message("b@mx.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delivered")] and not tls.wait_for_messages(2)[1].tls


def test_a_routes_tls_combines_with_the_destinations_as_the_stricter(peers):
    plain = peers.start()
    make_route("dest.test", hosts_text((plain, 0)), tls="opportunistic")
    make_route("origin.test", "/dev/null")
    control("dest.test", tls="required")
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delayed")] and plain.messages == []
    tls = peers.start(starttls=True)
    make_route("other.test", hosts_text((tls, 0)), tls="off")
    control("other.test", tls="required")  # the route says off, the destination required: required
    mid = queue_message("a@other.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delivered")] and tls.wait_for_messages(1)[0].tls


def test_one_route_for_several_domains_gives_each_its_own_tls_and_messages_per_connection(peers):
    tls = peers.start(starttls=True)
    make_route("ALL", hosts_text((tls, 0)), tls="off")  # the destinations alone decide
    control("clear.test", tls="none", max_messages_per_connection=1)
    control("secure.test", tls="required", max_messages_per_connection=3)
    mids = [queue_message(f"u{i}@clear.test", f"u{i}@secure.test") for i in range(3)]
    worker.deliver_batch(mids)
    got = tls.wait_for_messages(6)
    assert all(recipients(mid) == [(0, "delivered"), (1, "delivered")] for mid in mids)
    assert sorted((m.rcpt_tos[0].rpartition("@")[2], m.tls) for m in got) == [
        *[("clear.test", False)] * 3,
        *[("secure.test", True)] * 3,
    ]
    per_dcid = Counter(re.search(r"Delivery start DCID (\d+)", line)[1] for line in grep("^Delivery start", log()))
    assert sorted(per_dcid.values()) == [1, 1, 1, 3]  # clear.test one message per connection, secure.test three


# --- IP address preference ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("preference", "family"), [("ipv6-preferred", "::1"), ("ipv4-required", "127.0.0.1")])
def test_ip_preference_picks_the_family_of_a_route_host(peers, dns_server, preference, family):
    four = peers.start()
    six = peers.start_at("::1", four.port)
    dns_server.add("dual.test", "A", "127.0.0.1")
    dns_server.add("dual.test", "AAAA", "::1")
    make_route("dest.test", f"[dual.test]:{four.port}")
    make_route("origin.test", "/dev/null")
    control("dest.test", ip_preference=preference)
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delivered")]
    chosen, other = (six, four) if family == "::1" else (four, six)
    assert len(chosen.wait_for_messages(1)) == 1 and other.connections == 0


def test_ip_required_without_that_family_is_a_logged_connection_error(peers, dns_server, settings):
    four = peers.start()
    mx_to(four, dns_server, settings, "v4.test")
    dns_server.add("v4host.test", "A", "127.0.0.1")
    dns_server.add("v4.test", "MX", "20 v4host.test.")
    make_route("origin.test", "/dev/null")
    control("v4.test", ip_preference="ipv6-required")
    mid = queue_message("a@v4.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delayed")] and four.connections == 0
    errors = grep("Connection Error", log())
    assert any("no IPv6 address for v4host.test (IPv6 required; it has 127.0.0.1)" in e for e in errors), errors


# --- messages per connection --------------------------------------------------------------------------------


def test_a_connection_carries_at_most_the_destinations_messages_per_connection(peers):
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    make_route("origin.test", "/dev/null")
    control("dest.test", max_messages_per_connection=2)
    mids = [queue_message(f"u{i}@dest.test") for i in range(5)]
    worker.deliver_batch(mids)
    assert len(peer.wait_for_messages(5)) == 5
    per_dcid = Counter(re.search(r"Delivery start DCID (\d+)", line)[1] for line in grep("^Delivery start", log()))
    assert sum(per_dcid.values()) == 5 and max(per_dcid.values()) == 2 and peer.connections >= 3


def test_the_default_entry_sets_messages_per_connection_for_everyone_else(peers):
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    make_route("origin.test", "/dev/null")
    edit_default(max_messages_per_connection=1)
    mids = [queue_message(f"u{i}@dest.test") for i in range(3)]
    worker.deliver_batch(mids)
    assert len(peer.wait_for_messages(3)) == 3
    per_dcid = Counter(re.search(r"Delivery start DCID (\d+)", line)[1] for line in grep("^Delivery start", log()))
    assert sorted(per_dcid.values()) == [1, 1, 1]


# --- bounce profile -----------------------------------------------------------------------------------------


def test_bounce_profile_is_the_routes_else_the_destinations_else_the_default():
    default, route_p, dest_p = BounceProfile(name="Default"), BounceProfile(name="r"), BounceProfile(name="d")
    profiles: dict[int | None, BounceProfile] = {None: default, 1: route_p, 2: dest_p}
    routed = matching.RouteEntry(id=1, domain="a.test", hosts=(), bounce_profile_id=1)
    unrouted_profile = matching.RouteEntry(id=2, domain="b.test", hosts=())
    limits = destinations.DestinationLimits("a.test", bounce_profile_id=2)
    assert plan.profile_for(routed, profiles, limits) is route_p
    assert plan.profile_for(unrouted_profile, profiles, limits) is dest_p
    assert plan.profile_for(None, profiles, limits) is dest_p
    assert plan.profile_for(None, profiles, destinations.DestinationLimits("default")) is default
    gone = destinations.DestinationLimits("a.test", bounce_profile_id=99)  # deleted meanwhile: the default
    assert plan.profile_for(None, profiles, gone) is default


def test_the_destinations_bounce_profile_decides_whether_a_dsn_goes(peers):
    refuse = peers.start(rcpt="550 5.1.1 user unknown")
    make_route("dest.test", hosts_text((refuse, 0)))
    make_route("origin.test", "/dev/null")
    quiet = BounceProfile.objects.create(name="quiet", send_bounces=False)
    control("dest.test", bounce_profile_id=quiet.pk)
    mid = queue_message("gone@dest.test")
    assert worker.deliver_batch([mid]).generated == ()
    assert recipients(mid) == [(0, "bounced")] and Message.objects.count() == 1
