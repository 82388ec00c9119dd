"""The vocabulary the spool and the outbound side share: what to deliver, where, and what came of it.

The planner (`delivery.spool.plan`) turns claimed messages into `Group`s: the `Job`s (one message's `Rcpt`s for
one route) that go the same way, with the hosts in the order to try and the `Destination` template (TLS policy,
timeouts, EHLO name, AUTH) the SMTP client needs. The runner (`delivery.outbound.runner`) delivers them and hands
back one `Report` per message and host chain: each recipient's `Final` state, its `Attempt`s, the mail-log lines and
the `HostEvent`s, which the recorder writes in one transaction and the journal (`delivery.spool.journal`) pickles until
then. Frozen dataclasses, no ORM, no I/O: any side imports this module without importing the runner.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from delivery import engine, maillog
from esaroutes import egress
from routes import destinations

#: A Final's state for a recipient a destination limit held back (no connection slot, or the recipient rate):
#: not an attempt and not a failure; it stays queued, due again at the Final's `until`.
THROTTLED = "throttled"


class TlsPolicy(enum.StrEnum):
    """A connection's STARTTLS policy: ``routes.models.Route.TLS`` values plus ``opportunistic_verify`` (a
    destination control's "preferred (verify)"); `engine.tls_policy` combines a route's and a destination's."""

    OFF = "off"
    OPPORTUNISTIC = "opportunistic"  # if offered; no verification; handshake failure = host failure
    OPPORTUNISTIC_VERIFY = "opportunistic_verify"  # if offered, and then the certificate must verify
    REQUIRED = "required"  # must be offered and negotiated; no verification
    REQUIRED_VERIFY = "required_verify"  # and the certificate must verify for the host's name or IP


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. Defaults follow RFC 5321 §4.5.3.2 for commands (5 min) and the final dot (10 min)."""

    connect: float = 30.0  # TCP connect, per address
    command: float = 300.0  # each reply: greeting, EHLO, STARTTLS (+handshake), AUTH, MAIL, RCPT, DATA, RSET, QUIT
    data: float = 600.0  # the reply to the final dot
    transaction: float = 1800.0  # cap on the whole session setup, and on each message transaction


@dataclass(frozen=True, slots=True)
class Destination:
    host: engine.Host
    helo: str  # our EHLO name (never socket.getfqdn())
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC
    auth: tuple[str, str] | None = field(default=None, repr=False)  # (username, password), after STARTTLS
    timeouts: Timeouts = Timeouts()
    defer_on_4xx: bool = False  # a 4xx after MAIL FROM keeps the recipients queued instead of trying the next host
    count_possible_delivery: bool = False  # lost after the final dot: count delivered instead of sending again
    max_messages: int = 50  # per connection
    ca_file: str | None = None  # trust anchors for the verifying policies; None = the system store
    source_address: str | None = None  # local IP to connect from (the ESA "interface"); None = the OS's choice
    allowed_networks: tuple[egress.Network, ...] | None = None  # ESAROUTES_DELIVERY_ALLOWED_NETWORKS; None = any
    ip_preference: str = "ipv4-preferred"  # engine.IP_PREFERENCES: the order/filter of the host's addresses
    # The recipient domain whose destination control the connection was opened under (its slot, its TLS, its
    # messages per connection): part of the pool's key, so a connection never carries another domain's mail.
    # "" for mail not counted per domain (a redirect to an operator's relay, a group built by hand).
    domain: str = ""

    def __post_init__(self) -> None:
        if not self.helo or not self.helo.isascii() or any(c.isspace() for c in self.helo):
            raise ValueError(f"bad EHLO name {self.helo!r}")
        if self.max_messages < 1:
            raise ValueError("max_messages must be at least 1")


@dataclass(frozen=True, slots=True)
class Rcpt:
    rid: int
    address: str
    domain: str


@dataclass(frozen=True, slots=True)
class Job:
    """One message's recipients for one route and recipient domain (the planner's group)."""

    mid: int
    sender: str
    body: bytes
    recipients: tuple[Rcpt, ...]


@dataclass(frozen=True, slots=True)
class Group:
    """Jobs that go the same way: `hosts` in the order to try (already rotated and with down hosts left out).

    One route and one recipient domain (`resolve.Resolution.group_key`): each domain's mail gets its own
    destination control, even where one route (`ALL`, a `.partial` domain) covers several domains."""

    route_key: str
    domain: str  # the recipient domain: its destination control, and the Connection Error line
    hosts: tuple[engine.Host, ...]
    template: Destination  # everything but the host
    jobs: tuple[Job, ...]
    interface: str = "Data 1"
    # The destination control of `domain`: its connections count against max_connections, its recipients
    # against the recipient limit (`delivery.slots`); None: nothing is counted (a group built by hand).
    limits: destinations.DestinationLimits | None = None
    fallback: engine.Host | None = None  # tried after every host of `hosts` failed a recipient (engine.with_fallback)


@dataclass(frozen=True, slots=True)
class Final:
    """Where one recipient ends up after this attempt: delivered, bounced, or delayed (the queue schedules it)."""

    mid: int
    rid: int
    state: str  # a Recipient.State value: delivered / bounced / delayed
    code: int | None
    text: str
    host: str = ""
    dsn_status: str = ""
    attempt: bool = True  # counts as a delivery attempt (False for a local decision: expiry, /dev/null, admin)
    until: datetime | None = None  # THROTTLED: when the recipient is due again
    # THROTTLED for a connection slot: (the counting keys refused, their limit); a slot of one given back wakes it
    # sooner. (A journal of before 2026-12-03 holds one key as a str: `delivery.worker.wait_for_slots` reads it.)
    slot_wait: tuple[tuple[str, ...], int] | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    mid: int
    rid: int
    dcid: int
    host: str
    ip: str
    port: int
    code: int | None
    response: str
    outcome: str  # a DeliveryAttempt.Outcome value


@dataclass(slots=True)
class Report:
    """What to record in one transaction: recipients' final states, attempts, log lines, host events."""

    finals: list[Final] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    lines: list[maillog.lines.Line] = field(default_factory=list)
    host_events: list[HostEvent] = field(default_factory=list)
    journal: int = 0  # the journal file holding it until it is recorded (delivery.spool.journal), 0 for none

    def __bool__(self) -> bool:
        return bool(self.finals or self.attempts or self.lines or self.host_events)


@dataclass(frozen=True, slots=True)
class HostEvent:
    """What one connection taught us about a host: applied in the transaction that records the outcomes."""

    host: str
    port: int
    ok: bool  # the connection opened (and a message went through, when any was sent)
    error: str = ""  # for a failure: the `details` of the Connection Error line
    marks_down: bool = True  # a failure that says something about the host (see engine.marks_host_down)
    delivered: int = 0  # recipients delivered on this connection
    failed: int = 0  # recipients that failed on this connection (next host, delayed, bounced)

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)
