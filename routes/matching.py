"""Recipient domain → route, the ESA way: the most specific entry wins, whatever the order of the table.

Pure: no Django, no network. The delivery workers build a `RouteTable` from the database once per table version
and call `lookup` per recipient; a lookup costs a few dictionary probes (one per label of the recipient's
domain), however many routes there are.

Specificity, most specific first:
1. the exact entry `example.com` (recipients `@example.com` only);
2. the longest partial entry `.example.com` that is a suffix of the domain at a label boundary (strict
   subdomains only: `.example.com` matches `a.example.com` and `x.y.example.com`, never `example.com`);
3. the default entry `ALL`.
No entry at all: None, and the caller delivers by MX records.

A route may also carry a sender pattern (`Route.sender`, stored by `normalize_sender_pattern`): an address
(`alerts@app.example`), a domain (`app.example`), a partial domain (`.app.example`, strict subdomains) or the
null sender `<>`. For a message from sender S, the routes whose pattern matches S are tried first, the most
specific pattern first (address, then domain, then the longest partial, then shorter ones; `<>` matches the null
sender only); within one pattern the receiving domain is matched as above. The first pattern with a route for
the recipient wins; when none has one, the routes without a sender pattern decide, as if there were no sender
routes. Each pattern has its own index, so a lookup costs a few more dictionary probes per label of the sender's
domain, and nothing at all while the table has no sender routes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from routes import destinations as destination_controls
from routes import domains


@dataclass(frozen=True)
class RouteEntry:
    """One route as the delivery side needs it: a plain value, safe to cache and share between threads.

    `domain` is in stored form (`routes.domains.normalize_receiving_domain`). `special` is `Route.special`:
    "" when `hosts` applies, "usedns" or "devnull" otherwise.
    """

    id: int
    domain: str
    hosts: tuple[domains.HostSpec, ...]
    special: str = ""
    auth_profile_id: int | None = None
    bounce_profile_id: int | None = None
    tls: str = "opportunistic"
    defer_on_4xx: bool = False
    fallback_relay: str = ""  # stored form (`routes.domains.fallback_relay_text`), "" for none
    sender: str = ""  # stored sender pattern (`normalize_sender_pattern`); "" for a route without one
    source_address: str = ""  # the local address its connections come from, "" for the global setting
    ehlo_name: str = ""  # the EHLO name its connections say, "" for the global setting


NULL_SENDER = "<>"


class SenderPatternError(ValueError):
    """A sender pattern the admin typed is not usable; the message says why."""


def normalize_sender_pattern(text: str) -> str:
    """The stored form of a route's sender pattern: "" (none), `<>`, `local@domain`, `domain` or `.domain`.

    Lower case throughout (senders are compared without regard to case) and IDNA domains, like receiving domains.
    Raises SenderPatternError saying what is wrong.
    """
    stripped = text.strip()
    if not stripped:
        return ""
    if stripped.replace(" ", "") == NULL_SENDER:
        return NULL_SENDER
    if stripped.upper() == domains.DEFAULT_ROUTE:
        raise SenderPatternError(
            "ALL is not a sender pattern: leave the sender empty for a route that applies to every sender"
        )
    if any(c.isspace() for c in stripped) or "<" in stripped or ">" in stripped:
        raise SenderPatternError(
            f'"{stripped}" is not a sender pattern: type an address (alerts@app.example), a domain (app.example), '
            "a partial domain (.app.example) or <> for the null sender"
        )
    local, at, domain = stripped.rpartition("@")
    if at and not local:
        raise SenderPatternError(
            f'"{stripped}" has nothing before the @: for every sender of a domain, type the domain alone'
        )
    if at and local.startswith("."):
        raise SenderPatternError(f'"{stripped}": an address pattern cannot start with a dot')
    partial = not at and domain.startswith(".")
    name = domain[1:] if partial else domain
    if not name:
        raise SenderPatternError(f'"{stripped}" has no domain: type one like app.example')
    if _is_ip(name.strip("[]")):
        raise SenderPatternError(f'"{stripped}" has an IP address; a sender pattern needs a domain name')
    try:
        ascii_name = domains.to_ascii_name(name)
    except ValueError as exc:
        raise SenderPatternError(f'"{stripped}" is not a valid sender pattern: {exc}') from None
    if at:
        return f"{local.lower()}@{ascii_name}"
    return f".{ascii_name}" if partial else ascii_name


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def display_sender(stored: str) -> str:
    """A stored sender pattern for people: its domain in Unicode."""
    if not stored or stored == NULL_SENDER:
        return stored
    local, at, domain = stored.rpartition("@")
    return f"{local}{at}{domains.display_domain(domain)}"


def sender_key(sender: str) -> str:
    """The envelope sender as the sender indexes compare it: lower case, IDNA domain, `<>` for the null sender."""
    text = sender.strip().removeprefix("<").removesuffix(">").strip()
    if not text:
        return NULL_SENDER
    local, at, domain = text.rpartition("@")
    found = recipient_domain(domain) if at else None
    return f"{local.lower()}@{found}" if found else text.lower()


class _DomainIndex:
    """The routes of one sender pattern by receiving domain: exact, partial (keyed without the dot), ALL."""

    __slots__ = ("default", "exact", "partial")

    def __init__(self) -> None:
        self.exact: dict[str, RouteEntry] = {}
        self.partial: dict[str, RouteEntry] = {}
        self.default: RouteEntry | None = None

    def add(self, entry: RouteEntry) -> None:
        shown = f" for the sender {entry.sender}" if entry.sender else ""
        if entry.domain == domains.DEFAULT_ROUTE:
            if self.default is not None:
                raise ValueError(f"two default routes (ALL){shown} in one route table")
            self.default = entry
            return
        index, key = (self.partial, entry.domain[1:]) if entry.domain.startswith(".") else (self.exact, entry.domain)
        if key in index:
            raise ValueError(f"the receiving domain {entry.domain} appears twice{shown} in one route table")
        index[key] = entry

    def find(self, domain: str | None) -> RouteEntry | None:
        if domain is None:
            return self.default
        found = domains.closest_domain(self.exact, self.partial, domain)
        return self.default if found is None else found


class RouteTable:
    """An immutable index of route entries by sender pattern and receiving domain.

    `version` is the route table version the entries were read at, so a worker can tell that its cached table
    is stale. Entries must carry stored-form domains and sender patterns, each (domain, sender) pair once (the
    database guarantees both); a duplicate raises ValueError rather than silently shadowing a route.
    `exact`, `partial` and `default` are the routes without a sender pattern.

    `destinations` is the destination controls table read at the same version (`routes.destinations`); by
    default a table with only the built-in Default entry.
    """

    def __init__(
        self,
        entries: Iterable[RouteEntry],
        *,
        version: int = 0,
        destinations: destination_controls.DestinationTable | None = None,
    ) -> None:
        self.version = version
        self.destinations = destinations if destinations is not None else destination_controls.DestinationTable()
        plain = _DomainIndex()
        self.by_sender: dict[str, _DomainIndex] = {}
        for entry in entries:
            (self.by_sender.setdefault(entry.sender, _DomainIndex()) if entry.sender else plain).add(entry)
        self._plain = plain
        self.exact = plain.exact
        self.partial = plain.partial  # keyed without the leading dot

    @property
    def default(self) -> RouteEntry | None:
        return self._plain.default

    def entries(self) -> Iterator[RouteEntry]:
        """Every entry: those without a sender pattern (exact, partial, default), then each pattern's."""
        for index in (self._plain, *self.by_sender.values()):
            yield from index.exact.values()
            yield from index.partial.values()
            if index.default is not None:
                yield index.default

    def __len__(self) -> int:
        return sum(
            len(i.exact) + len(i.partial) + (i.default is not None) for i in (self._plain, *self.by_sender.values())
        )

    def __repr__(self) -> str:
        return f"<RouteTable version={self.version} routes={len(self)}>"

    def lookup(self, domain_or_address: str, sender: str | None = None) -> RouteEntry | None:
        """The route for a recipient address or domain, or None when no route applies (deliver by MX).

        Accepts `user@Example.COM`, `"odd@local"@example.com` (the domain follows the last `@`), a Unicode or
        punycode domain, a trailing dot. An address literal (`user@[192.0.2.1]`) or a domain that is not a
        valid name cannot match a named route, so it gets the default route. `sender` is the message's
        envelope sender ("" or `<>` for the null sender); None, or a table without sender routes, looks at the
        routes without a sender pattern only (see the module docstring for the order).
        """
        domain = recipient_domain(domain_or_address)
        if sender is not None and self.by_sender:
            for pattern in sender_patterns(sender):
                index = self.by_sender.get(pattern)
                if index is not None:
                    entry = index.find(domain)
                    if entry is not None:
                        return entry
        return self._plain.find(domain)


def sender_patterns(sender: str) -> list[str]:
    """The stored sender patterns that match an envelope sender, most specific first.

    `alerts@mail.app.example` → `alerts@mail.app.example`, `mail.app.example`, `.app.example`, `.example`;
    the null sender → `<>` only.
    """
    key = sender_key(sender)
    if key == NULL_SENDER:
        return [NULL_SENDER]
    domain = key.rpartition("@")[2]
    if not domain or domain.startswith("[") or "@" not in key:
        return [key]
    patterns = [key, domain]
    dot = domain.find(".")
    while dot != -1:
        patterns.append(domain[dot:])
        dot = domain.find(".", dot + 1)
    return patterns


def address_problem(text: str) -> str | None:
    """Why typed text is not a recipient address a route can be tested with (no @, nothing before or after it)."""
    local, at, domain = text.strip().rpartition("@")
    if not at:
        return f'"{text.strip()}" is not an email address: type one like user@example.com'
    if not local:
        return f'"{text.strip()}" has nothing before the @: type a whole address, like user@example.com'
    if not domain.strip().rstrip(">"):
        return f'"{text.strip()}" has no domain after the @: type a whole address, like user@example.com'
    return None


def recipient_domain(domain_or_address: str) -> str | None:
    """The domain of an address (or a bare domain) in stored form, or None when it cannot name a route.

    None for an address literal (`[192.0.2.1]`, `[IPv6:...]`), an empty domain or an invalid name.
    """
    domain = domain_or_address.rpartition("@")[2].strip().rstrip(">")
    if domain.startswith("[") or not domain:
        return None
    if domain.isascii():
        domain = domain.lower()
        if domain.endswith("."):
            domain = domain[:-1]
        # An empty label would let `a..example.com` fall through to `.example.com`: not a name, no named route.
        return None if not domain or domain.startswith(".") or ".." in domain else domain
    try:
        return domains.to_ascii_name(domain)
    except ValueError:
        return None
