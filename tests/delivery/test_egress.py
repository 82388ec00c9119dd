"""ESAROUTES_DELIVERY_ALLOWED_NETWORKS on the delivery path: a refused address is logged, never connected to."""

from __future__ import annotations

import pytest
from django.utils import timezone

from delivery import worker
from delivery.outbound import hosts
from esaroutes import egress
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_a_host_outside_the_allowed_networks_is_a_connection_error_and_never_connected(peers, settings):
    peers.start()  # 127.0.0.1
    outside = peers.start()  # 127.0.0.2, listening: it counts who connects
    assert outside.host == "127.0.0.2"
    settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS = egress.parse("127.0.0.1/32")
    make_route("dest.test", hosts_text((outside, 0)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delayed")]
    assert outside.connections == 0
    (error,) = grep("^Connection Error:", log())
    assert error == (
        f"Connection Error: DCID {error.split()[3]} domain: dest.test IP: 127.0.0.2 port: {outside.port} "
        "details: 127.0.0.2 is outside ESAROUTES_DELIVERY_ALLOWED_NETWORKS: not connected "
        "interface: Data 1 reason: network error"
    )
    assert not grep("^New SMTP DCID", log())
    assert hosts.down_hosts({("127.0.0.2", outside.port)}, timezone.now()) == set()  # our policy, not the host's health


def test_an_allowed_host_after_a_refused_one_delivers(peers, settings):
    allowed = peers.start()  # 127.0.0.1
    outside = peers.start()  # 127.0.0.2
    settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS = egress.parse("127.0.0.1/32")
    make_route("dest.test", hosts_text((outside, 0), (allowed, 10)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delivered")]
    assert outside.connections == 0 and len(allowed.wait_for_messages(1)) == 1
