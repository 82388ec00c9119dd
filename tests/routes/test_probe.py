"""routes.probe: the Test route page's live SMTP probe, against loopback peers only."""

from __future__ import annotations

import asyncio
import socket
import threading

from esaroutes import egress
from routes import probe
from tests.routes.helpers import closed_port


def test_probe_reports_greeting_ehlo_and_quit_or_the_failure(peers):
    peer = peers.start()
    dead = closed_port()
    ok, refused = asyncio.run(
        probe.probe_all([(peer.host, peer.port), ("127.0.0.1", dead)], helo="relay.test", seconds=3)
    )
    assert ok.ok and ok.lines[0].startswith("220") and ok.lines[1].startswith("250") and ok.lines[2].startswith("221")
    assert not refused.ok and refused.lines[0].startswith("no answer")


def test_probe_times_out_on_a_silent_peer():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    try:
        result = asyncio.run(probe.probe("127.0.0.1", port, helo="relay.test", seconds=0.5))
    finally:
        for conn in accepted:
            conn.close()
        server.close()
    assert not result.ok and "no answer" in result.lines[0] and result.seconds < 3


def test_probe_refuses_an_address_outside_the_allowed_networks_without_connecting(peers):
    peers.start()  # 127.0.0.1
    outside = peers.start()  # 127.0.0.2
    (result,) = asyncio.run(
        probe.probe_all(
            [(outside.host, outside.port)], helo="relay.test", seconds=3, networks=egress.parse("127.0.0.1/32")
        )
    )
    assert not result.ok
    assert result.lines == ("refused: 127.0.0.2 is outside ESAROUTES_DELIVERY_ALLOWED_NETWORKS: not connected",)
    assert outside.connections == 0
