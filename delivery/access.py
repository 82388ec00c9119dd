"""Who may send what through the listener: relay networks, the Recipient Access Table and SMTP AUTH users.

The decisions are pure functions of an `AccessSnapshot` (plain values, safe to share between threads): the
listener loads one with `load_snapshot()` in a worker thread at most once a second and answers every RCPT from
memory, so the hot path never queries the database.

The rules, in order, for one recipient:
1. a client in a relay network (the ESA's RELAYLIST) or authenticated with SMTP AUTH may send to any domain;
2. anyone else only to a domain the Recipient Access Table accepts: an explicit exact row, else the longest
   `.partial` row (strict subdomains), else, when no row names the domain, any domain that has a route other
   than `ALL` is accepted, else the `ALL` row, which is REJECT (the model refuses ACCEPT to every writer, and
   `load_snapshot` ignores such a row, as it does a relay network that is not one or is every address);
3. for those clients, source routes (`<@a:b@c>`), the percent hack (`a%b@c`), bang paths (`a!b@c`), quoted
   addresses (`"a@b"@c`) and address literals (`b@[192.0.2.1]`) are refused outright: a default route to `ALL`
   can never make this an open relay, because the route table only widens step 2 for named domains.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import ValidationError
from django.db.models import Count, Max

from esaroutes import egress
from routes import domains, matching, snapshot
from routes.models import (
    OPEN_RELAY_MESSAGE,
    RecipientAccessRule,
    RelayNetwork,
    SmtpUser,
    normalize_network,
    opens_relay,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

RELAY_GROUP = "RELAYLIST"
ACCEPT_GROUP = "UNKNOWNLIST"
ALL = domains.DEFAULT_ROUTE

# Characters that have no place in an envelope address we accept: C0 and C1 controls, DEL, the Unicode line and
# paragraph separators (line breaks to many log readers), and the surrogates that aiosmtpd uses to carry bytes
# that were not UTF-8.
_BAD_ADDRESS_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SOURCE_ROUTE = re.compile(r"^\s*<?\s*@")

# An RFC 5321 path (§4.1.2), with RFC 6531's UTF-8 allowed in atoms, labels and quoted strings: no comments, no
# spaces, balanced brackets and quotes. aiosmtpd parses with the RFC 5322 header parser, which drops comments and
# mends a missing ">" or quote: what it returns is then not what the client wrote, so the raw argument is checked.
_U = "\u0080-\U0010ffff"
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U}]+"
_LOCAL = rf'(?:{_ATOM}(?:\.{_ATOM})*|"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*")'
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9\-{_U}]*[A-Za-z0-9{_U}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = rf"{_LOCAL}@(?:{_DOMAIN}|{_LITERAL})"
_PARAMETER = r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?"  # esmtp-keyword["=" esmtp-value]
_PATH = re.compile(rf"(?:<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?{_MAILBOX}>|<>|{_MAILBOX})(?:[ \t]+{_PARAMETER})*[ \t]*")
MAX_ADDRESS_LENGTH = 256  # RFC 5321 §4.5.3.1.3: a path, brackets included

logger = logging.getLogger(__name__)


class Verdict(enum.Enum):
    ACCEPT = "accept"
    DENY = "deny"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str  # for the application log and tests: "relay network", "RAT .example.com", "route example.com"

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPT


@dataclass(frozen=True)
class AccessSnapshot:
    """Everything the listener needs to decide, read at one moment. `rat` maps stored domains to accept flags."""

    relay_networks: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    rat: Mapping[str, bool] = field(default_factory=dict)
    routes: matching.RouteTable = field(default_factory=lambda: matching.RouteTable([]))
    users: Mapping[str, str] = field(default_factory=dict)  # active username -> password hash
    key: tuple[Any, ...] = ()
    loaded_at: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _key() -> tuple[Any, ...]:
    """A cheap fingerprint of the three access tables: when it has not moved, the snapshot is still right."""
    rat = RecipientAccessRule.objects.aggregate(n=Count("id"), m=Max("updated_at"), i=Max("id"))
    relays = tuple(RelayNetwork.objects.order_by("network").values_list("network", flat=True))
    users = tuple(SmtpUser.objects.filter(is_active=True).order_by("username").values_list("username", "password"))
    return (rat["n"], rat["m"], rat["i"], relays, users)


def load_snapshot(previous: AccessSnapshot | None = None) -> AccessSnapshot:
    """A snapshot from the database; `previous` is returned unchanged (bar the route table) when nothing moved.

    Runs in a worker thread (it queries the database). The route table comes from `routes.snapshot`, which
    rebuilds only when the route table version moved.
    """
    key = _key()
    table = snapshot.current_table()
    if previous is not None and previous.key == key:
        if previous.routes is table:
            return previous
        return AccessSnapshot(previous.relay_networks, previous.rat, table, previous.users, key, time.monotonic())
    networks = []
    for text in key[3]:
        try:
            networks.append(ipaddress.ip_network(normalize_network(text)))
        except ValidationError as exc:  # every writer validates; a row from before that, or from SQL, is skipped
            logger.warning("relay network %r ignored: %s", text, "; ".join(exc.messages))
    rat: dict[str, bool] = {}
    for domain, action in _rat_rows():
        if opens_relay(domain, action):
            logger.warning("Recipient Access Table rule ALL = ACCEPT ignored (ALL is REJECT): %s", OPEN_RELAY_MESSAGE)
            continue
        rat[domain] = action == RecipientAccessRule.Action.ACCEPT
    return AccessSnapshot(tuple(networks), rat, table, dict(key[4]), key, time.monotonic())


def _rat_rows() -> Iterable[tuple[str, str]]:
    return RecipientAccessRule.objects.values_list("domain", "action")


# ---------------------------------------------------------------------------------------------------------------
# Decisions


def relay_match(snap: AccessSnapshot, address: str) -> Network | None:
    """The relay network that holds the client address (IPv4-mapped IPv6 counts as IPv4), or None."""
    ip = egress.as_ip(address)
    if ip is None:
        return None
    for net in snap.relay_networks:
        if ip.version == net.version and ip in net:
            return net
    return None


def address_problem(address: str) -> str | None:
    """Why an envelope address cannot be accepted from anyone (control characters, NUL, length), else None."""
    if _BAD_ADDRESS_CHARS.search(address):
        return "control character in address"
    if len(address.encode("utf-8", "surrogateescape")) > MAX_ADDRESS_LENGTH:
        return "address too long"
    return None


def path_syntax_ok(argument: str) -> bool:
    """Is the argument of MAIL FROM: or RCPT TO: (keyword stripped, parameters allowed after a space) an RFC 5321
    path? A bare mailbox without the angle brackets is tolerated, as most MTAs do; a comment is not."""
    return _PATH.fullmatch(argument.lstrip(" ")) is not None


def envelope_domain(address: str) -> str:
    """The domain a recipient is stored and counted under (`Recipient.domain`): IDNA lower case, an address
    literal `[192.0.2.1]` kept as is, "" when none. The route lookup's form is `matching.recipient_domain`, which
    has no answer for a literal."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return ""
    if domain.startswith("["):
        return domain.lower()
    return matching.recipient_domain(domain) or ""


def check_recipient(snap: AccessSnapshot, address: str, *, raw: str = "", relay: bool) -> Decision:
    """May this recipient be accepted in this session? `raw` is the RCPT argument as the client sent it."""
    if relay:
        return Decision(Verdict.ACCEPT, "relay")
    if _SOURCE_ROUTE.match(raw):
        return Decision(Verdict.DENY, "source route")
    local = address.rpartition("@")[0]
    if "%" in local or "!" in local or "@" in local:  # `"a@b"@c`: an address inside the quoted local part
        return Decision(Verdict.DENY, "percent hack, bang path or routing in the local part")
    domain = envelope_domain(address)
    if not domain or domain.startswith("["):
        return Decision(Verdict.DENY, "no domain name")
    return rat_decision(snap, domain)


def rat_decision(snap: AccessSnapshot, domain: str) -> Decision:
    """The Recipient Access Table's answer for a stored-form domain (see the module docstring for the order)."""
    exact = snap.rat.get(domain)
    if exact is not None:
        return Decision(Verdict.ACCEPT if exact else Verdict.DENY, f"RAT {domain}")
    dot = domain.find(".")
    while dot != -1:
        partial = snap.rat.get(domain[dot:])
        if partial is not None:
            return Decision(Verdict.ACCEPT if partial else Verdict.DENY, f"RAT {domain[dot:]}")
        dot = domain.find(".", dot + 1)
    entry = snap.routes.lookup(domain)
    if entry is not None and entry.domain != ALL:
        return Decision(Verdict.ACCEPT, f"route {entry.domain}")
    if snap.rat.get(ALL):
        return Decision(Verdict.ACCEPT, "RAT ALL")
    return Decision(Verdict.DENY, "RAT ALL")


def check_login(snap: AccessSnapshot, username: str, password: str) -> bool:
    """SMTP AUTH: an active user with this password. Slow on purpose (password hashing): call it off the loop."""
    encoded = snap.users.get(username)
    if encoded is None:
        make_password(password)  # the same hashing work as a real check: no user-name oracle by timing
        return False
    return check_password(password, encoded)
