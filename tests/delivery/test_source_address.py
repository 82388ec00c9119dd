"""A route's own source address and EHLO name, against real peers: what each peer sees as the client's address
and EHLO name, what the mail log says, and a source address that is gone at delivery."""

from __future__ import annotations

import pytest

from delivery import worker
from delivery.models import HostStatus
from routes import snapshot
from routes.models import Route
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_each_route_connects_from_its_own_address_with_its_own_ehlo_name(peers):
    first, second, plain = peers.start(), peers.start(), peers.start()
    make_route("one.test", hosts_text((first, 0)), source_address="127.0.0.2", ehlo_name="gw2.esaroutes.test")
    make_route("two.test", hosts_text((second, 0)), source_address="127.0.0.3", ehlo_name="gw3.esaroutes.test")
    make_route("plain.test", hosts_text((plain, 0)))
    mid = queue_message("a@one.test", "b@two.test", "c@plain.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delivered"), (1, "delivered"), (2, "delivered")]
    (one,) = first.wait_for_messages(1)
    (two,) = second.wait_for_messages(1)
    (other,) = plain.wait_for_messages(1)
    assert (one.client, one.helo) == ("127.0.0.2", "gw2.esaroutes.test")
    assert (two.client, two.helo) == ("127.0.0.3", "gw3.esaroutes.test")
    assert (other.client, other.helo) == ("127.0.0.1", "relay.esaroutes.test")  # the global settings
    lines = log(mid)
    assert grep(rf"^New SMTP DCID \d+ interface 127\.0\.0\.2 address {first.host} port {first.port}$", lines)
    assert grep(rf"^New SMTP DCID \d+ interface 127\.0\.0\.3 address {second.host} port {second.port}$", lines)
    assert grep(rf"^New SMTP DCID \d+ interface Data 1 address {plain.host} port {plain.port}$", lines)


def test_a_source_address_gone_at_delivery_is_a_clear_connection_error(peers):
    peer = peers.start()
    route = make_route("gone.test", hosts_text((peer, 0)), source_address="127.0.0.2")
    Route.objects.filter(pk=route.pk).update(source_address="192.0.2.1")  # the address left this machine
    snapshot.invalidate()
    mid = queue_message("a@gone.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delayed")]
    assert peer.connections == 0
    (error,) = grep("^Connection Error:", log(mid))
    assert f"IP: {peer.host} port: {peer.port} details: source address 192.0.2.1 is not an address of this machine" in (
        error
    )
    assert error.endswith("interface: 192.0.2.1 reason: network error")
    status = HostStatus.objects.filter(host=peer.host, port=peer.port).first()
    assert status is None or status.down_until is None  # our address, not the host: it is not marked down
