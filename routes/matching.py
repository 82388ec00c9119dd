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
"""

from __future__ import annotations

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


class RouteTable:
    """An immutable index of route entries by receiving domain.

    `version` is the route table version the entries were read at, so a worker can tell that its cached table
    is stale. Entries must carry stored-form domains, each domain once (the database guarantees both);
    a duplicate raises ValueError rather than silently shadowing a route.

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
        self.exact: dict[str, RouteEntry] = {}
        self.partial: dict[str, RouteEntry] = {}  # keyed without the leading dot
        self.default: RouteEntry | None = None
        for entry in entries:
            if entry.domain == domains.DEFAULT_ROUTE:
                if self.default is not None:
                    raise ValueError("two default routes (ALL) in one route table")
                self.default = entry
                continue
            index, key = (
                (self.partial, entry.domain[1:]) if entry.domain.startswith(".") else (self.exact, entry.domain)
            )
            if key in index:
                raise ValueError(f"the receiving domain {entry.domain} appears twice in one route table")
            index[key] = entry

    def entries(self) -> Iterator[RouteEntry]:
        """Every entry: exact, then partial, then the default route."""
        yield from self.exact.values()
        yield from self.partial.values()
        if self.default is not None:
            yield self.default

    def __len__(self) -> int:
        return len(self.exact) + len(self.partial) + (self.default is not None)

    def __repr__(self) -> str:
        return f"<RouteTable version={self.version} routes={len(self)}>"

    def lookup(self, domain_or_address: str) -> RouteEntry | None:
        """The route for a recipient address or domain, or None when no route applies (deliver by MX).

        Accepts `user@Example.COM`, `"odd@local"@example.com` (the domain follows the last `@`), a Unicode or
        punycode domain, a trailing dot. An address literal (`user@[192.0.2.1]`) or a domain that is not a
        valid name cannot match a named route, so it gets the default route.
        """
        domain = recipient_domain(domain_or_address)
        if domain is None:
            return self.default
        entry = self.exact.get(domain)
        if entry is not None:
            return entry
        dot = domain.find(".")
        while dot != -1:
            entry = self.partial.get(domain[dot + 1 :])
            if entry is not None:
                return entry
            dot = domain.find(".", dot + 1)
        return self.default


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
