"""Where mail for a domain goes now: the one answer, used by the planner, the route test page, `hoststatus` and
the queue page, so what an operator is shown is the order delivery connects in.

`Resolver.resolve(domain, sender)` reads the route table and DNS once per domain and route (the envelope sender
may pick a sender route, `routes.matching`): the route (or none), its hosts (or
the domain's MX hosts, for a USEDNS route or no route), and the MX exchanges of each route host name (the ESA
looks a route's host name up by MX, then A). `Resolution.order(rr_offset, down)` is then the pure rule of
`engine.order_hosts` and `engine.expand_exchanges`: lowest priority first, equal priorities taking turns by the
route's round-robin position (in proportion to their weights), hosts that are down left out while another host
is up, MX names replaced by their exchanges in place.

The planner asks for the order with the next round-robin position (`hosts.next_rr_offset`, one per new
connection); the pages with the current one (`preview`), which is where the next connection will start.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from delivery import engine, slots
from delivery.models import BounceProfile, HostStatus
from delivery.outbound import dns, hosts
from delivery.outbound.hosts import HostKey
from routes import destinations, domains, matching, snapshot


class Kind(enum.StrEnum):
    ROUTE = "route"  # the route's hosts
    USEDNS = "usedns"  # a route that says: by MX records
    MX = "mx"  # no route applies: by MX records
    DEVNULL = "devnull"  # accepted and dropped
    REDIRECT = "redirect"  # an operator sent the queued mail to one host instead (redirectrecipients)


@dataclass(frozen=True)
class Resolution:
    """Where one domain's mail goes, before the round-robin position and the host states are applied."""

    domain: str
    kind: Kind
    entry: matching.RouteEntry | None = None
    hosts: tuple[engine.Host, ...] = ()  # the route's hosts, or the MX hosts when they were looked up
    exchanges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # route host name -> MX exchanges
    looked_up: bool = False  # MX hosts looked up (USEDNS or no route)
    dns_error: str = ""  # the MX lookup failed: the mail waits (temporary) or bounces (`dns_hard`)
    dns_hard: bool = False
    fallback: engine.Host | None = None  # tried after every host failed a recipient (`fallback_for`)

    @property
    def key(self) -> str:
        """The round-robin counter (one per route, whatever the domain); with the domain, the planner's
        `group_key`."""
        if self.kind == Kind.ROUTE and self.entry is not None:
            return str(self.entry.id)
        if self.kind == Kind.REDIRECT:
            (host,) = self.hosts
            return f"redirect:{host.address}:{host.port}"
        if self.entry is not None and self.entry.sender:
            return f"mx:{self.domain}:{self.entry.id}"  # a sender's USEDNS route: its own settings, its own group
        return f"mx:{self.domain}"

    @property
    def group_key(self) -> tuple[str, str]:
        """What the planner groups a connection's messages by: the route (`key`) and the recipient domain, since
        destination controls apply per domain (a route such as `ALL` covers many). A redirect goes to the
        operator's relay whatever the domain, with no destination control: one group for all its domains."""
        return (self.key, "" if self.kind == Kind.REDIRECT else self.domain)

    @property
    def route_domain(self) -> str:
        """The route's receiving domain in stored form ("" when no route applies)."""
        return self.entry.domain if self.entry is not None else ""

    def tls_policy(self, limits: destinations.DestinationLimits) -> str:
        """The TLS policy of this mail's connections (`engine.tls_policy`): the stricter of the route's and the
        destination control's; the destination's alone for mail delivered by MX (USEDNS, no route). A redirect
        (an operator's relay, not the destination) stays opportunistic, as it was."""
        if self.kind == Kind.REDIRECT:
            return engine.TLS_OPPORTUNISTIC
        route_tls = self.entry.tls if self.kind == Kind.ROUTE and self.entry is not None else None
        return engine.tls_policy(route_tls, limits.tls)

    def host_keys(self) -> set[HostKey]:
        """Every host a connection may try, MX exchanges of route host names included."""
        keys = {h.key for h in self.hosts}
        keys |= {(x, h.port) for h in self.hosts for x in self.exchanges.get(h.address, ())}
        return keys

    def order(self, rr_offset: int, down: Collection[HostKey]) -> list[engine.Host]:
        """The hosts a new connection tries, in order (the delivery engine's rule; see the module docstring)."""
        return engine.expand_exchanges(engine.order_hosts(self.hosts, rr_offset, down), self.exchanges, down)

    def via(self) -> dict[HostKey, str]:
        """MX exchange -> the route host name it stands for."""
        return {(x, h.port): h.address for h in self.hosts for x in self.exchanges.get(h.address, ())}


class Resolver:
    """Resolves domains against one route table, each domain and each route host name once (a planner's batch
    holds many recipients of few domains).

    `domain_mx=False` does not look USEDNS or unrouted domains up (a status page that was not asked to wait on
    DNS for them); a route's host names are still expanded by MX, as delivery does. `dns=False` asks DNS
    nothing at all: routes' hosts as they are written."""

    def __init__(self, table: matching.RouteTable | None = None, *, dns: bool = True, domain_mx: bool = True) -> None:
        self.table = table if table is not None else snapshot.current_table()
        self.dns = dns
        self.domain_mx = dns and domain_mx
        self._resolved: dict[tuple[str, int | None], Resolution] = {}
        self._exchanges: dict[str, tuple[str, ...]] = {}

    def resolve(self, domain: str, sender: str | None = None) -> Resolution:
        """Where mail for `domain` from the envelope `sender` goes (None: the routes without a sender pattern)."""
        entry = self.table.lookup(domain, sender)
        key = (domain, entry.id if entry is not None else None)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolved[key] = self._resolve(domain, entry)
        return found

    def _resolve(self, domain: str, entry: matching.RouteEntry | None) -> Resolution:
        if entry is not None and entry.special == "devnull":
            return Resolution(domain, Kind.DEVNULL, entry)
        fallback = fallback_for(entry)
        if entry is not None and not entry.special:
            route_hosts = tuple(engine.Host(h.host, h.port, h.priority, h.weight) for h in entry.hosts)
            names = {h.host for h in entry.hosts if wants_mx(h)} if self.dns else set()
            exchanges = {name: found for name in sorted(names) if (found := self._route_exchanges(name))}
            return Resolution(domain, Kind.ROUTE, entry, route_hosts, exchanges, fallback=fallback)
        kind = Kind.USEDNS if entry is not None else Kind.MX
        if not self.domain_mx:
            return Resolution(domain, kind, entry, fallback=fallback)
        try:
            mx = dns.mx_hosts(domain, port=settings.ESAROUTES_DELIVERY_MX_PORT)
        except (dns.DnsHardFailure, dns.DnsTempFailure) as exc:
            hard = isinstance(exc, dns.DnsHardFailure)
            return Resolution(domain, kind, entry, looked_up=True, dns_error=str(exc), dns_hard=hard, fallback=fallback)
        return Resolution(domain, kind, entry, tuple(mx), looked_up=True, fallback=fallback)

    def _route_exchanges(self, name: str) -> tuple[str, ...]:
        """The MX exchanges of a route's host name, best first; () when it has none (its own A/AAAA are used)
        or when DNS fails (the name is then tried as it is, and a failure shows as a Connection Error)."""
        if name not in self._exchanges:
            try:
                found = [h.address for h in dns.mx_hosts(name)]
            except (dns.DnsHardFailure, dns.DnsTempFailure):
                found = []
            self._exchanges[name] = () if found == [name.lower().rstrip(".")] else tuple(found)
        return self._exchanges[name]


def parse_relay(text: str) -> tuple[str, int]:
    """`HOST[:PORT]` of `redirectrecipients` (a name, an IPv4 or IPv6 address, `[host]`, a port): (host, port).
    Raises ValueError with the reason."""
    try:
        found = domains.parse_hosts(text.strip())
    except domains.HostListError as exc:
        raise ValueError("; ".join(exc.errors)) from None
    if isinstance(found, domains.Special):
        raise ValueError(f"{found.value} is not a host: give the host name or IP address of the relay")
    if len(found) != 1:
        raise ValueError("give one host (HOST[:PORT]), not a list")
    return found[0].host, found[0].port


def fallback_for(entry: matching.RouteEntry | None) -> engine.Host | None:
    """The fallback relay of mail that `entry` routes (None: no route applies, delivered by MX): the route's own,
    else ESAROUTES_DELIVERY_FALLBACK_RELAY for mail delivered by MX (engine.fallback_relay). None for /dev/null."""
    if entry is not None and entry.special == "devnull":
        return None
    route_relay = None
    if entry is not None and entry.fallback_relay:
        spec = domains.parse_fallback_relay(entry.fallback_relay)  # stored normalised: parses
        route_relay = engine.Host(spec.host, spec.port) if spec is not None else None
    relay = settings.ESAROUTES_DELIVERY_FALLBACK_RELAY
    mx_relay = engine.Host(relay[0], relay[1]) if relay else None
    by_mx = entry is None or entry.special == "usedns"
    return engine.fallback_relay(route_relay, mx_relay, by_mx=by_mx)


def redirected(domain: str, host: str, port: int) -> Resolution:
    """Where a redirected recipient goes: that one host, as given (its A/AAAA records; never an MX lookup, no
    route's TLS or AUTH), whatever the domain's route says."""
    return Resolution(domain, Kind.REDIRECT, None, (engine.Host(host, port, 0),))


def wants_mx(spec: domains.HostSpec) -> bool:
    """A route's host name is looked up by MX first, as the ESA does, unless written `[name]` (A/AAAA only).
    IP addresses, and `localhost` names (RFC 6761: never sent to DNS), are used as they are."""
    name = spec.host.lower().rstrip(".")
    return not spec.a_only and spec.ip is None and name != "localhost" and not name.endswith(".localhost")


@dataclass(frozen=True)
class Candidate:
    """One host of a preview: in the order a new connection tries them, then those it leaves out."""

    host: engine.Host
    status: HostStatus | None  # its health record, if it was ever tried
    via: str = ""  # the route host name this MX exchange stands for
    skipped: bool = False  # down while another host is up: the next connection does not try it

    @property
    def down_until(self) -> datetime | None:
        return self.status.down_until if self.status is not None else None

    @property
    def last_error(self) -> str:
        return self.status.last_error if self.status is not None else ""

    def down(self, now: datetime) -> bool:
        until = self.down_until
        return bool(until and until > now)


@dataclass(frozen=True)
class Preview:
    resolution: Resolution
    candidates: tuple[Candidate, ...]
    rr_offset: int
    table: matching.RouteTable | None = None  # the route table it was read from (destination controls included)

    def destination(self) -> DestinationStatus:
        """The destination control that applies to this domain, with its counts now (`destination_status`)."""
        table = self.table if self.table is not None else snapshot.current_table(max_age=0)
        return destination_status(self.resolution.domain, self.resolution, table)


def preview(
    domain: str,
    *,
    dns: bool = True,
    domain_mx: bool = True,
    now: datetime | None = None,
    table: matching.RouteTable | None = None,
    sender: str | None = None,
) -> Preview:
    """What the next connection for `domain` (from `sender`, when given) would do now: the hosts it tries in order
    (with the route's current round-robin position and the hosts marked down now), then the hosts it leaves out,
    with their health."""
    now = now or timezone.now()
    table = table if table is not None else snapshot.current_table(max_age=0)  # a page shows the latest change
    resolution = Resolver(table, dns=dns, domain_mx=domain_mx).resolve(domain, sender)
    keys = resolution.host_keys()
    down = hosts.down_hosts(keys, now)
    offset = hosts.current_rr_offset(resolution.key) if resolution.hosts else 0
    order = resolution.order(offset, down)
    statuses = {(s.host, s.port): s for s in HostStatus.objects.filter(host__in={k[0] for k in keys})}
    via = resolution.via()
    tried = {h.key for h in order}
    left_out = sorted(
        (h for h in _all_hosts(resolution) if h.key not in tried), key=lambda h: (h.priority, h.address, h.port)
    )
    candidates = [Candidate(h, statuses.get(h.key), via.get(h.key, "")) for h in order]
    candidates += [Candidate(h, statuses.get(h.key), via.get(h.key, ""), skipped=True) for h in left_out]
    return Preview(resolution, tuple(candidates), offset, table)


def _all_hosts(resolution: Resolution) -> list[engine.Host]:
    out: list[engine.Host] = []
    for h in resolution.hosts:
        names = resolution.exchanges.get(h.address)
        out += [engine.Host(x, h.port, h.priority) for x in names] if names else [h]
    return out


# --- the destination control that applies -------------------------------------------------------------------


def profile_ids(entry: matching.RouteEntry | None, limits: destinations.DestinationLimits) -> list[int]:
    """The bounce profiles named for a domain's mail, in precedence order: the route's, then the destination
    control's; none named (or none of them still there) means the default profile."""
    named = [entry.bounce_profile_id if entry is not None else None, limits.bounce_profile_id]
    return [pid for pid in named if pid is not None]


#: The client's TLS policy as the pages say it.
TLS_WORDS = {
    engine.TLS_OFF: "none",
    engine.TLS_OPPORTUNISTIC: "preferred",
    engine.TLS_OPPORTUNISTIC_VERIFY: "preferred (verify)",
    engine.TLS_REQUIRED: "required",
    engine.TLS_REQUIRED_VERIFY: "required (verify)",
}


@dataclass(frozen=True)
class DestinationStatus:
    """The destination control entry that applies to a domain, what it makes of the domain's mail, and the
    shared counts now (`delivery.slots`), for the route test page and `hoststatus`."""

    limits: destinations.DestinationLimits
    key: str  # what connections and recipients are counted by (`destinations.counting_key`)
    tls: str  # the policy that applies (TLS_WORDS), the route's and the destination's combined
    bounce_profile: str  # the name of the profile that applies
    connections: int  # connection slots held now, by every worker (per destination IP: of every address)
    recipients: int | None  # recipients in the current window; None when the entry has no recipient limit
    # The scope "per destination IP": the slots held and the recipients in the window, per connected address
    connections_by_ip: tuple[tuple[str, int], ...] = ()
    recipients_by_ip: tuple[tuple[str, int], ...] = ()

    @property
    def per_ip(self) -> bool:
        return self.limits.limit_scope == destinations.SCOPE_IP

    @property
    def ip_preference(self) -> str:
        """The IP address preference in words (`IPv6 required`)."""
        preference = self.limits.ip_preference
        return destinations.IP_PREFERENCES.get(preference, preference)

    @property
    def matched(self) -> str:
        return "Default" if self.limits.is_default else self.limits.destination

    @property
    def recipient_limit(self) -> str:
        if self.limits.recipient_limit is None or self.limits.recipient_minutes is None:
            return "none"
        per = "each destination IP" if self.limits.limit_scope == destinations.SCOPE_IP else "the whole domain"
        return f"{self.limits.recipient_limit} per {self.limits.recipient_minutes} min, for {per}"


def destination_status(domain: str, resolution: Resolution, table: matching.RouteTable) -> DestinationStatus:
    """The destination control of `domain` and its shared counts now: the one source of the route test page,
    the domain page, `hoststatus` and the API's host status."""
    limits = table.destinations.lookup(domain)
    key = destinations.counting_key(limits, domain)
    names = dict(BounceProfile.objects.filter(pk__in=profile_ids(resolution.entry, limits)).values_list("pk", "name"))
    profile = next((names[pid] for pid in profile_ids(resolution.entry, limits) if pid in names), "")
    minutes = limits.recipient_minutes if limits.recipient_limit else None
    by_ip: dict[str, int] = {}
    rcpts_by_ip: dict[str, int] = {}
    if limits.limit_scope == destinations.SCOPE_IP:  # counted per connected address (`domain|ip`)
        by_ip = slots.in_use_by_address(key)
        rcpts_by_ip = slots.recipients_by_address(key, minutes) if minutes else {}
        connections, recipients = sum(by_ip.values()), sum(rcpts_by_ip.values()) if minutes else None
    else:
        connections = slots.in_use(key)
        recipients = slots.recipients_in_window(key, minutes) if minutes else None
    return DestinationStatus(
        limits=limits,
        key=key,
        tls=TLS_WORDS.get(resolution.tls_policy(limits), resolution.tls_policy(limits)),
        bounce_profile=profile or BounceProfile.DEFAULT_NAME,
        connections=connections,
        recipients=recipients,
        connections_by_ip=tuple(by_ip.items()),
        recipients_by_ip=tuple(rcpts_by_ip.items()),
    )
