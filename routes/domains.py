"""Receiving domains and destination hosts: parsing, normalising and validating, with no Django and no network.

This module is the single validation path for routes: the form, the admin, the `smtproutes` command and the
importer all go through `normalize_receiving_domain`, `parse_hosts` and `validate_route`, so a route accepted in
one place is accepted everywhere, with the same messages.

Stored forms:
- a receiving domain is lower-case IDNA (punycode) ASCII: `example.com`, `.example.com` (partial: strict
  subdomains only) or the keyword `ALL` (the default route);
- a host name is lower-case IDNA ASCII without a trailing dot; an IP address is in `ipaddress`' canonical form
  (IPv6 compressed).

Internationalised names are converted with the standard library's IDNA 2003 codec (`encodings.idna`, nameprep
included), so `Bücher.Example` and `xn--bcher-kva.example` are the same domain. IDNA 2003 maps a few characters
that IDNA 2008 keeps (`ß` becomes `ss`); for routing, where the admin types the domain and the lookup converts
the recipient's domain the same way, that is consistent. Nothing here opens a connection or resolves a name.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from encodings import idna
from typing import TypeVar

DEFAULT_ROUTE = "ALL"
DEFAULT_PORT = 25
MAX_HOSTS_PER_ROUTE = 100
MAX_PORT = 65535
MAX_PRIORITY = 65535
DEFAULT_WEIGHT = 1
MAX_WEIGHT = 100
MAX_LABEL_LENGTH = 63
MAX_NAME_LENGTH = 253

# IDNA 2003 treats the ideographic and full-width full stops as dots too (RFC 3490 §3.1).
_DOTS = re.compile("[.\u3002\uff0e\uff61]")
_LDH = re.compile(r"[a-z0-9-]+")
_PLAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN_NAME = re.compile(rf"(?:{_PLAIN_LABEL}\.)*{_PLAIN_LABEL}")
ONE_PORT_PER_HOST = (
    "A route lists each host once, with one port (the ESA's rule): to use a second port of the same server, "
    "list it under another of its addresses or host names."
)
_HOST_OPTION = re.compile(r"(?P<name>pri|weight)\s*=\s*(?P<value>.*)", re.IGNORECASE)


class DomainError(ValueError):
    """A receiving domain the admin typed is not usable; the message says why, in words a mail admin knows."""


class HostListError(ValueError):
    """One or more destination hosts are not usable. `errors` holds one specific message per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


class Special(enum.Enum):
    """A destination that stands alone in its route instead of a host list. The value is the text form."""

    USEDNS = "USEDNS"  # deliver by the domain's MX records, as if there were no route
    DEVNULL = "/dev/null"  # accept and drop

    @property
    def code(self) -> str:
        """The value stored in `Route.special` (and `RouteEntry.special`)."""
        return "usedns" if self is Special.USEDNS else "devnull"

    @classmethod
    def from_code(cls, code: str) -> Special | None:
        """The inverse of `code`; "" (a route with hosts) gives None."""
        return {"usedns": cls.USEDNS, "devnull": cls.DEVNULL}.get(code) if code else None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HostSpec:
    """One destination host of a route.

    `host` is a normalised host name or IP address. `a_only` is the `[host]` form: resolve the name's A/AAAA
    records only, skipping the MX lookup. `weight` (1-100) is the host's share of the new connections among the
    hosts of its priority (`/weight=N`, an esaroutes extension of the ESA syntax). An IP address is never looked
    up at all, so for an IP `a_only` is always False: the parser drops brackets around an IP (`[10.0.0.9]` is
    `10.0.0.9`) and `validate_route` rejects an IP with `a_only=True`, so that each host has exactly one
    representation and duplicates are found.
    """

    host: str
    port: int = DEFAULT_PORT
    priority: int = 0
    a_only: bool = False
    weight: int = DEFAULT_WEIGHT

    @property
    def ip(self) -> IPAddress | None:
        """The host as an IP address, or None for a host name."""
        return parse_ip(self.host)

    def format(self) -> str:
        """The canonical `host[:port][/pri=N][/weight=N]` text: `:25`, `/pri=0` and `/weight=1` are left out (so a
        plain ESA file reads back as it was written), `[name]` marks a_only.

        An IPv6 address needs brackets only when a port follows (`[2001:db8::1]:2525`), since its own colons
        would otherwise swallow the port.
        """
        address = self.ip
        if address is None:
            text = f"[{self.host}]" if self.a_only else self.host
        elif address.version == 6 and self.port != DEFAULT_PORT:
            text = f"[{self.host}]"
        else:
            text = self.host
        if self.port != DEFAULT_PORT:
            text += f":{self.port}"
        if self.priority:
            text += f"/pri={self.priority}"
        if self.weight != DEFAULT_WEIGHT:
            text += f"/weight={self.weight}"
        return text


Destination = Sequence[HostSpec] | Special
"""What a route delivers to: its host list, or a special destination standing alone."""


# ---------------------------------------------------------------------------------------------------------------
# Domain names


def normalize_receiving_domain(text: str) -> str:
    """The stored form of a receiving domain typed by an admin: `ALL`, `example.com` or `.example.com`.

    Accepts any case, Unicode or punycode, surrounding whitespace and one trailing dot (`example.com.`).
    Rejects IP addresses: routes are chosen by the recipient's domain, and an address literal recipient
    (`user@[192.0.2.1]`) falls to the default route.
    """
    stripped = text.strip()
    if stripped.upper() == DEFAULT_ROUTE:
        return DEFAULT_ROUTE
    partial = stripped[:1] in (".", "\u3002", "\uff0e", "\uff61")
    name = stripped[1:] if partial else stripped
    if not name:
        raise DomainError(f"{_quote(stripped)} is not a valid domain: it is empty")
    if parse_ip(name.strip("[]")) is not None:
        raise DomainError(f"{_quote(stripped)} is an IP address; a receiving domain must be a domain name")
    try:
        ascii_name = to_ascii_name(name)
    except ValueError as exc:
        raise DomainError(f"{_quote(stripped)} is not a valid domain: {exc}") from None
    return f".{ascii_name}" if partial else ascii_name


_Entry = TypeVar("_Entry")


def closest_domain(exact: Mapping[str, _Entry], partial: Mapping[str, _Entry], key: str) -> _Entry | None:
    """The entry for `key` (a normalized domain): exact first, then the longest partial domain (keyed without
    its leading dot) that `key` ends in; None where neither holds one. The route and destination tables both
    look up this way."""
    entry = exact.get(key)
    if entry is not None:
        return entry
    dot = key.find(".")
    while dot != -1:
        entry = partial.get(key[dot + 1 :])
        if entry is not None:
            return entry
        dot = key.find(".", dot + 1)
    return None


def display_domain(stored: str) -> str:
    """A stored domain or host name in Unicode for people: `.xn--bcher-kva.example` → `.bücher.example`.

    Keeps the leading dot of a partial domain; `ALL` and IP addresses come back unchanged. A label that does
    not decode (it cannot come from `normalize_receiving_domain`) is shown as stored rather than failing.
    """
    if stored == DEFAULT_ROUTE or "xn--" not in stored:
        return stored
    return ".".join(_label_to_unicode(label) for label in stored.split("."))


def to_ascii_name(name: str) -> str:
    """A domain or host name (no leading dot) in lower-case IDNA, one trailing dot removed.

    Raises ValueError with the reason (`label "a_b" contains "_" ...`) for the caller to prefix with the name.
    """
    if name[-1:] in (".", "\u3002", "\uff0e", "\uff61"):
        name = name[:-1]
    if not name:
        raise ValueError("it is empty")
    if len(name) <= MAX_NAME_LENGTH and name.isascii():
        lowered = name.lower()
        if "xn--" not in lowered and _PLAIN_NAME.fullmatch(lowered) and not lowered.rpartition(".")[2].isdigit():
            return lowered  # the common case, checked at once: plain letters-digits-hyphens labels
    labels = [_label_to_ascii(label) for label in _DOTS.split(name)]
    ascii_name = ".".join(labels)
    if len(ascii_name) > MAX_NAME_LENGTH:
        raise ValueError(f"it is {len(ascii_name)} characters long (the limit is {MAX_NAME_LENGTH})")
    if labels[-1].isdigit():
        # RFC 3696 §2: a top-level domain is never all digits; this is what tells `10.0.0.300` from a name.
        raise ValueError(f'the last label "{labels[-1]}" is all digits')
    return ascii_name


def _label_to_ascii(label: str) -> str:
    if not label:
        raise ValueError("it has an empty label (two dots in a row, or a dot at the start)")
    if not label.isascii():
        try:
            label = idna.ToASCII(label).decode("ascii")
        except UnicodeError:
            raise ValueError(_idna_problem(label)) from None
    label = label.lower()
    problem = _ascii_label_problem(label)
    if problem:
        raise ValueError(problem)
    if label.startswith("xn--"):
        try:
            idna.ToUnicode(label)
        except UnicodeError:
            raise ValueError(f"label {_quote(label)} is not valid punycode") from None
    return label


def _idna_problem(label: str) -> str:
    """Why the IDNA codec refused a Unicode label, in words (the codec only says "label empty or too long")."""
    try:
        prepared = idna.nameprep(label)
    except UnicodeError as exc:
        return f"label {_quote(label)} cannot be converted to IDNA: {exc}"
    if not prepared:
        return f"label {_quote(label)} is empty once converted to IDNA"
    encoded = "xn--" + prepared.encode("punycode").decode("ascii")
    if len(encoded) > MAX_LABEL_LENGTH:
        return f"label {_quote(label)} is {len(encoded)} characters long in IDNA (the limit is {MAX_LABEL_LENGTH})"
    return f"label {_quote(label)} cannot be converted to IDNA"


def _ascii_label_problem(label: str) -> str | None:
    if len(label) > MAX_LABEL_LENGTH:
        return f"label {_quote(label)} is {len(label)} characters long (the limit is {MAX_LABEL_LENGTH})"
    if not label:
        return "it has an empty label"
    if _LDH.fullmatch(label) is None:
        bad = next(c for c in label if not (c.isascii() and (c.isalnum() or c == "-")))
        if bad == " ":
            return f"label {_quote(label)} contains a space"
        shown = f'"{bad}"' if bad.isprintable() else f"the control character {bad!r}"
        return f"label {_quote(label)} contains {shown} (only letters, digits and hyphens are allowed)"
    if label.startswith("-"):
        return f"label {_quote(label)} starts with a hyphen"
    if label.endswith("-"):
        return f"label {_quote(label)} ends with a hyphen"
    return None


def _label_to_unicode(label: str) -> str:
    if not label.startswith("xn--"):
        return label
    try:
        return idna.ToUnicode(label)
    except UnicodeError:
        return label


def _quote(text: str) -> str:
    """Text in double quotes for a message; control characters made visible rather than printed raw."""
    return f'"{text}"' if text.isprintable() else repr(text)


def parse_ip(text: str) -> IPAddress | None:
    """The address `text` is, or None for anything else (a name); the route and destination rules share it."""
    if ":" not in text and not text.replace(".", "").isdigit():
        return None  # neither IPv6 nor dotted digits: a name, no need to ask ipaddress
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Destination hosts


def parse_hosts(text: str) -> list[HostSpec] | Special:
    """Parse a comma-separated destination list: `host[:port][/pri=N][/weight=N], ...`, or `USEDNS` or `/dev/null`
    alone.

    Host forms: `mx.example.com`, `mx.example.com:2525/pri=10`, `mx.example.com/pri=10/weight=3` (the options in
    any order), `[mx.example.com]` (A/AAAA only),
    `10.0.0.9:2525`, `2001:db8::1/pri=5` (bare IPv6, port 25), `[2001:db8::1]:2525`. Syntax only: every entry
    is checked and all the problems are raised together in one HostListError; the route-level rules
    (duplicates, the 100-host limit, USEDNS on ALL) are `validate_route`'s.
    """
    items = [item.strip() for item in text.split(",")]
    if items == [""]:
        raise HostListError(["no destination hosts given"])
    specials = [special for item in items if (special := _special(item)) is not None]
    if specials:
        if len(items) == 1:
            return specials[0]
        names = " and ".join(dict.fromkeys(special.value for special in specials))
        raise HostListError([f"{names} must be the only destination of a route, not one of several"])
    hosts: list[HostSpec] = []
    errors: list[str] = []
    for position, item in enumerate(items, start=1):
        if not item:
            errors.append(f"entry {position} of the list is empty (two commas in a row?)")
            continue
        try:
            hosts.append(parse_host(item))
        except HostListError as exc:
            errors.extend(exc.errors)
    if errors:
        raise HostListError(errors)
    return hosts


def parse_host(text: str) -> HostSpec:
    """Parse one `host[:port][/pri=N][/weight=N]` entry (see `parse_hosts`); raises HostListError naming the entry."""
    item = text.strip()
    try:
        return _parse_host(item)
    except ValueError as exc:
        raise HostListError([f"{_quote(item)}: {exc}"]) from None


def _parse_host(item: str) -> HostSpec:
    if not item:
        raise ValueError("no host given")
    if _special(item) is not None:
        raise ValueError("USEDNS and /dev/null must be the whole destination list, not one host of several")
    address, *options = item.split("/")
    priority, weight = _host_options(options)
    address = address.strip()
    bracketed = address.startswith("[")
    port_text: str | None = None
    if bracketed:
        host, closing, after = address[1:].partition("]")
        if not closing:
            raise ValueError('"[" without a closing "]"')
        if after:
            if not after.startswith(":"):
                raise ValueError(f'unexpected "{after}" after "]" (expected ":port")')
            port_text = after[1:]
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    else:
        host = address  # a name, an IPv4 address, or a bare IPv6 address whose colons are its own
    host = host.strip()
    port = DEFAULT_PORT if port_text is None else _number(port_text.strip(), "port", 1, MAX_PORT)
    if not host:
        raise ValueError("no host given")
    ip = parse_ip(host)
    if ip is not None:
        return HostSpec(host=_check_ip(ip), port=port, priority=priority, a_only=False, weight=weight)
    if ":" in host:
        raise ValueError(f'"{host}" is not a valid IPv6 address')
    return HostSpec(host=_host_name(host), port=port, priority=priority, a_only=bracketed, weight=weight)


def _host_options(options: Sequence[str]) -> tuple[int, int]:
    """The (priority, weight) of a host's `/pri=N` and `/weight=N` options, each at most once, in any order."""
    found: dict[str, int] = {}
    for option in options:
        match = _HOST_OPTION.fullmatch(option.strip())
        if match is None:
            raise ValueError(f'unknown option "/{option}" (the options are /pri=N and /weight=N)')
        name = match["name"].lower()
        if name in found:
            raise ValueError(f"/{name}= is given twice")
        value = match["value"].strip()
        if name == "pri":
            found[name] = _number(value, "priority", 0, MAX_PRIORITY)
        else:
            found[name] = _number(value, "weight", 1, MAX_WEIGHT)
    return found.get("pri", 0), found.get("weight", DEFAULT_WEIGHT)


def _special(item: str) -> Special | None:
    if item.upper() == "USEDNS":
        return Special.USEDNS
    if item == "/dev/null":
        return Special.DEVNULL
    return None


def _number(text: str, what: str, low: int, high: int) -> int:
    if not text:
        raise ValueError(f"{what} is missing")
    if text[:1] in "-+" and text[1:].isascii() and text[1:].isdigit():
        raise ValueError(f"{what} must be from {low} to {high}")  # a signed whole number: out of range
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f'{what} "{text}" is not a whole number')
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what} must be from {low} to {high}")
    return value


def _check_ip(ip: IPAddress) -> str:
    """The canonical text of a destination IP; rejects addresses that can never be an SMTP server."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise ValueError("an IPv6 zone index (%...) is not allowed")
    if ip.is_unspecified:
        raise ValueError(f"{ip} is the unspecified address, not a host")
    if ip.is_multicast:
        raise ValueError(f"{ip} is a multicast address")
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{ip} is the broadcast address")
    return ip.compressed


def _host_name(host: str) -> str:
    try:
        return to_ascii_name(host)
    except ValueError as exc:
        if host.replace(".", "").isdigit():
            raise ValueError("neither a valid IPv4 address nor a host name") from None
        raise ValueError(f"not a valid host name: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# Route rules


@dataclass
class RouteProblems:
    """Every reason a route cannot be saved, sorted by where a form shows it.

    `domain`: the receiving domain's; `hosts`: by index into the host list (a duplicate is reported at its second
    occurrence); `route`: the route as a whole (no hosts, too many, USEDNS on ALL).
    """

    domain: list[str]
    hosts: dict[int, list[str]]
    route: list[str]

    def all(self) -> list[str]:
        """The flat list, in the order a person reads them: domain, route, then host by host."""
        return self.domain + self.route + [message for index in sorted(self.hosts) for message in self.hosts[index]]

    def __bool__(self) -> bool:
        return bool(self.domain or self.route or any(self.hosts.values()))


def validate_route(domain: str, hosts: Destination) -> list[str]:
    """Every reason the route `domain → hosts` cannot be saved; empty when it can.

    The one place the route rules live, for hosts parsed from text and for hosts built field by field (the
    admin, a form row editor): the domain is valid; USEDNS is not the default route's destination (with no
    route, mail already goes by MX); a route has 1 to 100 hosts; each host is well formed with port,
    priority and weight in range; a host appears once, with one port (the ESA's own wording for the latter).
    `route_problems` gives the same messages sorted by field, for forms.
    """
    return route_problems(domain, hosts).all()


def route_problems(domain: str, hosts: Destination) -> RouteProblems:
    """`validate_route`'s checks, with each message attached to the domain, a host (by index) or the route."""
    problems = RouteProblems(domain=[], hosts={}, route=[])
    try:
        domain = normalize_receiving_domain(domain)
    except DomainError as exc:
        problems.domain.append(str(exc))
    if isinstance(hosts, Special):
        if hosts is Special.USEDNS and domain == DEFAULT_ROUTE:
            problems.route.append(
                "USEDNS cannot be the destination of the default route (ALL): "
                "mail for domains without a route is already delivered by MX records"
            )
        return problems
    if not hosts:
        problems.route.append("a route needs at least one destination host")
    if len(hosts) > MAX_HOSTS_PER_ROUTE:
        problems.route.append(
            f"a route may not contain more than {MAX_HOSTS_PER_ROUTE} destination hosts (this one has {len(hosts)})"
        )
    first_seen: dict[str, HostSpec] = {}
    for index, spec in enumerate(hosts):
        errors = _host_problems(spec)
        earlier = first_seen.setdefault(spec.host, spec)
        if earlier is not spec:
            if earlier.port == spec.port:
                errors.append(f'"{spec.host}:{spec.port}" is listed more than once')
            elif earlier.port == DEFAULT_PORT:
                errors.append(f"The host {spec.host} is already using the standard port. {ONE_PORT_PER_HOST}")
            else:
                errors.append(
                    f"The host {spec.host} already has an alternate port ({earlier.port}). {ONE_PORT_PER_HOST}"
                )
        if errors:
            problems.hosts[index] = errors
    return problems


def parse_fallback_relay(text: str) -> HostSpec | None:
    """A route's fallback relay as typed: `HOST[:PORT]` (a name, an IPv4 or IPv6 address, `[name]`), None when
    empty. It is connected to by its A/AAAA records, never looked up by MX, so the brackets of `[name]` are
    dropped. Raises ValueError saying why the text is not one relay."""
    text = text.strip()
    if not text:
        return None
    if "," in text:
        raise ValueError("give one fallback relay (HOST[:PORT]), not a list")
    if _special(text) is not None:
        raise ValueError(f"{text} is not a host: give the host name or IP address of the fallback relay")
    try:
        spec = _parse_host(text)
    except ValueError as exc:
        raise ValueError(f"{_quote(text)}: {exc}") from None
    if spec.priority:
        raise ValueError(f"{_quote(text)}: a fallback relay has no priority: write HOST[:PORT]")
    spec = HostSpec(host=spec.host, port=spec.port)
    problems = _host_problems(spec)
    if problems:
        raise ValueError(problems[0])
    return spec


def fallback_relay_text(text: str) -> str:
    """The stored form of a fallback relay (`relay.example.net:2525`, `[2001:db8::1]:2525`, "" for none)."""
    spec = parse_fallback_relay(text)
    return spec.format() if spec is not None else ""


def parse_port(text: str) -> int:
    """A port typed in its own field (a form's Port column): 1-65535, empty means 25; ValueError says why."""
    text = text.strip()
    return DEFAULT_PORT if not text else _number(text, "port", 1, MAX_PORT)


def parse_priority(text: str) -> int:
    """A priority typed in its own field: 0-65535, empty means 0; ValueError says why."""
    text = text.strip()
    return 0 if not text else _number(text, "priority", 0, MAX_PRIORITY)


def parse_weight(text: str) -> int:
    """A weight typed in its own field: 1-100, empty means 1; ValueError says why."""
    text = text.strip()
    return DEFAULT_WEIGHT if not text else _number(text, "weight", 1, MAX_WEIGHT)


def _host_problems(spec: HostSpec) -> list[str]:
    shown = f'"{spec.format()}"'
    problems: list[str] = []
    if _special(spec.host) is not None:
        problems.append(f"{shown}: USEDNS and /dev/null must be a route's only destination, not a host")
    else:
        ip = spec.ip
        try:
            canonical = _check_ip(ip) if ip is not None else _host_name(spec.host)
        except ValueError as exc:
            problems.append(f"{shown}: {exc}")
        else:
            if canonical != spec.host:
                problems.append(f'{shown}: write the host as "{canonical}"')
            if ip is not None and spec.a_only:
                problems.append(f"{shown}: brackets apply to host names only (an IP address is not looked up)")
    if not 1 <= spec.port <= MAX_PORT:
        problems.append(f"{shown}: port must be from 1 to {MAX_PORT}")
    if not 0 <= spec.priority <= MAX_PRIORITY:
        problems.append(f"{shown}: priority must be from 0 to {MAX_PRIORITY}")
    if not 1 <= spec.weight <= MAX_WEIGHT:
        problems.append(f"{shown}: weight must be from 1 to {MAX_WEIGHT}")
    return problems
