"""The fallback relay (a route's, or ESAROUTES_DELIVERY_FALLBACK_RELAY for mail delivered by MX), end to end
against real SMTP peers on loopback: tried after every host of the route failed a recipient, never after a 5xx."""

from __future__ import annotations

import pytest
from django.utils import timezone

from delivery import worker
from delivery.models import Recipient
from routes import domains, services
from routes.models import Route
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def relay_text(peer) -> str:
    return f"{peer.host}:{peer.port}"


def test_route_hosts_refusing_and_4xx_send_the_recipient_to_the_fallback(peers):
    refused = peers.refused()
    busy = peers.start(rcpt="452 4.3.1 Insufficient system resources")
    fallback = peers.start()
    make_route("dest.test", hosts_text((refused, 0), (busy, 10)), fallback_relay=relay_text(fallback))
    mid = queue_message("a@dest.test", "b@dest.test")
    worker.deliver_batch([mid])
    (got,) = fallback.wait_for_messages(1)
    assert got.rcpt_tos == ("a@dest.test", "b@dest.test")
    assert recipients(mid) == [(0, "delivered"), (1, "delivered")]
    assert busy.messages == []
    lines = log(mid)
    (moved,) = grep("to fallback relay", lines)
    relay = f"{fallback.host}:{fallback.port}"
    assert moved == f"MID {mid} RID [0, 1] to fallback relay {relay}: 2 hosts for dest.test failed"
    # the failures first, then the usual new connection to the fallback host, then the delivery on it
    at = lines.index(moved)
    assert grep(rf"Connection Error: DCID \d+ domain: dest.test IP: {refused.host}", lines[:at])
    assert grep(r"^Delayed: .*452", lines[:at])
    (new,) = grep(rf"^New SMTP DCID \d+ .* address {fallback.host} port {fallback.port}", lines[at:])
    dcid = new.split()[3]
    assert grep(rf"^Message done DCID {dcid} MID {mid} to RID \[0, 1\]", lines[at:])


def test_fallback_down_too_delays_and_the_retry_tries_again(peers):
    refused = peers.refused()
    fallback_down = peers.refused()
    make_route("dest.test", hosts_text((refused, 0)), fallback_relay=relay_text(fallback_down))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    r = Recipient.objects.get(message_id=mid)
    assert (r.state, r.attempts) == ("delayed", 1)
    lines = log(mid)
    assert grep(rf"Connection Error: DCID \d+ domain: dest.test IP: {fallback_down.host} ", lines)
    (delayed,) = grep("^Delayed:", lines)
    assert f"MID {mid} " in delayed  # one Delayed line, after the fallback failed too
    assert lines.index(grep("to fallback relay", lines)[0]) < lines.index(delayed)
    # the operator points the route at a fallback that is up: the retry gets there
    fallback = peers.start()
    route = services.route_update(
        route_id=Route.objects.get(domain="dest.test").pk,
        data=services.RouteData(
            domain="dest.test",
            destination=domains.parse_hosts(hosts_text((refused, 0))),
            fallback_relay=relay_text(fallback),
        ),
        actor="test",
    )
    assert route.fallback_relay == relay_text(fallback)
    Recipient.objects.filter(message_id=mid).update(next_attempt_at=timezone.now())
    worker.deliver_batch([mid])
    assert fallback.wait_for_messages(1)[0].rcpt_tos == ("a@dest.test",)
    r.refresh_from_db()
    assert (r.state, r.attempts) == ("delivered", 2)


def test_a_5xx_from_a_route_host_bounces_and_never_reaches_the_fallback(peers):
    refuse = peers.start(rcpt={"gone@dest.test": "550 5.1.1 user unknown"})
    fallback = peers.start()
    make_route("dest.test", hosts_text((refuse, 0)), fallback_relay=relay_text(fallback))
    make_route("origin.test", "/dev/null")
    mid = queue_message("gone@dest.test", "ok@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "bounced"), (1, "delivered")]
    assert fallback.messages == [] and fallback.connections == 0
    assert grep("fallback relay", log(mid)) == []


def test_mail_delivered_by_mx_uses_the_fallback_in_settings(peers, dns_server, settings):
    mx = peers.refused()  # 127.0.0.1: what "localhost" resolves to (after ::1, which refuses too)
    fallback = peers.start()
    settings.ESAROUTES_DELIVERY_MX_PORT = mx.port
    settings.ESAROUTES_DELIVERY_FALLBACK_RELAY = (fallback.host, fallback.port)
    dns_server.add("mx.test", "MX", "10 localhost.")
    make_route("mx.test", "USEDNS")
    other = peers.start(rcpt="451 4.3.0 try later")
    make_route("routed.test", hosts_text((other, 0)))  # a route with hosts and no fallback: the setting is not its
    mid = queue_message("a@mx.test", "b@routed.test")
    worker.deliver_batch([mid])
    assert fallback.wait_for_messages(1)[0].rcpt_tos == ("a@mx.test",)
    assert recipients(mid) == [(0, "delivered"), (1, "delayed")]
    assert len(grep("to fallback relay", log(mid))) == 1
