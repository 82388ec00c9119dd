"""Destination controls (the ESA's `destconfig`): per-destination delivery limits, and which entry applies.

Pure: no Django, no network, nothing of delivery. The route snapshot (`routes.snapshot.build_table`) reads the
`DestinationControl` rows into a `DestinationTable` carried by the `RouteTable`, so the delivery side asks
`table.destinations.lookup(domain)` per recipient domain without a query.

An entry's key (`destination`) is, in stored form:
- a domain in lower-case IDNA (`example.com`), as routes store receiving domains;
- a partial domain (`.example.com`): its strict subdomains (`a.example.com`, `x.y.example.com`), never
  `example.com` itself, as for routes;
- an IPv4 or IPv6 address in canonical form (`192.0.2.1`, `2001:db8::1`), for address-literal recipients;
- the keyword `default`: the Default entry, which always exists and applies to everything not listed.

Lookup order: the exact domain (or the exact address), then the longest matching partial domain, then Default.
A domain matched by a partial entry or by the Default gets its *own* copy of that entry's limits, as on the ESA:
`counting_key` counts connections and recipients per recipient domain, never per entry.

The field rules live here too (`normalize_destination`, `limits_problems`), so the model's `clean()`, the
services, the page's form, the admin and the `destconfig` command refuse the same values with the same words.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields

from routes import domains

DEFAULT = "default"
"""The Default entry's key (`DestinationControl.DEFAULT`)."""

MAX_CONNECTIONS = 1000
MAX_MESSAGES_PER_CONNECTION = 1000
MAX_RECIPIENT_LIMIT = 1_000_000_000
MAX_RECIPIENT_MINUTES = 60
DEFAULT_MAX_CONNECTIONS = 500
DEFAULT_MAX_MESSAGES_PER_CONNECTION = 50

SCOPE_DOMAIN = "domain"
SCOPE_IP = "ip"
LIMIT_SCOPES: Mapping[str, str] = {
    SCOPE_DOMAIN: "One limit for the whole domain",
    SCOPE_IP: "A separate limit for each destination IP address",
}
IP_PREFERENCES: Mapping[str, str] = {
    "ipv4-preferred": "IPv4 preferred",
    "ipv4-required": "IPv4 required",
    "ipv6-preferred": "IPv6 preferred",
    "ipv6-required": "IPv6 required",
}
DEFAULT_IP_PREFERENCE = "ipv4-preferred"
TLS_MODES: Mapping[str, str] = {
    "none": "None",
    "preferred": "Preferred",
    "required": "Required",
    "preferred-verify": "Preferred (verify)",
    "required-verify": "Required (verify)",
}
DEFAULT_TLS = "preferred"

DEFAULT_PROTECTED = "The Default entry always exists: it cannot be deleted (edit its limits instead)."
DEFAULT_RENAMED = "The Default entry keeps its name: add an entry for the destination instead."


class DestinationError(ValueError):
    """A destination typed by an operator is not usable; the message says why."""


@dataclass(frozen=True, slots=True)
class DestinationLimits:
    """One destination control entry as the delivery side reads it: a plain value, safe to share."""

    destination: str  # stored form; `default` for the Default entry
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_messages_per_connection: int = DEFAULT_MAX_MESSAGES_PER_CONNECTION
    recipient_limit: int | None = None  # at most this many recipients ...
    recipient_minutes: int | None = None  # ... per this many minutes; both None: no limit
    limit_scope: str = SCOPE_DOMAIN
    ip_preference: str = DEFAULT_IP_PREFERENCE
    tls: str = DEFAULT_TLS
    bounce_profile_id: int | None = None

    @property
    def is_default(self) -> bool:
        return self.destination == DEFAULT


# The entry's fields in `DestinationLimits` order: the snapshot's columns, the services' data, the admin's form
COLUMNS = tuple(f.name for f in dataclass_fields(DestinationLimits))


BUILTIN_DEFAULT = DestinationLimits(destination=DEFAULT)
"""The Default entry with the model's defaults: what applies if the Default row is somehow missing."""


class DestinationTable:
    """An immutable index of destination control entries; `lookup` never returns None.

    Entries must carry stored-form destinations, each once (the database guarantees both); a duplicate raises
    ValueError rather than silently shadowing an entry.
    """

    def __init__(self, entries: Iterable[DestinationLimits] = ()) -> None:
        self.exact: dict[str, DestinationLimits] = {}  # domains and IP addresses
        self.partial: dict[str, DestinationLimits] = {}  # keyed without the leading dot
        default: DestinationLimits | None = None
        for entry in entries:
            if entry.is_default:
                if default is not None:
                    raise ValueError("two Default entries in one destination table")
                default = entry
                continue
            index, key = (
                (self.partial, entry.destination[1:])
                if entry.destination.startswith(".")
                else (self.exact, entry.destination)
            )
            if key in index:
                raise ValueError(f"the destination {entry.destination} appears twice in one destination table")
            index[key] = entry
        self.default = default if default is not None else BUILTIN_DEFAULT

    def entries(self) -> Iterator[DestinationLimits]:
        """Every entry: the Default first, then exact destinations, then partial domains."""
        yield self.default
        yield from self.exact.values()
        yield from self.partial.values()

    def __len__(self) -> int:
        return 1 + len(self.exact) + len(self.partial)

    def __repr__(self) -> str:
        return f"<DestinationTable entries={len(self)}>"

    def lookup(self, domain_or_address: str) -> DestinationLimits:
        """The entry that applies to a recipient domain, an address (`user@example.com`), an address literal
        (`[192.0.2.1]`, `user@[IPv6:2001:db8::1]`) or a bare IP: exact > longest partial > Default."""
        key = destination_key(domain_or_address)
        if key is None:
            return self.default
        if domains.parse_ip(key) is not None:  # an address matches no partial domain
            return self.exact.get(key, self.default)
        found = domains.closest_domain(self.exact, self.partial, key)
        return self.default if found is None else found


def counting_key(limits: DestinationLimits, domain: str, ip: str | None = None) -> str:
    """What connections and recipients are counted by for `domain` (a domain, address or address literal).

    The key is the recipient domain in stored form (or the canonical address of a literal), whichever entry
    matched: a domain matched by a partial entry or by the Default gets its own copy of that entry's limits,
    as the ESA does. With `limit_scope == "ip"` and the destination IP known, the key is `domain|ip`, one
    count per destination address; without an IP (before a host is chosen) it is the domain's.
    """
    key = counting_domain(domain)
    if limits.limit_scope == SCOPE_IP and ip:
        address = domains.parse_ip(ip.strip().strip("[]"))
        return f"{key}|{address.compressed if address is not None else ip.strip().lower()}"
    return key


def counting_domain(domain: str) -> str:
    """The domain part of a counting key (`counting_key`): the recipient domain in stored form, an address
    literal's canonical address (`[IPv6:0:0::1]` and `[ipv6:::1]` are both `::1`), else the text in lower case.
    Mail waiting for a slot is found again by it (`delivery.worker.wake`), whatever its literal's spelling."""
    key = destination_key(domain)
    return key if key is not None else domain.rpartition("@")[2].strip().rstrip(">").lower()


def destination_key(domain_or_address: str) -> str | None:
    """A recipient's domain (or address literal) in the form entries are stored in, or None if it is neither
    a valid name nor an address (then only the Default applies)."""
    text = domain_or_address.rpartition("@")[2].strip().rstrip(">").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text[:5].lower() == "ipv6:":
            text = text[5:]
        address = domains.parse_ip(text)
        return address.compressed if address is not None else None
    address = domains.parse_ip(text)
    if address is not None:
        return address.compressed
    if not text or text.startswith(".") or ".." in text:
        return None
    try:
        return domains.to_ascii_name(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Field rules (the model, the services, the form, the admin and the command all use these)


def normalize_destination(text: str) -> str:
    """The stored form of a destination typed by an operator: `default`, a domain, `.partial` or an address.

    Accepts any case, Unicode or punycode names, one trailing dot, `[192.0.2.1]`; raises DestinationError.
    """
    stripped = text.strip()
    if not stripped:
        raise DestinationError("Type a destination: a domain, .partial domain, IP address or default.")
    if stripped.lower() == DEFAULT:
        return DEFAULT
    bare = stripped[1:-1] if stripped.startswith("[") and stripped.endswith("]") else stripped
    if bare[:5].lower() == "ipv6:":
        bare = bare[5:]
    address = domains.parse_ip(bare)
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise DestinationError(f'"{stripped}": an IPv6 zone index (%...) is not allowed')
        return address.compressed
    if stripped.startswith("["):
        raise DestinationError(f'"{stripped}" is not an IP address (only an address goes in brackets)')
    try:
        normalized = domains.normalize_receiving_domain(stripped)
    except domains.DomainError as exc:
        raise DestinationError(str(exc)) from None
    if normalized == domains.DEFAULT_ROUTE:  # "ALL" is the routes' keyword; here it would be a domain "all"
        raise DestinationError('"ALL" is the routes\' keyword: the entry for every other domain is "default"')
    return normalized


def display_destination(stored: str) -> str:
    """A stored destination for people: `Default`, Unicode domains, addresses as stored."""
    if stored == DEFAULT:
        return "Default"
    return domains.display_domain(stored)


def limits_problems(
    *,
    max_connections: int | None,
    max_messages_per_connection: int | None,
    recipient_limit: int | None,
    recipient_minutes: int | None,
    limit_scope: str,
    ip_preference: str,
    tls: str,
) -> dict[str, list[str]]:
    """Every reason these limits cannot be saved, by field name (the model's); empty when they can."""
    found: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        found.setdefault(name, []).append(message)

    if max_connections is None:
        add("max_connections", "Type the maximum concurrent connections (1 to 1,000).")
    elif not 1 <= max_connections <= MAX_CONNECTIONS:
        add("max_connections", f"Concurrent connections must be from 1 to 1,000 (not {max_connections}).")
    if max_messages_per_connection is None:
        add("max_messages_per_connection", "Type the maximum messages per connection (1 to 1,000).")
    elif not 1 <= max_messages_per_connection <= MAX_MESSAGES_PER_CONNECTION:
        add(
            "max_messages_per_connection",
            f"Messages per connection must be from 1 to 1,000 (not {max_messages_per_connection}).",
        )
    if recipient_limit is not None and not 1 <= recipient_limit <= MAX_RECIPIENT_LIMIT:
        add("recipient_limit", f"The recipient limit must be from 1 to 1,000,000,000 (not {recipient_limit}).")
    if recipient_minutes is not None and not 1 <= recipient_minutes <= MAX_RECIPIENT_MINUTES:
        add("recipient_minutes", f"The minutes must be from 1 to 60 (not {recipient_minutes}).")
    if recipient_limit is not None and recipient_minutes is None:
        add("recipient_minutes", "A recipient limit counts over a number of minutes: type them (1 to 60).")
    if recipient_minutes is not None and recipient_limit is None:
        add("recipient_limit", "Type how many recipients are allowed per that many minutes, or clear the minutes.")
    if limit_scope not in LIMIT_SCOPES:
        add("limit_scope", f'"{limit_scope}" is not a limit scope: use {_either(LIMIT_SCOPES)}.')
    if ip_preference not in IP_PREFERENCES:
        add("ip_preference", f'"{ip_preference}" is not an IP address preference: use {_either(IP_PREFERENCES)}.')
    if tls not in TLS_MODES:
        add("tls", f'"{tls}" is not a TLS setting: use {_either(TLS_MODES)}.')
    return found


# What `limits_problems` judges: an entry's fields but its name and bounce profile
LIMIT_FIELDS = (
    "max_connections",
    "max_messages_per_connection",
    "recipient_limit",
    "recipient_minutes",
    "limit_scope",
    "ip_preference",
    "tls",
)


def entry_limits_problems(entry: object) -> dict[str, list[str]]:
    """`limits_problems` of an entry's LIMIT_FIELDS attributes: a model row's (its `clean()`) or the services'
    data (their check), the one rule for both."""
    return limits_problems(**{name: getattr(entry, name) for name in LIMIT_FIELDS})


def _either(choices: Mapping[str, str]) -> str:
    values = list(choices)
    return ", ".join(values[:-1]) + " or " + values[-1]


# ---------------------------------------------------------------------------------------------------------------
# The import/export file (`destconfig import|export`, the page's export)
#
# The ESA's shape: an INI-style file, one `[destination]` section per entry, `[DEFAULT]` for the Default entry,
# `key = value` lines with the ESA's parameter names. A key left out of a section takes the model's default
# (not the Default entry's value); an empty value means none (no recipient limit, no bounce profile). `#` or `;`
# after a space starts a comment.

FILE_DEFAULT_SECTION = "DEFAULT"
_INLINE_COMMENT = re.compile(r"(^|\s)[#;].*$")  # `key = value   # a comment`
IP_SORT_PREFS: Mapping[str, str] = {
    "PREFER_V4": "ipv4-preferred",
    "REQUIRE_V4": "ipv4-required",
    "PREFER_V6": "ipv6-preferred",
    "REQUIRE_V6": "ipv6-required",
}
LIMIT_TYPES: Mapping[str, str] = {"host": SCOPE_DOMAIN, "MXIP": SCOPE_IP}
FILE_KEYS = (
    "ip_sort_pref",
    "max_host_concurrency",
    "max_messages_per_connection",
    "recipient_limit",
    "recipient_minutes",
    "limit_type",
    "use_tls",
    "bounce_profile",
)


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One section of a destination controls file: the limits as written (validated later, by the services),
    the bounce profile by name ("" for none) and the line of its `[section]` header."""

    line: int
    limits: DestinationLimits
    bounce_profile: str = ""


def parse_file(text: str) -> tuple[list[FileEntry], list[str]]:
    """The entries of a destination controls file and the problems found, each as `line N: ...`.

    Syntax and value words only; the limits' ranges and the destinations' names are checked by the services
    (`routes.services.destinations_import`), which name the entry.
    """
    entries: list[FileEntry] = []
    errors: list[str] = []
    section: tuple[int, str] | None = None
    values: dict[str, str] = {}

    def close() -> None:
        if section is not None:
            entry = _file_entry(section[0], section[1], values, errors)
            if entry is not None:
                entries.append(entry)

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                errors.append(f'line {number}: "{line}" is not a section header like [example.com]')
                continue
            close()
            name = line[1:-1].strip()
            section, values = (number, DEFAULT if name.upper() == FILE_DEFAULT_SECTION else name), {}
            continue
        key, equals, value = line.partition("=")
        key = key.strip().lower()
        if not equals:
            errors.append(f'line {number}: "{line}" is not key = value')
        elif section is None:
            errors.append(f"line {number}: {key} comes before any [destination] section")
        elif key not in FILE_KEYS:
            errors.append(f'line {number}: unknown key "{key}" (the keys are {", ".join(FILE_KEYS)})')
        elif key in values:
            errors.append(f"line {number}: {key} is given twice in [{section[1]}]")
        else:
            values[key] = f"{number}\0{_INLINE_COMMENT.sub('', value).strip()}"
    close()
    return entries, errors


def _file_entry(line: int, destination: str, values: Mapping[str, str], errors: list[str]) -> FileEntry | None:
    found = len(errors)
    fields: dict[str, object] = {}

    def get(key: str) -> tuple[int, str] | None:
        if key not in values:
            return None
        number, _, value = values[key].partition("\0")
        return int(number), value

    for key, name, optional in (
        ("max_host_concurrency", "max_connections", False),
        ("max_messages_per_connection", "max_messages_per_connection", False),
        ("recipient_limit", "recipient_limit", True),
        ("recipient_minutes", "recipient_minutes", True),
    ):
        item = get(key)
        if item is None:
            continue
        number, value = item
        if not value and optional:
            fields[name] = None
        elif value.isascii() and value.isdigit():
            fields[name] = int(value)
        else:
            errors.append(f'line {number}: {key} "{value}" is not a whole number')
    for key, name, words in (
        ("ip_sort_pref", "ip_preference", {**IP_SORT_PREFS, **{v: v for v in IP_PREFERENCES}}),
        ("limit_type", "limit_scope", {**LIMIT_TYPES, **{v: v for v in LIMIT_SCOPES}}),
        ("use_tls", "tls", {v: v for v in TLS_MODES}),
    ):
        item = get(key)
        if item is None:
            continue
        number, value = item
        chosen = next((words[w] for w in words if w.lower() == value.lower()), None)
        if chosen is None:
            first = [w for w in words if w not in words.values()] or list(words)
            errors.append(f'line {number}: {key} "{value}" is not one of {", ".join(first)}')
        else:
            fields[name] = chosen
    profile = get("bounce_profile")
    if len(errors) > found:
        return None
    limits = DestinationLimits(destination=destination, **fields)  # type: ignore[arg-type]
    return FileEntry(line=line, limits=limits, bounce_profile=profile[1] if profile else "")


def format_file(entries: Iterable[DestinationLimits], profile_names: Mapping[int, str]) -> str:
    """The destination controls as a file `parse_file` reads back to the same entries: the Default first
    (`[DEFAULT]`), then the others in their stored order, every key written."""
    ip_words = {v: k for k, v in IP_SORT_PREFS.items()}
    scope_words = {v: k for k, v in LIMIT_TYPES.items()}
    ordered = sorted(entries, key=lambda e: (not e.is_default, e.destination))
    lines = [
        "# esaroutes destination controls (the ESA's destconfig file): one [destination] section per entry,",
        "# [DEFAULT] for the Default entry; an empty value means none.",
    ]
    for entry in ordered:
        profile = profile_names.get(entry.bounce_profile_id, "") if entry.bounce_profile_id else ""
        lines += [
            "",
            f"[{FILE_DEFAULT_SECTION if entry.is_default else entry.destination}]",
            f"ip_sort_pref = {ip_words[entry.ip_preference]}",
            f"max_host_concurrency = {entry.max_connections}",
            f"max_messages_per_connection = {entry.max_messages_per_connection}",
            f"recipient_limit = {'' if entry.recipient_limit is None else entry.recipient_limit}",
            f"recipient_minutes = {'' if entry.recipient_minutes is None else entry.recipient_minutes}",
            f"limit_type = {scope_words[entry.limit_scope]}",
            f"use_tls = {entry.tls}",
            f"bounce_profile = {profile}",
        ]
    return "\n".join(lines) + "\n"
