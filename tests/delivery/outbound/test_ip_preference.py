"""A destination's IP address preference against real peers: one host name, `dual.test`, that the test DNS
server resolves to ::1 and 127.0.0.1, with a peer listening on each address (same port)."""

from __future__ import annotations

import pytest

from delivery.engine import Host, Stage
from delivery.outbound import dns
from delivery.outbound.smtp_client import Envelope, Gate, HostSession, TransactionResult
from delivery.outcome import Destination, Timeouts, TlsPolicy
from esaroutes import eventloop
from tests.support.dnsserver import DnsServer
from tests.support.peers import Peer, PeerFactory

FAST = Timeouts(connect=2.0, command=2.0, data=2.0, transaction=5.0)
BODY = b"From: s@example.test\r\nTo: a@dual.test\r\nSubject: hi\r\n\r\nHi.\r\n"


def dual(peers: PeerFactory, dns_server: DnsServer, *, v4: bool = True, v6: bool = True) -> tuple[Peer, Peer | None]:
    """The IPv4 peer (or a refusing port, `v4=False`) and the IPv6 peer on the same port (None: nothing there)."""
    four = peers.start() if v4 else peers.refused()
    six = peers.start_at("::1", four.port) if v6 else None
    dns_server.add("dual.test", "A", "127.0.0.1")
    dns_server.add("dual.test", "AAAA", "::1")
    return four, six


def send(port: int, preference: str, gate: Gate | None = None) -> tuple[HostSession, list[TransactionResult]]:
    destination = Destination(
        Host("dual.test", port), helo="relay.test", tls=TlsPolicy.OFF, timeouts=FAST, ip_preference=preference
    )

    async def go() -> tuple[HostSession, list[TransactionResult]]:
        async with HostSession(destination, lookup=dns.host_addresses, gate=gate) as session:
            if session.failure is not None:
                return session, []
            return session, [await session.send(Envelope(1, "s@example.test", ((0, "a@dual.test"),), BODY))]

    return eventloop.run(go())


@pytest.mark.parametrize(
    ("preference", "family"),
    [("ipv4-preferred", "v4"), ("ipv4-required", "v4"), ("ipv6-preferred", "v6"), ("ipv6-required", "v6")],
)
def test_the_preferred_family_gets_the_mail(peers: PeerFactory, dns_server: DnsServer, preference, family) -> None:
    four, six = dual(peers, dns_server)
    assert six is not None
    session, [result] = send(four.port, preference)
    assert result.delivered
    chosen, other = (four, six) if family == "v4" else (six, four)
    assert session.connection is not None and session.connection.peer_ip == chosen.host
    assert len(chosen.wait_for_messages(1)) == 1
    assert other.connections == 0


def test_preferred_falls_back_to_the_other_family_when_the_preferred_fails(
    peers: PeerFactory, dns_server: DnsServer
) -> None:
    four, _ = dual(peers, dns_server, v6=False)  # nothing listens on [::1]:port
    session, [result] = send(four.port, "ipv6-preferred")
    assert result.delivered and session.connection is not None and session.connection.peer_ip == "127.0.0.1"


def refusing(*full: str) -> tuple[Gate, list[str]]:
    """A gate (the runner's per-IP connection slots) that refuses `full` and records every address asked."""
    asked: list[str] = []

    async def gate(address: str) -> bool:
        asked.append(address)
        return address not in full

    return gate, asked


def test_an_address_the_gate_refuses_is_skipped_for_the_next(peers: PeerFactory, dns_server: DnsServer) -> None:
    four, six = dual(peers, dns_server)
    assert six is not None
    gate, asked = refusing("127.0.0.1")
    session, [result] = send(four.port, "ipv4-preferred", gate)
    assert result.delivered and session.connection is not None and session.connection.peer_ip == "::1"
    assert asked == ["127.0.0.1", "::1"]  # asked with the resolved addresses, in the preference's order
    assert four.connections == 0


def test_every_address_refused_by_the_gate_is_held_back_not_failed(peers: PeerFactory, dns_server: DnsServer) -> None:
    four, six = dual(peers, dns_server)
    assert six is not None
    gate, asked = refusing("127.0.0.1", "::1")
    session, results = send(four.port, "ipv6-preferred", gate)
    assert results == [] and session.failure is not None
    assert session.failure.slots_full and not session.failure.marks_host_down
    assert asked == ["::1", "127.0.0.1"]
    assert four.connections == 0 and six.connections == 0


def test_required_never_touches_the_other_family(peers: PeerFactory, dns_server: DnsServer) -> None:
    four, _ = dual(peers, dns_server, v6=False)
    session, results = send(four.port, "ipv6-required")
    assert results == [] and session.failure is not None
    assert (session.failure.stage, session.failure.code, session.failure.reason) == (
        Stage.CONNECT,
        None,
        "network error",
    )
    assert four.connections == 0  # IPv4 listens and is never tried


def test_required_with_no_address_of_the_family_is_a_clear_failure(peers: PeerFactory, dns_server: DnsServer) -> None:
    four = peers.start()
    dns_server.add("v4only.test", "A", "127.0.0.1")
    destination = Destination(
        Host("v4only.test", four.port),
        helo="relay.test",
        tls=TlsPolicy.OFF,
        timeouts=FAST,
        ip_preference="ipv6-required",
    )

    async def go() -> HostSession:
        async with HostSession(destination, lookup=dns.host_addresses) as session:
            return session

    session = eventloop.run(go())
    assert session.failure is not None and session.failure.stage is Stage.CONNECT
    assert session.failure.text == "no IPv6 address for v4only.test (IPv6 required; it has 127.0.0.1)"
    assert not session.failure.marks_host_down  # our preference, not the host's health: other domains still use it
    assert four.connections == 0


def test_host_addresses_asks_the_configured_servers(dns_server: DnsServer) -> None:
    dns_server.add("dual.test", "A", "127.0.0.1")
    dns_server.add("dual.test", "AAAA", "::1")
    assert dns.host_addresses("dual.test") == ["::1", "127.0.0.1"]
    assert dns.host_addresses("::1") == ["::1"]
    assert dns.host_addresses("192.0.2.1") == ["192.0.2.1"]
    with pytest.raises(OSError, match=r"host name lookup failed: 5\.1\.2 Domain nowhere\.test does not exist"):
        dns.host_addresses("nowhere.test")
