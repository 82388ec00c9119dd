"""Pure delivery decisions: host order, what a reply means, retry and host-down schedules, DSN phrases.

No I/O, no clock, no Django: every time and offset is passed in, so each rule is a table in
tests/delivery/test_engine.py. The semantics follow Cisco ESA "SMTP Routes" (see reference/esa.md §2, §3):

* hosts: lowest priority number first; equal priorities round-robin per *connection*, shared in proportion to
  the hosts' weights (smooth weighted round-robin); down hosts skipped unless all are down;
* while the first connection to a host not seen greeting lately waits for its banner, it carries one message and
  further messages pass that host over for the next one (:func:`probe_alone`, :func:`before_connecting`): a host
  that never greets costs one message one timeout, once;
* a failure of the host itself (no connection, no reply, TLS, a 4xx/5xx to the greeting, EHLO or AUTH) moves
  the same recipients to the next host at once;
* after MAIL FROM, a 4xx moves the recipients concerned to the next host (or, with ``defer_on_4xx``, keeps
  them queued for their retry) and a 5xx bounces them;
* retries and host-down periods double from an initial wait up to a ceiling.
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter


class Stage(enum.Enum):
    """Where in the SMTP conversation something happened."""

    CONNECT = "connect"  # TCP connect
    GREETING = "greeting"  # the 220 banner
    TLS = "tls"  # STARTTLS command and handshake, or a required STARTTLS that was not offered
    EHLO = "ehlo"  # EHLO (and the HELO fallback), before and after STARTTLS
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the DATA command *and* the reply to the final dot


#: Stages at which any failure is the host's, never a recipient's.
CONNECTION_STAGES = frozenset({Stage.CONNECT, Stage.GREETING, Stage.TLS, Stage.EHLO, Stage.AUTH})
#: Stages of the mail transaction proper, where replies concern the recipients.
TRANSACTION_STAGES = frozenset({Stage.MAIL, Stage.RCPT, Stage.DATA})


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # 2xx/3xx: this step succeeded (at DATA: the host took responsibility)
    NEXT_HOST = "next_host"  # try the next host now, same recipients
    BOUNCE = "bounce"  # permanent for the recipients concerned: no other host, DSN to the sender
    DEFER = "defer"  # keep queued until the recipient's next retry (defer_on_4xx routes only)


@dataclass(frozen=True, slots=True)
class Host:
    """One destination host of a route. ``address`` is an IP literal (no brackets) or a host name."""

    address: str
    port: int = 25
    priority: int = 0
    weight: int = 1  # its share of the new connections among the hosts of its priority that are up

    @property
    def key(self) -> tuple[str, int]:
        """What host-down state is kept under."""
        return (self.address, self.port)

    def __str__(self) -> str:
        return f"{self.address}:{self.port}/pri={self.priority}"


# --- host order -------------------------------------------------------------------------------------------


def order_hosts(hosts: Sequence[Host], rr_offset: int, down: Collection[tuple[str, int]] = ()) -> list[Host]:
    """The order in which one new connection should try the hosts of a route.

    Lowest priority number first. Within a priority, the hosts that are up take turns by ``rr_offset`` (the
    caller increments a shared counter per *connection*): the host :func:`weighted_pick` names for that count
    comes first, then the others in the configured order from there on, so with equal weights successive
    connections start at successive hosts, and with weights 1, 2, 7 they start at each host 10, 20 and 70
    times in a hundred. A down host does not hand its turns to its neighbour: the count is shared among the
    hosts that are up, in proportion to their weights. Down hosts (keys in ``down``) are left out, unless
    every host of the route is down: then all of them are tried, in the same order, because holding mail for a
    down timer when nothing else can take it gains nothing.
    """
    up = [h for h in hosts if h.key not in down]
    candidates = up or list(hosts)
    by_priority = sorted(candidates, key=attrgetter("priority"))  # stable: ties keep the configured order
    ordered: list[Host] = []
    for _, group in itertools.groupby(by_priority, key=attrgetter("priority")):
        members = list(group)
        k = weighted_pick(tuple(h.weight for h in members), rr_offset)
        ordered += members[k:] + members[:k]
    return ordered


def weighted_pick(weights: tuple[int, ...], count: int) -> int:
    """Which of the hosts with these weights the connection number ``count`` starts at (an index).

    Smooth weighted round-robin, nginx's: each turn every host's current weight grows by its weight, the
    largest (the first of equal ones) is picked and loses the total. Started from zero the picks repeat with
    a period of the total weight, so the pick is a pure function of the shared counter modulo that period:
    every worker computes the same one, and no state but the counter is kept. Weights 5, 1, 1 give
    0, 0, 1, 0, 2, 0, 0 rather than 0, 0, 0, 0, 0, 1, 2: a heavy host's turns are spread out. Equal weights
    give 0, 1, 2, ...: the plain rotation. Weights below 1 count as 1.
    """
    if not weights:
        raise ValueError("no hosts to pick from")
    sequence = _swrr_sequence(tuple(max(1, w) for w in weights))
    return sequence[count % len(sequence)]


@functools.lru_cache(maxsize=1024)
def _swrr_sequence(weights: tuple[int, ...]) -> tuple[int, ...]:
    """One period of the smooth weighted round-robin picks (the weights divided by their common divisor,
    which gives the same picks in a shorter period)."""
    divisor = math.gcd(*weights)
    reduced = [w // divisor for w in weights]
    total = sum(reduced)
    current = [0] * len(reduced)
    picks: list[int] = []
    for _ in range(total):
        for i, w in enumerate(reduced):
            current[i] += w
        best = max(range(len(current)), key=current.__getitem__)  # max() keeps the first of equals
        current[best] -= total
        picks.append(best)
    return tuple(picks)


class Opening(enum.Enum):
    """What a message does at a host it would open a new connection to (`before_connecting`)."""

    OPEN = "open"  # open a connection of its own now
    PASS = "pass"  # go on to the next host now, as if this one had failed it (no Connection Error, not marked down)
    WAIT = "wait"  # wait for the next connect or greeting outcome among these hosts, then decide again


#: A host seen greeting this long ago (seconds) or less is known to greet: new connections to it open in parallel.
GREETED_RECENTLY = 60.0


@dataclass(frozen=True, slots=True)
class Greeting:
    """What this worker knows of a host's greeting, as a message is about to open a new connection to it."""

    opening: int = 0  # connections of ours to it still waiting for their connect or greeting
    greeted_ago: float | None = None  # seconds since one of ours last saw it greet; None: never, or it failed since
    failed_ago: float | None = None  # seconds since one of ours last failed to connect or get a greeting, if none
    # greeted since

    def first_on_its_way(self, recent: float = GREETED_RECENTLY) -> bool:
        """A connection to it is on its way and nothing says it greets: another would only queue up behind it."""
        return self.opening > 0 and not self.known(recent)

    def known(self, recent: float = GREETED_RECENTLY) -> bool:
        return self.greeted_ago is not None and self.greeted_ago <= recent

    def held(self, recent: float = GREETED_RECENTLY, down: float = 60.0) -> bool:
        """No place for a message now: its first connection is on its way, or it failed to greet within `down`
        seconds (the host-down mark that failure wrote may not be seen yet by what was planned before it)."""
        failed = self.failed_ago is not None and self.failed_ago <= down
        return self.first_on_its_way(recent) or (failed and not self.known(recent))


def before_connecting(
    host: Greeting, later: Sequence[Greeting], *, recent: float = GREETED_RECENTLY, down: float = 60.0
) -> Opening:
    """Whether a message opens a new connection to `host`, passes it over for the route's next hosts (`later`, in
    the order it would try them), or waits. `down`: the host-down period of a first failure (seconds).

    =======================================================================  =====================================
    nothing of ours on its way to it and no failure to greet within `down`,  OPEN: as always (round-robin
      or it greeted within `recent` seconds                                    untouched)
    its first connection on its way, or it failed to greet lately; a later   PASS: to that host, at once
      host is neither (it greets, or nothing of ours is waiting on it)
    its first connection on its way; every later host held, one of them      WAIT: for the first greeting (or
      with its first connection on its way too                                 failure) among them
    otherwise (no later host of the route, or every later one failed)        OPEN: the last host is always tried
    =======================================================================  =====================================

    Why pass rather than wait: a host that accepts TCP and never greets holds every connection to it for the
    greeting timeout, and each message behind one of them waits as long. The ESA's rule is that when a host does
    not respond the mail goes to one that does (reference/esa.md §2.1); so while the first connection to an unknown
    host is still waiting for its banner, the next messages go to the next host of the order, exactly as if that
    host had failed them (equal priority: the other of the round-robin; otherwise the next priority), but without
    a failure: no Connection Error, no host-down mark, no attempt, because nothing was tried. Waiting for the first
    connection's outcome would cost each of them up to one timeout, which is what is being avoided. Only that one
    connection decides about the host: if it greets, the host is known and takes its turns again, connections in
    parallel as before (so a host that greets after a pause, as Postfix's postscreen does, gets its share once it
    has greeted); if it times out, the host is marked down as before, and the messages planned before that mark
    was written pass it over too, as they would a down host.

    WAIT covers the start-up instant when every host of the route has its first connection on the way (all
    unknown): passing would only move the message to another unknown host; the first greeting, a few ms later,
    decides. The last host of the route (only the fallback relay after it, or nothing) is opened as today: with
    nowhere else to go, waiting for another connection's outcome saves nothing when that outcome is a timeout,
    and the worker's `hold_back` keeps later batches off a host whose connections have stalled.
    """
    if not host.held(recent, down):
        return Opening.OPEN
    if any(not h.held(recent, down) for h in later):
        return Opening.PASS
    if host.first_on_its_way(recent) and any(h.first_on_its_way(recent) for h in later):
        return Opening.WAIT
    return Opening.OPEN


def probe_alone(
    host: Greeting, later: Sequence[Greeting], *, recent: float = GREETED_RECENTLY, down: float = 60.0
) -> bool:
    """Whether a new connection to `host` should carry a single message until it has greeted, the other messages
    of its group going past it at once (as `before_connecting` sends them): the first connection to a host nothing
    is known of (none of ours on its way, not seen greeting within `recent` seconds, no failure within `down`),
    when a later host of the route is free to take the others. So a host that never greets holds one message
    for its timeout, not a connection's worth (up to the destination's messages per connection); a host that
    greets at once loses the rest of one connection's turn, once, and is known from then on.
    """
    if host.opening or host.known(recent) or host.held(recent, down):
        return False
    return any(not h.held(recent, down) for h in later)


def greeted(stage: Stage, code: int | None) -> bool:
    """Whether a connection that ended at `stage` (with reply `code`, None: none) saw the host greet: any reply to
    the greeting, or anything after it. A refused or timed-out connect, or a greeting that never came, says no."""
    return stage not in (Stage.CONNECT, Stage.GREETING) or code is not None


def expand_exchanges(
    ordered: Sequence[Host], exchanges: Mapping[str, Sequence[str]], down: Collection[tuple[str, int]] = ()
) -> list[Host]:
    """Replace each route host named in ``exchanges`` by its MX exchanges, best first, in its place.

    The ESA looks a route's host name up by MX, then A: ``relay.example.com`` with MX ``mx1`` and ``mx2`` is
    tried as ``mx1`` then ``mx2``, at the route host's priority and position (the rotation of equal hosts
    happens first, on the route's own hosts, so an MX host counts once in the round-robin). Exchanges that are
    down are left out unless all are.
    """
    out: list[Host] = []
    for host in ordered:
        names = exchanges.get(host.address)
        if not names:
            out.append(host)
            continue
        expanded = [Host(name, host.port, host.priority, host.weight) for name in names]
        out += [h for h in expanded if h.key not in down] or expanded
    return out


# --- the fallback relay -----------------------------------------------------------------------------------


def fallback_relay(route_relay: Host | None, mx_relay: Host | None, *, by_mx: bool) -> Host | None:
    """The fallback relay of one destination: the route's own; for mail delivered by MX records (a USEDNS route,
    a domain with no route) the one in settings (ESAROUTES_DELIVERY_FALLBACK_RELAY) when the route has none.
    A route with its own hosts and no fallback has none: the setting is for MX delivery only."""
    if route_relay is not None:
        return route_relay
    return mx_relay if by_mx else None


def with_fallback(hosts: Sequence[Host], fallback: Host | None) -> list[Host]:
    """The hosts one connection chain tries: the route's (already ordered), then the fallback relay, last.

    The runner goes on to the next host only with the recipients the previous host failed (no reply, a 4xx, a 5xx
    before MAIL FROM: `verdict` NEXT_HOST), so the fallback relay gets exactly the recipients that every host of
    the route failed in this attempt; a 5xx to MAIL/RCPT/DATA (BOUNCE) or a deferring 4xx (DEFER) ends the
    recipient's attempt before it. A fallback that is one of the route's hosts already is not tried twice.
    """
    if fallback is None or any(h.key == fallback.key for h in hosts):
        return list(hosts)
    return [*hosts, fallback]


# --- destination controls: address family and TLS level ---------------------------------------------------

#: A destination control's IP address preference (routes.models.DestinationControl.ip_preference).
IP_PREFERENCES = ("ipv4-preferred", "ipv4-required", "ipv6-preferred", "ipv6-required")


def order_addresses(addresses: Sequence[str], preference: str) -> list[str]:
    """The addresses a host name resolved to, in the order to connect, for an IP address preference.

    ``*-preferred``: that family's addresses first, then the other family's, each in the resolver's order
    (the other family is the fall-back when every preferred address fails). ``*-required``: only that
    family's; an empty list means this host cannot be reached under the preference (see
    :func:`no_address_text`). Duplicates are dropped. An unknown preference keeps the resolver's order.
    """
    unique = list(dict.fromkeys(addresses))
    v6 = [a for a in unique if ":" in a]
    v4 = [a for a in unique if ":" not in a]
    if preference == "ipv4-preferred":
        return v4 + v6
    if preference == "ipv4-required":
        return v4
    if preference == "ipv6-preferred":
        return v6 + v4
    if preference == "ipv6-required":
        return v6
    return unique


def no_address_text(name: str, preference: str, found: Sequence[str]) -> str:
    """The details of the Connection Error when a host has no address the preference allows."""
    family = "IPv6" if preference.startswith("ipv6") else "IPv4"
    if not found:
        return f"no address for {name}"
    return f"no {family} address for {name} ({family} required; it has {', '.join(found)})"


#: TLS levels, weakest first: the client's policy (delivery.outcome.TlsPolicy values).
TLS_OFF = "off"
TLS_OPPORTUNISTIC = "opportunistic"
TLS_OPPORTUNISTIC_VERIFY = "opportunistic_verify"
TLS_REQUIRED = "required"
TLS_REQUIRED_VERIFY = "required_verify"

#: A destination control's TLS value (routes.models.DestinationControl.tls) -> the client's policy.
DESTINATION_TLS = {
    "none": TLS_OFF,
    "preferred": TLS_OPPORTUNISTIC,
    "preferred-verify": TLS_OPPORTUNISTIC_VERIFY,
    "required": TLS_REQUIRED,
    "required-verify": TLS_REQUIRED_VERIFY,
}

#: policy -> (TLS required, certificate verified when TLS is up)
_TLS_DEMANDS = {
    TLS_OFF: (False, False),
    TLS_OPPORTUNISTIC: (False, False),
    TLS_OPPORTUNISTIC_VERIFY: (False, True),
    TLS_REQUIRED: (True, False),
    TLS_REQUIRED_VERIFY: (True, True),
}


def tls_policy(route_tls: str | None, destination_tls: str) -> str:
    """The TLS policy of a connection: the stricter of the route's and the destination control's.

    ``route_tls`` is the route's own setting (``off`` / ``opportunistic`` / ``required`` /
    ``required_verify``), or None for mail delivered by MX lookup (a USEDNS route, no route), which gets the
    destination's level alone. "Stricter" is taken per demand: TLS is required if either side requires it,
    the certificate is verified if either side verifies, and TLS is tried at all unless both say no
    (``off`` + ``preferred`` = ``opportunistic``; ``required`` + ``preferred-verify`` = ``required_verify``).
    """
    dest = DESTINATION_TLS.get(destination_tls, TLS_OPPORTUNISTIC)
    if route_tls is None:
        return dest
    route = route_tls if route_tls in _TLS_DEMANDS else TLS_OPPORTUNISTIC
    if route == TLS_OFF and dest == TLS_OFF:
        return TLS_OFF
    required = _TLS_DEMANDS[route][0] or _TLS_DEMANDS[dest][0]
    verify = _TLS_DEMANDS[route][1] or _TLS_DEMANDS[dest][1]
    if required:
        return TLS_REQUIRED_VERIFY if verify else TLS_REQUIRED
    return TLS_OPPORTUNISTIC_VERIFY if verify else TLS_OPPORTUNISTIC


# --- what a reply means -----------------------------------------------------------------------------------


def verdict(stage: Stage, code: int | None, *, defer_on_4xx: bool = False) -> Verdict:
    """What a reply (``code``; ``None`` = no reply at all) at ``stage`` means for the recipients concerned.

    ======================================  =====================================================
    no reply (refused, timeout, dropped)    NEXT_HOST at any stage, whatever ``defer_on_4xx`` says
    2xx / 3xx                               DELIVERED (this step went through)
    anything else at CONNECT..AUTH          NEXT_HOST: the host failed, not the recipients
    4xx at MAIL / RCPT / DATA               NEXT_HOST, or DEFER when the route sets defer_on_4xx
    5xx at MAIL / RCPT / DATA               BOUNCE
    garbage (not 2xx-5xx) at MAIL..DATA     NEXT_HOST: not a reply we can act on
    ======================================  =====================================================
    """
    if code is None:
        return Verdict.NEXT_HOST
    if 200 <= code < 400:
        return Verdict.DELIVERED
    if stage in CONNECTION_STAGES:
        return Verdict.NEXT_HOST
    if 500 <= code < 600:
        return Verdict.BOUNCE
    if 400 <= code < 500:
        return Verdict.DEFER if defer_on_4xx else Verdict.NEXT_HOST
    return Verdict.NEXT_HOST


def marks_host_down(stage: Stage, code: int | None, *, reused_connection: bool = False) -> bool:
    """Whether a failure should put the host in the down state (its timer from :func:`host_down_for`).

    Yes for: no reply at all at any stage (refused, timed out, dropped, TLS handshake failure) and any
    rejection of the greeting, STARTTLS or EHLO. No for replies to AUTH (our credentials, not the host)
    and to MAIL/RCPT/DATA (about this mail, not the host). One exception: a reused connection found dead
    at MAIL (the peer closed it while idle) says nothing about the host.
    """
    if code is None:
        return not (reused_connection and stage is Stage.MAIL)
    return stage in (Stage.GREETING, Stage.TLS, Stage.EHLO)


CONNECTION_CANCELED = "connection canceled"
NETWORK_ERROR = "network error"
CONNECTION_TIMED_OUT = "connection timed out"
UNEXPECTED_SMTP_RESPONSE = "unexpected SMTP response"


def connection_error_reason(code: int | None, *, timed_out: bool = False) -> str:
    """The ``reason:`` word of the ESA ``Connection Error:`` line for a host failure: one of the ESA's four.

    A TLS handshake that fails is a ``network error``, as the ESA logs it; the ``DCID n TLS failed`` line
    before it says what failed."""
    if timed_out:
        return CONNECTION_TIMED_OUT
    if code is not None:
        return UNEXPECTED_SMTP_RESPONSE
    return NETWORK_ERROR


CLOSED_BY_PEER = "closed by the peer"
CLOSE_TIMED_OUT = "timed out"
CLOSE_CANCELLED = "cancelled at shutdown"  # the runner stopped with a delivery on the wire


def close_reason(code: int | None, *, timed_out: bool = False, stage: Stage | None = None) -> str:
    """Why a delivery connection ended when it was not our QUIT, for ``DCID n close (...)``; "" for our own close.

    A timeout is ours ("timed out"); no reply at all (end of file, reset) or a 421 (RFC 5321: the service is
    closing the channel) is the peer's; a TLS handshake that failed, or a refusal we answered by dropping the
    connection, is our close.
    """
    if timed_out:
        return CLOSE_TIMED_OUT
    if (code is None and stage is not Stage.TLS) or code == 421:
        return CLOSED_BY_PEER
    return ""


def possible_delivery_verdict(*, count_delivered: bool) -> Verdict:
    """The connection was lost after the final dot went out and before its reply: the peer may have the message.

    Sending it again to the next host (the default; RFC 5321 §6.1 prefers a duplicate to a loss) is NEXT_HOST;
    the bounce profile's "count as delivered" (the ESA's "Possible Delivery" switch) is DELIVERED, which loses
    the message if the peer had not taken it.
    """
    return Verdict.DELIVERED if count_delivered else Verdict.NEXT_HOST


# --- schedules --------------------------------------------------------------------------------------------


def _doubling(n: int, initial: timedelta, maximum: timedelta) -> timedelta:
    """initial, 2·initial, 4·initial, ... for n = 1, 2, 3, ..., never above maximum."""
    if initial <= timedelta(0):
        return min(timedelta(0), maximum)
    delay = initial
    for _ in range(n - 1):  # at most log2(maximum / initial) turns: it stops at the ceiling
        if delay >= maximum:
            break
        delay *= 2
    return min(delay, maximum)


def retry_delay(
    attempts: int,
    initial: timedelta = timedelta(seconds=60),
    maximum: timedelta = timedelta(seconds=3600),
) -> timedelta:
    """How long a recipient waits after its ``attempts``-th failed attempt (1 = the first delivery try).

    Bounce-profile ``initial_retry`` / ``max_retry_timeout``: 60 s, 120 s, 240 s, ... capped at 3600 s.
    """
    return _doubling(attempts, initial, maximum)


def delay_warning_due(
    *,
    enabled: bool,
    null_sender: bool,
    attempts: int,
    sent: int,
    maximum: int,
    last_sent_at: datetime | None,
    interval: timedelta,
    now: datetime,
) -> bool:
    """Whether a delayed message's sender gets a delay warning now (the bounce profile's "Send Delay Warning
    Messages", its minimum interval and maximum number).

    Never when the profile's warnings are off, never to the null sender (``<>``: bounces and warnings come from
    it, so a warning could loop), never before the second failed attempt (the ESA warns from the second attempt
    on, not on the first delay), never more than ``maximum`` per message, and never sooner than ``interval``
    after the last one. ``attempts`` counts the failed attempts of the recipient just delayed, this one included.
    """
    if not enabled or null_sender or attempts < 2 or sent >= maximum:
        return False
    return last_sent_at is None or now - last_sent_at >= interval


def is_expired(
    first_queued_at: datetime,
    attempts: int,
    now: datetime,
    max_retries: int = 100,
    max_lifetime: timedelta = timedelta(hours=72),
) -> bool:
    """Whether a recipient must hard-bounce (5.4.7) instead of being attempted again.

    Call it when the recipient is due, before the attempt. ``attempts`` counts the attempts already made,
    the first one included, so ``max_retries`` retries means ``max_retries + 1`` attempts in all. Cisco's
    worked examples: retries=2 → attempts at t=0, 60, 120, then bounce; lifetime 100 s → attempts at t=0,
    60, then bounce when the t=120 attempt comes due.
    """
    return attempts > max_retries or now - first_queued_at >= max_lifetime


#: The suspension that stands for every destination domain (`suspenddel ALL`).
SUSPEND_ALL = "ALL"


def is_suspended(domain: str, suspended: Collection[str]) -> bool:
    """Whether deliveries to `domain` are suspended, given the suspended domains (``"ALL"``: every domain).

    A suspended recipient is left as it is: not attempted, no attempt counted, its host never marked down, and
    never expired while suspended (the expiry check comes after this one): suspending is the operator's choice,
    not the destination's failure. Its queue lifetime still counts from when the message came in.
    """
    return SUSPEND_ALL in suspended or domain in suspended


def host_down_for(
    consecutive_failures: int,
    initial: timedelta = timedelta(seconds=60),
    maximum: timedelta = timedelta(hours=1),
) -> timedelta:
    """How long a host stays down after its ``consecutive_failures``-th failure in a row (0 → not down)."""
    if consecutive_failures <= 0:
        return timedelta(0)
    return _doubling(consecutive_failures, initial, maximum)


# --- enhanced status codes (RFC 3463 and its registry) ----------------------------------------------------

EXPIRED = ("5.4.7", "Delivery expired (message too old)")

# Subject.detail → phrase. Where the ESA mail log shows its own wording it is used (marked ESA); the rest are
# the RFC 3463 / IANA registry texts.
_PHRASES: dict[str, str] = {
    "0.0": "Other undefined status",
    "1.0": "Unknown address error",  # ESA
    "1.1": "Bad destination email address",  # ESA
    "1.2": "Bad destination host",  # ESA
    "1.3": "Bad destination mailbox address syntax",
    "1.4": "Destination mailbox address ambiguous",
    "1.5": "Destination address valid",
    "1.6": "Destination mailbox has moved, no forwarding address",
    "1.7": "Bad sender's mailbox address syntax",
    "1.8": "Bad sender's system address",
    "1.10": "Recipient address has null MX",
    "2.0": "Other or undefined mailbox status",
    "2.1": "Mailbox disabled, not accepting messages",
    "2.2": "Mailbox full",
    "2.3": "Message length exceeds administrative limit",
    "2.4": "Mailing list expansion problem",
    "3.0": "Other or undefined mail system status",
    "3.1": "Mail system full",  # ESA and RFC
    "3.2": "Not accepting messages at this time",  # ESA
    "3.3": "System not capable of selected features",
    "3.4": "Message too big for system",
    "3.5": "System incorrectly configured",
    "4.0": "Other network problem",  # ESA
    "4.1": "No answer from host",
    "4.2": "Bad connection",
    "4.3": "Directory server failure",
    "4.4": "Unable to route",
    "4.5": "Mail system congestion",
    "4.6": "Routing loop detected",
    "4.7": "Delivery expired (message too old)",  # ESA
    "5.0": "Other or undefined protocol status",
    "5.1": "Invalid command",
    "5.2": "Syntax error",
    "5.3": "Too many recipients",
    "5.4": "Invalid command arguments",
    "5.5": "Wrong protocol version",
    "6.0": "Other or undefined media error",
    "6.1": "Media not supported",
    "6.2": "Conversion required and prohibited",
    "6.3": "Conversion required but not supported",
    "6.4": "Conversion with loss performed",
    "6.5": "Conversion failed",
    "6.7": "Non-ASCII addresses not permitted for that sender/recipient",
    "6.8": "UTF-8 string reply is required, but not permitted by the SMTP client",
    "6.9": "UTF-8 header message cannot be transferred to one or more recipients",
    "7.0": "Other or undefined security status",
    "7.1": "Delivery not authorized, message refused",
    "7.2": "Mailing list expansion prohibited",
    "7.3": "Security conversion required but not possible",
    "7.4": "Security features not supported",
    "7.5": "Cryptographic failure",
    "7.6": "Cryptographic algorithm not supported",
    "7.7": "Message integrity failure",
    "7.8": "Authentication credentials invalid",
    "7.9": "Authentication mechanism is too weak",
    "7.10": "Encryption needed",
    "7.11": "Encryption required for requested authentication mechanism",
    "7.13": "User account disabled",
    "7.14": "Trust relationship required",
}
_SUBJECT_PHRASES: dict[str, str] = {
    "0": "Other undefined status",
    "1": "Unknown address error",
    "2": "Other or undefined mailbox status",
    "3": "Other or undefined mail system status",
    "4": "Other network problem",
    "5": "Other or undefined protocol status",
    "6": "Other or undefined media error",
    "7": "Other or undefined security status",
}
# class "." subject (1-3 digits) "." detail (1-3 digits), at the start of the reply text (RFC 3463 §2)
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def status_phrase(status: str) -> str:
    """The phrase for an x.y.z code; unknown details fall back to their subject's "other" phrase."""
    _, subject, detail = status.split(".")
    return _PHRASES.get(f"{subject}.{detail}") or _SUBJECT_PHRASES.get(subject, "Other undefined status")


def enhanced_status(code: int | None, text: str) -> tuple[str, str]:
    """The x.y.z status of a reply and its phrase, for ``Delayed:``/``Bounced:`` lines and DSNs.

    The code at the start of the reply text is used when present and its class agrees with the reply code
    (RFC 3463 §2 requires it; a ``550 4.2.2`` is taken as 5.0.0). Otherwise it is derived from the reply
    code: 2xx → 2.0.0, 4xx → 4.0.0, 5xx → 5.0.0, a malformed reply → 4.5.0. With no reply at all (``code``
    None) a code in ``text`` still counts (local decisions such as 5.6.7 are written that way), else 4.4.0
    "Other network problem".
    """
    m = _ENHANCED.match(text)
    reply_class = str(code)[0] if code is not None and 200 <= code < 600 else None
    if m and (code is None or m.group(1) == reply_class):
        status = f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
    elif code is None:
        status = "4.4.0"
    elif reply_class in ("2", "4", "5"):
        status = f"{reply_class}.0.0"
    else:  # 1xx, 3xx as a final reply, or aiosmtplib's -1 for an unparsable one
        status = "4.5.0"
    return status, status_phrase(status)


# --- destination controls: connection slots and the recipient rate ------------------------------------------


def connections_allowed(limit: int, in_use: int) -> int:
    """How many more connections a destination may open now: its limit less those held, never below 0."""
    return max(0, limit - in_use)


def held_for_slots(full: int, *, connected: bool) -> bool:
    """A host whose addresses were tried in turn, with the limit scope "per destination IP": `full` of them had
    every connection slot held, the others failed or were not allowed. Its recipients are held back for a slot
    (not failed: no host marked down, no attempt counted) when none connected and at least one was full; such
    an address works as far as we know, once one of its slots is given back. No full address: the host failed."""
    return not connected and full > 0


class SlotChange(enum.Enum):
    """What just happened to one of a destination's connection slots (`connection_episode_ends`)."""

    TAKEN = "taken"  # a new connection got a slot
    GIVEN_BACK = "given_back"  # a connection closed (or never opened) and gave its slot back


def connection_episode_ends(change: SlotChange, *, limit: int = 0, held: int = 0, waiting: bool = False) -> bool:
    """Whether a destination's connection episode (its mail held back because all `limit` of its slots were held:
    one `Maximum outbound connections` line) is over, seen as a slot is taken or given back.

    Taken, with `held` slots held with it: over when one is still to spare (the limit holds nothing back now).
    The taker cannot tell whether others wait: the wanted mark it clears may be its own. Given back, `waiting`
    whether mail still waits for a slot (a wanted mark left by a refused runner, or MIDs noted as waiting):
    over when none does (the backlog is through). With a limit of 1 a slot is never to spare, so only the
    second ends it; a slot given back while mail waits is no end: that mail takes it, at the limit again."""
    if change is SlotChange.TAKEN:
        return held < limit
    return not waiting


def recipients_allowed(limit: int, in_window: int, wanted: int) -> int:
    """How many of `wanted` recipients may go now when `in_window` went in the current window (limit N per M)."""
    return max(0, min(wanted, limit - in_window))


def counts_at_peer(stage: Stage, code: int | None, verdict: Verdict) -> bool:
    """Whether a recipient, once its transaction is over, stays counted against its destination's recipient
    limit: the peer took its RCPT (its outcome was decided at DATA, after the RCPTs), or may have (the connection
    broke during the RCPTs, with no reply). One refused at RCPT, or never sent (a refused MAIL, a local refusal
    such as a bad address), gives its charge back."""
    if stage is Stage.DATA:
        return True
    return stage is Stage.RCPT and code is None and verdict is not Verdict.BOUNCE


def window_frees_at(charges: Sequence[tuple[datetime, int]], *, limit: int, minutes: int, now: datetime) -> datetime:
    """When at least one more recipient may go: the moment enough of the window's oldest recipients (`charges`:
    (when, how many) in any order) have slid out of it. `now` when there is room already."""
    window = timedelta(minutes=minutes)
    inside = sorted((at, n) for at, n in charges if at > now - window)
    total = sum(n for _, n in inside)
    for at, n in inside:
        if total < limit:
            break
        total -= n
        frees = at + window
        if total < limit:
            return max(frees, now)
    return now
