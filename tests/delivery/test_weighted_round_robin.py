"""Weighted round-robin against real peers: a route's equal-priority hosts weighted 1, 2 and 7 get 10, 20 and 70 %
of the new connections, and a down host's share goes to the others in proportion to their weights.

Each connection takes its order the way the planner does (`Resolution.order` with `hosts.next_rr_offset`, the
counter every worker shares: Redis on the PostgreSQL pass, the database's counter table on the embedded one),
then opens a real SMTP session (EHLO, QUIT) to the first host that answers; a host that fails is marked down
through `hosts.apply_events`, as the recorder does.
"""

from __future__ import annotations

import asyncio

import pytest
from django.utils import timezone

from delivery import outcome, resolve
from delivery.outbound import hosts, smtp_client
from routes import domains, services, snapshot
from tests.support.peers import Peer, PeerFactory

pytestmark = pytest.mark.django_db
CONNECTIONS = 1000
FAST = outcome.Timeouts(connect=2, command=2, data=2, transaction=5)


def weighted_route(*pairs: tuple[Peer, int]) -> resolve.Resolution:
    text = ", ".join(f"{p.host}:{p.port}/pri=10/weight={w}" for p, w in pairs)
    destination = domains.parse_hosts(text)
    services.route_create(data=services.RouteData("weights.test", destination), actor="cli:test")
    snapshot.invalidate()
    return resolve.Resolver(snapshot.current_table(max_age=0), dns=False).resolve("weights.test")


def connect_once(where: resolve.Resolution) -> None:
    """One new connection: the next round-robin position, the hosts that are down now, the first that answers."""
    now = timezone.now()
    order = where.order(hosts.next_rr_offset(where.key), hosts.down_hosts(where.host_keys(), now))
    for host in order:
        destination = outcome.Destination(host, helo="relay.esaroutes.test", tls=outcome.TlsPolicy.OFF, timeouts=FAST)
        opened = asyncio.run(_open_and_quit(destination))
        if not isinstance(opened, smtp_client.Failure):
            return
        event = outcome.HostEvent(host.address, host.port, ok=False, error=opened.text or opened.reason)
        hosts.apply_events([event], now)
    raise AssertionError(f"no host answered: {order}")


async def _open_and_quit(destination: outcome.Destination) -> smtp_client.Connection | smtp_client.Failure:
    session = smtp_client.HostSession(destination)
    try:
        return await session.open()
    finally:
        await session.close()


def shares(*peers: Peer) -> list[float]:
    total = sum(p.connections for p in peers)
    return [100 * p.connections / total for p in peers]


@pytest.mark.slow
def test_connections_are_shared_by_weight_and_a_down_hosts_share_goes_to_the_others(peers: PeerFactory) -> None:
    light, middle, heavy = peers.start(), peers.start(), peers.start()
    where = weighted_route((light, 1), (middle, 2), (heavy, 7))
    for _ in range(CONNECTIONS):
        connect_once(where)
    assert sum(p.connections for p in (light, middle, heavy)) == CONNECTIONS
    for share, wanted in zip(shares(light, middle, heavy), (10, 20, 70), strict=True):
        assert abs(share - wanted) <= 3, shares(light, middle, heavy)

    heavy.stop()  # refused from now on: its first failure marks it down, then it is skipped
    before = (light.connections, middle.connections)
    for _ in range(CONNECTIONS):
        connect_once(where)
    gained = (light.connections - before[0], middle.connections - before[1])
    assert sum(gained) == CONNECTIONS
    assert abs(100 * gained[0] / CONNECTIONS - 100 / 3) <= 3, gained  # 1 : 2, the weights of the two left
    assert abs(100 * gained[1] / CONNECTIONS - 200 / 3) <= 3, gained
