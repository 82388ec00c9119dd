"""Where esaroutes may connect to: `ESAROUTES_DELIVERY_ALLOWED_NETWORKS`, checked on every resolved address.

    if not egress.allowed("192.0.2.7", settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS):
        raise egress.Refused(egress.refusal("192.0.2.7"))

Every outgoing connection obeys it: delivery (a route's hosts and the hosts an MX lookup found, each checked on
the address its name resolved to, right before connecting), the route tester's EHLO probe and webhooks. A refused
address is never connected to; the caller says so (a ``Connection Error`` line, the probe's answer, a webhook
attempt's error). DNS queries go to the configured resolvers and are not checked here.

Pure: no Django, no I/O. The default is everything (``0.0.0.0/0,::/0``); the test suite allows loopback only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "ESAROUTES_DELIVERY_ALLOWED_NETWORKS"
EVERYWHERE: tuple[Network, ...] = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


class Refused(OSError):
    """An address outside the allowed networks: nothing was sent to it (an OSError, so callers that handle
    connection failures handle this one the same way; it has no errno)."""


def parse(raw: str | Iterable[str]) -> tuple[Network, ...]:
    """``"127.0.0.0/8, ::1/128"`` (or a list of them) as networks; raises ValueError naming the bad item."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    out: list[Network] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network (use CIDR, e.g. 10.0.0.0/8)") from None
    return tuple(out)


def as_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a peer's address names (an IPv6 zone ``%eth0`` dropped, ``::ffff:10.0.0.1`` as
    ``10.0.0.1``), or None when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def allowed(address: str, networks: Sequence[Network] | None) -> bool:
    """Whether `address` (an IP, as getaddrinfo gives it: an IPv6 zone ``%eth0`` is ignored) may be connected to.

    ``None`` means no restriction. An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is checked as the IPv4
    address it reaches. Anything that is not an IP address is refused (a name must be resolved first)."""
    if networks is None:
        return True
    ip = as_ip(address)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def refusal(address: str) -> str:
    """What an operator reads when `address` was refused, in the log line, on the page, in the attempt."""
    return f"{address} is outside {SETTING}: not connected"
