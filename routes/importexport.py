"""The routes text file: parse an upload into rows plus line-numbered errors, preview the change, export.

Pure: no Django, no files, no network; the views and the `smtproutes` command read and write the bytes. The
format is the ESA's (one route a line, blank lines and `#` lines ignored, the receiving domain then the
destination list in CLI syntax):

    # File exported by esaroutes at 20240102T101500
    example.com       mx1.example.com/pri=10, mx2.example.com:2525/pri=10/weight=3, [10.0.0.9]/pri=20
    .example.com      USEDNS
    drop.example.com  /dev/null
    ALL               smarthost.example.net:587

A route with a sender pattern (`routes.matching`) adds `sender=PATTERN` after its receiving domain, an extension
of the ESA's line; a file without one is a plain ESA file, and an export writes it only for sender routes:

    example.com       sender=app.example        mx1.example.com/pri=10
    example.com       sender=<>                 bounces.example.com

Mappings of routes (`ParseResult.routes`, `diff`, `format_table`) are keyed by `route_key`: the stored domain, then
` sender=PATTERN` for a sender route, which is how the line starts.

An import replaces the whole table and is all-or-nothing, so `parse` reports every problem of a bad file at once,
each as `line N: ...`, and the caller imports only when `errors` is empty. `/weight=N` (an esaroutes extension:
the host's share of its priority's connections) is written only when it is not 1, so a plain ESA file reads
back and writes out as it was. SMTP authentication profiles, bounce
profiles and TLS settings are not part of the file: credentials are never written to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from routes import domains, matching

MAX_FILE_BYTES = 5_000_000
MAX_LINE_CHARS = 20_000
_DOMAIN_COLUMN_MAX = 40  # one very long domain should not push every host list off the screen
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

FrozenDestination = tuple[domains.HostSpec, ...] | domains.Special  # a Row's: hashable, immutable
SENDER_OPTION = "sender="


def route_key(domain: str, sender: str = "") -> str:
    """A route's key in the file's mappings: `example.com`, or `example.com sender=app.example`."""
    return f"{domain} {SENDER_OPTION}{sender}" if sender else domain


def split_key(key: str) -> tuple[str, str]:
    """(stored domain, stored sender pattern or "") of a `route_key`."""
    domain, _, option = key.partition(" ")
    return domain, option.removeprefix(SENDER_OPTION)


@dataclass(frozen=True)
class Row:
    """One valid route read from the file; `line` is its 1-based line number, for messages."""

    line: int
    domain: str  # stored form
    destination: FrozenDestination
    sender: str = ""  # stored sender pattern, "" for none

    @property
    def key(self) -> str:
        return route_key(self.domain, self.sender)


@dataclass
class ParseResult:
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def routes(self) -> dict[str, FrozenDestination]:
        """The rows as {route key: destination}, the shape `diff` compares."""
        return {row.key: row.destination for row in self.rows}


@dataclass(frozen=True)
class Diff:
    """What an import does, or would do, to a table: the keys it adds, changes and removes, and how many stay.

    The route import's preview (`diff`) lists route keys in export order; the destination controls' import
    (`routes.services.destinations_import`) lists destinations in the file's order.
    """

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def parse_bytes(data: bytes, *, max_bytes: int = MAX_FILE_BYTES) -> ParseResult:
    """Parse an uploaded file: refuse oversized, binary or non-UTF-8 data with one clear error, else `parse`.

    A UTF-8 byte order mark (as Windows editors write) is accepted.
    """
    if len(data) > max_bytes:
        return ParseResult(
            errors=[f"the file is {len(data):,} bytes; the limit is {max_bytes:,} bytes (split it or remove comments)"]
        )
    nul = data.find(b"\x00")
    if nul != -1:
        return ParseResult(
            errors=[
                f"line {_line_at(data, nul)}: NUL byte at byte offset {nul}: "
                "this looks like a binary file, not a routes text file"
            ]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ParseResult(
            errors=[
                f"line {_line_at(data, exc.start)}: invalid UTF-8 at byte offset {exc.start}: "
                "save the file as UTF-8 text"
            ]
        )
    return parse(text)


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def parse(text: str) -> ParseResult:
    """Parse the routes file text into valid rows and every error, each prefixed `line N:`.

    Each route line goes through `domains.normalize_receiving_domain`, `domains.parse_hosts` and
    `domains.validate_route`, the same checks as the form and the CLI; a domain routed twice (`ALL` included)
    is an error naming the first line (a domain may have one route per sender pattern).
    """
    result = ParseResult()
    first_line: dict[str, int] = {}
    for number, raw in enumerate(_LINE_BREAK.split(text.removeprefix("\ufeff")), start=1):
        if len(raw) > MAX_LINE_CHARS:
            result.errors.append(
                f"line {number}: the line is {len(raw):,} characters long (the limit is {MAX_LINE_CHARS:,})"
            )
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        token, *rest = line.split(None, 1)
        hosts = rest[0] if rest else ""
        sender, sender_errors = "", []
        if hosts[: len(SENDER_OPTION)].lower() == SENDER_OPTION:
            option, *after = hosts.split(None, 1)
            hosts = after[0] if after else ""
            try:
                sender = matching.normalize_sender_pattern(option[len(SENDER_OPTION) :])
            except matching.SenderPatternError as exc:
                sender_errors.append(f"sender: {exc}")
            else:
                if not sender:
                    sender_errors.append("sender= needs a pattern: leave the option out for every sender")
        domain, destination, errors = _parse_route(token, hosts)
        errors = sender_errors + errors
        if domain is not None and not sender_errors:
            earlier = first_line.setdefault(route_key(domain, sender), number)
            shown = f" for the sender {sender}" if sender else ""
            if earlier != number and domain == domains.DEFAULT_ROUTE:
                errors.append(f"there is already a default route (ALL){shown} on line {earlier}")
            elif earlier != number:
                errors.append(f'"{token}" is already routed{shown} on line {earlier}')
        if errors or domain is None or destination is None:
            result.errors += [f"line {number}: {message}" for message in errors]
        else:
            result.rows.append(Row(line=number, domain=domain, destination=destination, sender=sender))
    return result


def _parse_route(token: str, hosts: str) -> tuple[str | None, FrozenDestination | None, list[str]]:
    """One route line's stored domain and destination (None where unreadable) and all its problems."""
    errors: list[str] = []
    domain: str | None = None
    destination: FrozenDestination | None = None
    try:
        domain = domains.normalize_receiving_domain(token)
    except domains.DomainError as exc:
        errors.append(str(exc))
    if not hosts:
        errors.append(f'"{token}" has no destination hosts')
    else:
        try:
            parsed = domains.parse_hosts(hosts)
        except domains.HostListError as exc:
            errors += exc.errors
        else:
            destination = parsed if isinstance(parsed, domains.Special) else tuple(parsed)
    if domain is not None and destination is not None:
        errors += domains.validate_route(domain, destination)
    return domain, destination, errors


def canonical(destination: domains.Destination) -> str:
    """The destination list as written in the file; equal texts mean equal routes (host order included)."""
    if isinstance(destination, domains.Special):
        return destination.value
    return ", ".join(host.format() for host in destination)


def export_order(key: str) -> tuple[bool, tuple[str, ...], bool, str]:
    """Sort key of a `route_key`: by the domain's labels read from the right, so a domain's routes sit together
    (`example.com`, `.example.com`, `a.example.com`, then `example.net`), `ALL` last; a domain's route without a
    sender pattern before its sender routes."""
    domain, sender = split_key(key)
    partial = domain.startswith(".")
    labels = tuple(reversed(domain.removeprefix(".").split(".")))
    return domain == domains.DEFAULT_ROUTE, labels, partial, sender


def diff(current: Mapping[str, domains.Destination], incoming: Mapping[str, domains.Destination]) -> Diff:
    """The import preview: which routes the file adds, changes (another destination list) or removes.

    Both sides are keyed by `route_key`; destinations are compared by their canonical text, so hosts
    listed in another order count as a change (the order decides which equal-priority host is tried first).
    """
    added = [domain for domain in incoming if domain not in current]
    removed = [domain for domain in current if domain not in incoming]
    changed = [
        domain for domain in incoming if domain in current and canonical(incoming[domain]) != canonical(current[domain])
    ]
    unchanged = len(incoming) - len(added) - len(changed)
    return Diff(
        added=tuple(sorted(added, key=export_order)),
        changed=tuple(sorted(changed, key=export_order)),
        removed=tuple(sorted(removed, key=export_order)),
        unchanged=unchanged,
    )


def format_table(rows: Iterable[tuple[str, domains.Destination]], *, now: datetime) -> str:
    """The export file for (route key, destination) pairs: a header, then one aligned line per route.

    Routes are in `export_order` (`ALL` last); domains and host names stay in their ASCII (IDNA) form so the
    file survives any editor. `parse(format_table(rows))` gives the same routes back.
    """
    ordered = sorted(rows, key=lambda row: export_order(row[0]))
    seen: set[str] = set()
    for domain, _ in ordered:
        if domain in seen:
            raise ValueError(f"the receiving domain {domain} appears twice")
        seen.add(domain)
    split = [(*split_key(key), destination) for key, destination in ordered]
    width = min(max((len(domain) for domain, _, _ in split), default=0), _DOMAIN_COLUMN_MAX)
    option = min(max((len(SENDER_OPTION + s) for _, s, _ in split if s), default=0), _DOMAIN_COLUMN_MAX)
    lines = [
        f"# File exported by esaroutes at {now:%Y%m%dT%H%M%S}",
        "# receiving-domain   destination-hosts (comma separated, host[:port][/pri=N][/weight=N])",
        "# SMTP authentication profiles, bounce profiles and TLS settings are not part of this file.",
    ]
    if option:
        lines.append("# sender=PATTERN after the domain: the route applies to mail from that envelope sender only.")
    for domain, sender, destination in split:
        column = f"{(SENDER_OPTION + sender).ljust(option)}  " if sender else " " * (option + 2) if option else ""
        lines.append(f"{domain.ljust(width)}  {column}{canonical(destination)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Differences a person reads (the import preview, the audit log)


@dataclass(frozen=True)
class HostChange:
    """One host of a route, before and after: `kind` is added, removed or changed (port, priority, weight, [])."""

    kind: str
    host: str  # as people read it: Unicode, `[name]` for A/AAAA only
    before: str  # `host:port/pri=N`, "" when added
    after: str  # "" when removed


def host_text(spec: domains.HostSpec) -> str:
    """`mx.bücher.example:25/pri=0`, `[relay.example.net]:2525/pri=10`, `[2001:db8::1]:25/pri=0`: every part shown,
    but the weight only when it is not 1 (`mx.example.com:25/pri=10/weight=3`)."""
    text = f"{_host_name(spec)}:{spec.port}/pri={spec.priority}"
    return text if spec.weight == domains.DEFAULT_WEIGHT else f"{text}/weight={spec.weight}"


def _host_name(spec: domains.HostSpec) -> str:
    ip = spec.ip
    if ip is not None:
        return f"[{spec.host}]" if ip.version == 6 else spec.host
    name = domains.display_domain(spec.host)
    return f"[{name}]" if spec.a_only else name


def destination_changes(before: domains.Destination | None, after: domains.Destination | None) -> list[HostChange]:
    """Host by host, what turns `before` into `after` (None: the route does not exist on that side).

    A route lists each host once (`domains.route_problems`), so hosts are matched by name or address; a special
    destination (USEDNS, /dev/null) counts as one host of its own. Empty when only the order of the hosts differs.
    """
    old = _by_host(before)
    new = _by_host(after)
    changes: list[HostChange] = []
    for key, (label, text) in new.items():
        if key not in old:
            changes.append(HostChange("added", label, "", text))
        elif old[key][1] != text:
            changes.append(HostChange("changed", label, old[key][1], text))
    changes += [HostChange("removed", label, text, "") for key, (label, text) in old.items() if key not in new]
    return changes


def _by_host(destination: domains.Destination | None) -> dict[str, tuple[str, str]]:
    if destination is None:
        return {}
    if isinstance(destination, domains.Special):
        return {destination.value: (destination.value, destination.value)}
    return {spec.host: (_host_name(spec), host_text(spec)) for spec in destination}


def default_route_warning(current: domains.Destination | None, incoming: domains.Destination | None) -> str:
    """In words, what an import does to the default route (`ALL`), or "" when it leaves it as it is."""
    if incoming is None:
        if current is None:
            return ""
        return "The file removes the ALL route: mail for domains without a route will be delivered by their MX records."
    if current is not None and canonical(current) == canonical(incoming):
        return ""
    verb = "adds" if current is None else "changes"
    if isinstance(incoming, domains.Special):
        where = "be accepted and dropped (/dev/null)" if incoming is domains.Special.DEVNULL else "go by MX records"
    else:
        where = "go to " + ", ".join(host_text(spec) for spec in incoming)
    return f"The file {verb} the ALL route: all mail for domains without a route will {where}."
