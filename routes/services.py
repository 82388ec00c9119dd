"""Every write to the route table: validated by `routes.domains`, audited, and seen by the delivery side.

Each public function runs in one transaction that does the change, writes its `AuditEntry` (who, when, before
and after) and bumps `RouteTableVersion`, so a worker's cached table (`routes.snapshot`) is replaced within
`ESAROUTES_ROUTE_REFRESH` seconds, and nothing is ever changed without its audit row. Views, the admin, the
`smtproutes` command and the importer call these functions and nothing else to write routes.

Actors (`routes.audit.Actor`): a `User` (the web UI, the admin) or a string such as `"cli:alice"` (the CLI).

Destination controls (`DestinationControl`, the ESA's `destconfig`) are written here too, by the same rules:
validated by `routes.destinations`, audited, and bumping the route table version, since the workers read them
with the routes (`RouteTable.destinations`).

Outgoing SMTP AUTH profiles, which routes use, are written by `routes.auth_profiles`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from django.db import connection, transaction
from django.db.models import F, Prefetch, Q
from django.utils import timezone

from esaroutes import bulk
from esaroutes.unique import taken_meanwhile
from routes import audit, destinations, domains, importexport, matching, sources
from routes.models import (
    AuditEntry,
    DefaultDestinationProtected,
    DestinationControl,
    DestinationHost,
    Route,
    RouteTableVersion,
    destination_problems,
)

ImportMode = Literal["replace", "merge"]
_CHUNK = 500  # ids or domains per IN (...) clause: far below SQLite's variable limit


class RouteInvalid(ValueError):
    """The route cannot be saved; `problems` says why, field by field (see `domains.RouteProblems`)."""

    def __init__(self, problems: domains.RouteProblems) -> None:
        self.problems = problems
        super().__init__("; ".join(problems.all()))


class RouteNotFound(LookupError):
    pass


@dataclass(frozen=True)
class RouteData:
    """What a route is, as the services take it. `domain` and `sender` may be typed (any case, Unicode): they are
    normalised. `sender` is the route's envelope sender pattern ("" for every sender, `routes.matching`)."""

    domain: str
    destination: domains.Destination
    auth_profile_id: int | None = None
    bounce_profile_id: int | None = None
    tls: str = Route.TLS.OPPORTUNISTIC
    defer_on_4xx: bool = False
    fallback_relay: str = ""  # HOST[:PORT] as typed, "" for none: stored normalised (`domains.fallback_relay_text`)
    sender: str = ""
    source_address: str = ""  # an address of this machine its connections come from, "" for the global setting
    ehlo_name: str = ""  # the EHLO name its connections say, "" for the global setting

    @classmethod
    def of(cls, route: Route) -> RouteData:
        """An existing route's data (its hosts prefetched or not), to change a few fields with `dataclasses.replace`."""
        columns = {f.name: getattr(route, f.name) for f in dataclasses.fields(cls) if f.name != "destination"}
        return cls(destination=route_destination(route), **columns)


@dataclass(frozen=True)
class ImportSummary:
    mode: ImportMode
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int
    version: int = 0
    hosts: Mapping[str, list[importexport.HostChange]] = field(default_factory=dict)  # the preview's, per route
    default_warning: str = ""  # the preview's: what the file does to the ALL route, in words

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


# ---------------------------------------------------------------------------------------------------------------
# Routes


def route_create(*, data: RouteData, actor: audit.Actor) -> Route:
    domain, sender = _validated(data)
    with transaction.atomic():
        if domain_in_use(domain, sender=sender):
            raise RouteInvalid(_exists(domain, sender))
        with taken_meanwhile(lambda: RouteInvalid(_exists(domain, sender))):
            route = Route.objects.create(
                domain=domain,
                sender=sender,
                special=_special_code(data.destination),
                auth_profile_id=data.auth_profile_id,
                bounce_profile_id=data.bounce_profile_id,
                tls=data.tls,
                defer_on_4xx=data.defer_on_4xx,
                fallback_relay=_fallback_relay(data),
                source_address=sources.normalize_source_address(data.source_address),
                ehlo_name=sources.normalize_ehlo_name(data.ehlo_name),
            )
        _write_hosts(route.pk, data.destination)
        after = route_state(route)
        audit.record_audit(actor, AuditEntry.Action.CREATE, "route", str(route), after=after)
        bump_version()
    return route


def route_update(*, route_id: int, data: RouteData, actor: audit.Actor) -> Route:
    """Replace a route's domain (renaming is allowed), destination and settings."""
    domain, sender = _validated(data)
    with transaction.atomic():
        route = _locked_route(route_id)
        before = route_state(route)
        if domain_in_use(domain, route_id=route.pk, sender=sender):
            raise RouteInvalid(_exists(domain, sender))
        route.domain = domain
        route.sender = sender
        route.special = _special_code(data.destination)
        route.auth_profile_id = data.auth_profile_id
        route.bounce_profile_id = data.bounce_profile_id
        route.tls = data.tls
        route.defer_on_4xx = data.defer_on_4xx
        route.fallback_relay = _fallback_relay(data)
        route.source_address = sources.normalize_source_address(data.source_address)  # _validated has checked
        route.ehlo_name = sources.normalize_ehlo_name(data.ehlo_name)
        with taken_meanwhile(lambda: RouteInvalid(_exists(domain, sender))):
            route.save()
        DestinationHost.objects.filter(route_id=route.pk).delete()
        _write_hosts(route.pk, data.destination)
        route = _locked_route(route_id)  # the hosts as written, not the prefetched ones
        after = route_state(route)
        if after != before:
            audit.record_audit(actor, AuditEntry.Action.UPDATE, "route", str(route), before=before, after=after)
            bump_version()
    return route


def routes_delete(*, route_ids: Iterable[int], actor: audit.Actor) -> list[str]:
    """Delete routes by id, one audit entry each; returns the deleted domains. Unknown ids are ignored."""
    ids = sorted(set(route_ids))
    deleted: list[str] = []
    with transaction.atomic():
        for chunk in _chunks(ids):
            routes = list(Route.objects.filter(pk__in=chunk).select_related("auth_profile", "bounce_profile"))
            _prefetch_hosts(routes)
            for route in routes:
                audit.record_audit(actor, AuditEntry.Action.DELETE, "route", str(route), before=route_state(route))
                deleted.append(str(route))
            Route.objects.filter(pk__in=[route.pk for route in routes]).delete()
        if deleted:
            bump_version()
    return deleted


def routes_clear(*, actor: audit.Actor) -> int:
    """Delete every route (the ESA's CLEAR), audited as one entry listing what was there."""
    with transaction.atomic():
        before = table_text()
        count = Route.objects.count()
        DestinationHost.objects.all().delete()
        Route.objects.all().delete()
        audit.record_audit(actor, AuditEntry.Action.CLEAR, "route table", f"{count} routes", before=before, after={})
        bump_version()
    return count


def routes_import(
    *, incoming: Mapping[str, importexport.FrozenDestination], mode: ImportMode, actor: audit.Actor
) -> ImportSummary:
    """Apply a parsed routes file (`importexport.ParseResult.routes()`), all or nothing, as one audit entry.

    `replace` (the ESA's behaviour) makes the table exactly the file; `merge` adds and changes routes but removes
    none. Changed routes keep their row, so their auth profile, bounce profile and TLS settings survive (the file
    does not carry them); added routes get the defaults. The entries are re-validated here, so a caller cannot
    skip the checks.
    """
    problems = [
        f"{key}: {message}" for key, destination in incoming.items() for message in _key_problems(key, destination)
    ]
    if problems:
        raise ValueError("; ".join(problems[:20]))
    with transaction.atomic():
        RouteTableVersion.objects.select_for_update().filter(pk=1).first()  # one import at a time (PostgreSQL)
        current = current_destinations()
        plan = importexport.diff(current, incoming)
        removed = plan.removed if mode == "replace" else ()
        for chunk in _chunks(list(removed)):
            Route.objects.filter(_keys_filter(chunk)).delete()
        ids: dict[str, int] = {}
        for chunk in _chunks(list(plan.changed)):
            ids.update(_key_ids(chunk))
        for chunk in _chunks(list(ids.values())):
            DestinationHost.objects.filter(route_id__in=chunk).delete()
        for key, pk in ids.items():
            Route.objects.filter(pk=pk).update(special=_special_code(incoming[key]), updated_at=timezone.now())
        _insert_routes([(*importexport.split_key(key), _special_code(incoming[key])) for key in plan.added])
        if len(plan.added) > 5 * _CHUNK:  # one pass over the table beats many IN (...) queries
            added = set(plan.added)
            rows = Route.objects.values_list("domain", "sender", "pk").iterator()
            ids.update((k, pk) for d, sd, pk in rows if (k := importexport.route_key(d, sd)) in added)
        else:
            for chunk in _chunks(list(plan.added)):
                ids.update(_key_ids(chunk))
        _insert_hosts(
            [
                (pk, h.host, h.a_only, h.port, h.priority, h.weight, position)
                for domain, pk in ids.items()
                if not isinstance(incoming[domain], domains.Special)
                for position, h in enumerate(incoming[domain])  # type: ignore[arg-type]
            ]
        )
        before = {domain: importexport.canonical(current[domain]) for domain in (*plan.changed, *removed)}
        after = {domain: importexport.canonical(incoming[domain]) for domain in (*plan.added, *plan.changed)}
        summary = ImportSummary(
            mode=mode, added=plan.added, changed=plan.changed, removed=removed, unchanged=plan.unchanged
        )
        if len(plan.added) + len(removed) > 1000:
            transaction.on_commit(_analyze)  # fresh planner statistics at once, not at autovacuum's next pass
        note = f"{mode}: {len(plan.added)} added, {len(plan.changed)} changed, {len(removed)} removed"
        if not summary.is_empty:
            audit.record_audit(actor, AuditEntry.Action.IMPORT, "route table", note, before=before, after=after)
            version = bump_version()
            summary = ImportSummary(
                mode=mode,
                added=plan.added,
                changed=plan.changed,
                removed=removed,
                unchanged=plan.unchanged,
                version=version,
            )
    return summary


PREVIEW_ROUTES = 500  # routes of each kind the import preview details host by host


def import_preview(incoming: Mapping[str, importexport.FrozenDestination], mode: ImportMode) -> ImportSummary:
    """What `routes_import` would do now, without doing it: the routes, each one's hosts before and after, and
    a warning in words when the default route (`ALL`) is added, changed or removed."""
    current = current_destinations()
    plan = importexport.diff(current, incoming)
    removed = plan.removed if mode == "replace" else ()
    shown = [*plan.added[:PREVIEW_ROUTES], *plan.changed[:PREVIEW_ROUTES], *removed[:PREVIEW_ROUTES]]
    all_route = domains.DEFAULT_ROUTE
    kept = None if mode == "replace" else current.get(all_route)  # merge never removes a route
    return ImportSummary(
        mode=mode,
        added=plan.added,
        changed=plan.changed,
        removed=removed,
        unchanged=plan.unchanged,
        hosts={d: importexport.destination_changes(current.get(d), incoming.get(d)) for d in shown},
        default_warning=importexport.default_route_warning(current.get(all_route), incoming.get(all_route, kept)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Destination controls


class DestinationInvalid(ValueError):
    """The destination control entry cannot be saved; `problems` says why, by field name (the model's)."""

    def __init__(self, problems: Mapping[str, list[str]]) -> None:
        self.problems = dict(problems)
        super().__init__(" ".join(m for messages in self.problems.values() for m in messages))


class DestinationNotFound(LookupError):
    pass


@dataclass(frozen=True)
class DestinationData:
    """A destination control entry as the services take it; `destination` may be typed (it is normalised)."""

    destination: str
    max_connections: int | None = destinations.DEFAULT_MAX_CONNECTIONS
    max_messages_per_connection: int | None = destinations.DEFAULT_MAX_MESSAGES_PER_CONNECTION
    recipient_limit: int | None = None
    recipient_minutes: int | None = None
    limit_scope: str = destinations.SCOPE_DOMAIN
    ip_preference: str = destinations.DEFAULT_IP_PREFERENCE
    tls: str = destinations.DEFAULT_TLS
    bounce_profile_id: int | None = None

    @classmethod
    def of(cls, control: DestinationControl) -> DestinationData:
        """An existing entry's data, to change a few fields with `dataclasses.replace`."""
        return cls(**{name: getattr(control, name) for name in _DESTINATION_FIELDS})


_DESTINATION_FIELDS = destinations.COLUMNS


def check_destination(data: DestinationData, *, destination_id: int | None = None, against_table: bool = True) -> str:
    """The stored destination of valid data; DestinationInvalid with every problem at its field otherwise.

    The one check the page's form, the admin, the command and the importer go through (the model's `clean()`
    runs the same rules). `against_table=False` skips the checks against the rows in the database (the import,
    which replaces them).
    """
    problems: dict[str, list[str]] = {}
    stored = ""
    try:
        stored = destinations.normalize_destination(data.destination)
    except destinations.DestinationError as exc:
        problems["destination"] = [str(exc)]
    else:
        if against_table:
            problems.update(destination_problems(stored, destination_id))
    problems.update(destinations.entry_limits_problems(data))  # never about the destination
    if problems:
        raise DestinationInvalid(problems)
    return stored


def create_destination(*, data: DestinationData, actor: audit.Actor) -> DestinationControl:
    with transaction.atomic():
        stored = check_destination(data)
        with taken_meanwhile(lambda: DestinationInvalid(destination_problems(stored, None) or _taken(stored))):
            control = DestinationControl.objects.create(**_destination_values(data, stored))
        control = _locked_destination(control.pk)
        audit.record_audit(
            actor, AuditEntry.Action.CREATE, DESTINATION_OBJECT, stored, after=destination_state(control)
        )
        bump_version()
    return control


def update_destination(*, destination_id: int, data: DestinationData, actor: audit.Actor) -> DestinationControl:
    """Replace an entry's destination (renaming is allowed, except for the Default) and limits."""
    with transaction.atomic():
        control = _locked_destination(destination_id)
        before = destination_state(control)
        stored = check_destination(data, destination_id=control.pk)
        for name, value in _destination_values(data, stored).items():
            setattr(control, name, value)
        with taken_meanwhile(lambda: DestinationInvalid(destination_problems(stored, control.pk) or _taken(stored))):
            control.save()
        control = _locked_destination(destination_id)
        after = destination_state(control)
        if after != before:
            audit.record_audit(actor, AuditEntry.Action.UPDATE, DESTINATION_OBJECT, stored, before=before, after=after)
            bump_version()
    return control


def delete_destination(*, destination_id: int, actor: audit.Actor) -> str:
    """Delete an entry (never the Default: DefaultDestinationProtected); returns its stored destination."""
    with transaction.atomic():
        control = _locked_destination(destination_id)
        if control.is_default:
            raise DefaultDestinationProtected(destinations.DEFAULT_PROTECTED)
        before = destination_state(control)
        control.delete()
        audit.record_audit(actor, AuditEntry.Action.DELETE, DESTINATION_OBJECT, before["destination"], before=before)
        bump_version()
    return str(before["destination"])


def default_destination() -> DestinationControl:
    """The Default entry, created with the model's defaults if it is somehow missing."""
    control, _ = DestinationControl.objects.get_or_create(destination=DestinationControl.DEFAULT)
    return control


def destinations_import(*, entries: Sequence[DestinationData], actor: audit.Actor) -> importexport.Diff:
    """Make the destination controls exactly `entries` (the ESA's import), all or nothing, as one audit entry.

    Entries are re-validated; a destination listed twice is refused. The Default entry is never removed: a
    file without it leaves it as it is.
    """
    problems: list[str] = []
    incoming: dict[str, DestinationData] = {}
    for data in entries:
        try:
            stored = check_destination(data, against_table=False)
        except DestinationInvalid as exc:
            problems += [f"{data.destination}: {m}" for ms in exc.problems.values() for m in ms]
            continue
        if stored in incoming:
            problems.append(f"{data.destination}: listed twice in the file")
        incoming[stored] = dataclasses.replace(data, destination=stored)
    if problems:
        raise ValueError("; ".join(problems[:20]))
    with transaction.atomic():
        RouteTableVersion.objects.select_for_update().filter(pk=1).first()  # one import at a time (PostgreSQL)
        current = {c.destination: c for c in DestinationControl.objects.select_related("bounce_profile")}
        before_all = {key: destination_state(c) for key, c in current.items()}
        removed = tuple(k for k in current if k not in incoming and k != DestinationControl.DEFAULT)
        DestinationControl.objects.filter(destination__in=removed).delete()
        added: list[str] = []
        changed: list[str] = []
        for stored, data in incoming.items():
            values = _destination_values(data, stored)
            control = current.get(stored)
            if control is None:
                DestinationControl.objects.create(**values)
                added.append(stored)
            elif any(getattr(control, name) != value for name, value in values.items()):
                DestinationControl.objects.filter(pk=control.pk).update(**values, updated_at=timezone.now())
                changed.append(stored)
        summary = importexport.Diff(
            added=tuple(added),
            changed=tuple(changed),
            removed=removed,
            unchanged=len(incoming) - len(added) - len(changed),
        )
        if not summary.is_empty:
            after_all = {
                c.destination: destination_state(c)
                for c in DestinationControl.objects.select_related("bounce_profile").filter(
                    destination__in=[*added, *changed]
                )
            }
            before = {key: before_all[key] for key in (*changed, *removed)}
            note = f"{len(added)} added, {len(changed)} changed, {len(removed)} removed"
            audit.record_audit(
                actor, AuditEntry.Action.IMPORT, DESTINATION_TABLE_OBJECT, note, before=before, after=after_all
            )
            bump_version()
    return summary


def destinations_export_text() -> str:
    """The destination controls in the import/export file format (`routes.destinations.format_file`)."""
    from routes import snapshot  # snapshot reads models only; imported here to keep the import graph one-way

    names = dict(
        DestinationControl.objects.filter(bounce_profile__isnull=False).values_list(
            "bounce_profile_id", "bounce_profile__name"
        )
    )
    return destinations.format_file(snapshot.destination_table().entries(), names)


DESTINATION_OBJECT = "destination control"
DESTINATION_TABLE_OBJECT = "destination controls"


def destination_state(control: DestinationControl) -> dict[str, Any]:
    """The audit log's picture of a destination control entry (a bounce profile by name)."""
    state: dict[str, Any] = {
        name: getattr(control, name) for name in _DESTINATION_FIELDS if name != "bounce_profile_id"
    }
    state["bounce_profile"] = (
        control.bounce_profile.name if control.bounce_profile_id and control.bounce_profile else None
    )
    return state


def _destination_values(data: DestinationData, stored: str) -> dict[str, Any]:
    values = {name: getattr(data, name) for name in _DESTINATION_FIELDS}
    values["destination"] = stored
    return values


def _taken(stored: str) -> dict[str, list[str]]:
    return {"destination": [f"{destinations.display_destination(stored)} already has an entry: edit that one."]}


def _locked_destination(destination_id: int) -> DestinationControl:
    control = (
        DestinationControl.objects.select_for_update(of=("self",))
        .select_related("bounce_profile")
        .filter(pk=destination_id)
        .first()
    )
    if control is None:
        raise DestinationNotFound(f"destination control {destination_id} does not exist")
    return control


# ---------------------------------------------------------------------------------------------------------------
# Reading (for the services' own audit, the export and the import preview)


def route_destination(route: Route) -> domains.Destination:
    """A route's destination from its prefetched `hosts` (order of entry) or its special code."""
    special = domains.Special.from_code(route.special)
    if special is not None:
        return special
    return [
        domains.HostSpec(host=h.host, port=h.port, priority=h.priority, a_only=h.a_only, weight=h.weight)
        for h in sorted(route.hosts.all(), key=lambda h: (h.position, h.pk))
    ]


def route_state(route: Route) -> dict[str, Any]:
    """The audit log's picture of a route: JSON, no secrets (an auth profile by name)."""
    state = {
        "domain": route.domain,
        "destination": importexport.canonical(route_destination(route)),
        "auth_profile": route.auth_profile.name if route.auth_profile_id and route.auth_profile else None,
        "bounce_profile": route.bounce_profile.name if route.bounce_profile_id and route.bounce_profile else None,
        "tls": route.tls,
        "defer_on_4xx": route.defer_on_4xx,
        "fallback_relay": route.fallback_relay,
        "source_address": route.source_address,
        "ehlo_name": route.ehlo_name,
    }
    if route.sender:  # only sender routes carry it, so older entries and plain routes read the same
        state["sender"] = route.sender
    return state


def current_destinations() -> dict[str, domains.Destination]:
    """The whole table as {route key (`importexport.route_key`): destination}: two queries, whatever its size."""
    from routes import snapshot  # snapshot reads models only; imported here to keep the import graph one-way

    table: dict[str, domains.Destination] = {}
    for entry in snapshot.build_table(version=0).entries():
        special = domains.Special.from_code(entry.special)
        table[importexport.route_key(entry.domain, entry.sender)] = (
            special if special is not None else list(entry.hosts)
        )
    return table


def table_text() -> dict[str, str]:
    return {domain: importexport.canonical(dest) for domain, dest in current_destinations().items()}


def export_text(*, now: datetime | None = None) -> str:
    return importexport.format_table(current_destinations().items(), now=now or timezone.now())


def current_version() -> int:
    return RouteTableVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0


# ---------------------------------------------------------------------------------------------------------------
# Helpers


class SenderInvalid(RouteInvalid):
    """The route's sender pattern is not usable (`routes.matching.normalize_sender_pattern`); `message` says why."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(domains.RouteProblems(domain=[], hosts={}, route=[message]))


def _validated(data: RouteData) -> tuple[str, str]:
    """(stored domain, stored sender pattern); raises RouteInvalid (SenderInvalid for the sender) saying why."""
    try:
        sender = matching.normalize_sender_pattern(data.sender)
    except matching.SenderPatternError as exc:
        raise SenderInvalid(str(exc)) from None
    problems = domains.route_problems(data.domain, data.destination)
    problems.route += fallback_relay_problems(data.fallback_relay, data.destination)
    problems.route += source_problems(data.source_address, data.ehlo_name)
    if problems:
        raise RouteInvalid(problems)
    return domains.normalize_receiving_domain(data.domain), sender


def fallback_relay_problems(text: str, destination: domains.Destination) -> list[str]:
    """Why `text` cannot be this route's fallback relay (none: empty list)."""
    try:
        spec = domains.parse_fallback_relay(text)
    except ValueError as exc:
        return [f"fallback relay: {exc}"]
    if spec is not None and destination is domains.Special.DEVNULL:
        return ["fallback relay: a /dev/null route delivers nothing, so it has no fallback relay"]
    return []


def source_problems(source_address: str, ehlo_name: str) -> list[str]:
    """Why a route cannot have this source address (not an IP address, not one of this machine's) or this EHLO
    name; each message starts with its field's `sources` prefix."""
    problems: list[str] = []
    try:
        address = sources.normalize_source_address(source_address)
    except ValueError as exc:
        problems.append(f"{sources.SOURCE_PREFIX}{exc}")
    else:
        problem = sources.local_address_problem(address) if address else None
        if problem:
            problems.append(f"{sources.SOURCE_PREFIX}{problem}")
    try:
        sources.normalize_ehlo_name(ehlo_name)
    except ValueError as exc:
        problems.append(f"{sources.EHLO_PREFIX}{exc}")
    return problems


def _fallback_relay(data: RouteData) -> str:
    return domains.fallback_relay_text(data.fallback_relay)  # _validated has checked it


def _key_problems(key: str, destination: domains.Destination) -> list[str]:
    domain, sender = importexport.split_key(key)
    try:
        if matching.normalize_sender_pattern(sender) != sender:
            return [f'write the sender pattern as "{matching.normalize_sender_pattern(sender)}"']
    except matching.SenderPatternError as exc:
        return [str(exc)]
    return domains.validate_route(domain, destination)


def _keys_filter(keys: Sequence[str]) -> Q:
    """The routes of these `importexport.route_key`s."""
    plain = [k for k in keys if " " not in k]
    found = Q(domain__in=plain, sender="") if plain else Q(pk__in=[])
    for key in keys:
        if " " in key:
            domain, sender = importexport.split_key(key)
            found |= Q(domain=domain, sender=sender)
    return found


def _key_ids(keys: Sequence[str]) -> dict[str, int]:
    rows = Route.objects.filter(_keys_filter(keys)).values_list("domain", "sender", "pk")
    return {importexport.route_key(domain, sender): pk for domain, sender, pk in rows}


def domain_in_use(domain: str, *, route_id: int | None = None, sender: str = "") -> str | None:
    """The ESA's message when a route other than `route_id` has this stored domain and sender pattern, else None.

    The services check it when they write; the admin's form asks it too, to show the message at the field.
    """
    others = Route.objects.filter(domain=domain, sender=sender)
    if route_id is not None:
        others = others.exclude(pk=route_id)
    if not others.exists():
        return None
    return _exists_message(domain, sender)


def _exists_message(domain: str, sender: str = "") -> str:
    shown = "The default route (ALL)" if domain == domains.DEFAULT_ROUTE else f"The value {domain}"
    if sender:
        shown += f" for the sender {sender}"
    return f"{shown} is already in the routing table."


def _exists(domain: str, sender: str = "") -> domains.RouteProblems:
    return domains.RouteProblems(domain=[_exists_message(domain, sender)], hosts={}, route=[])


def _locked_route(route_id: int) -> Route:
    route = (
        Route.objects.select_for_update(of=("self",))
        .select_related("auth_profile", "bounce_profile")
        .filter(pk=route_id)
        .first()
    )
    if route is None:
        raise RouteNotFound(f"route {route_id} does not exist")
    _prefetch_hosts([route])
    return route


def _prefetch_hosts(routes: Sequence[Route]) -> None:
    from django.db.models import prefetch_related_objects

    prefetch_related_objects(list(routes), Prefetch("hosts", queryset=DestinationHost.objects.all()))


def _special_code(destination: domains.Destination) -> str:
    return destination.code if isinstance(destination, domains.Special) else ""


def _host_rows(route_id: int, destination: domains.Destination) -> list[DestinationHost]:
    if isinstance(destination, domains.Special):
        return []
    return [  # a host row is its spec, the route's and its place in the list
        DestinationHost(route_id=route_id, position=position, **dataclasses.asdict(h))
        for position, h in enumerate(destination)
    ]


def _analyze() -> None:
    """Refresh the query planner's statistics of the route tables after a bulk change."""
    with connection.cursor() as cursor:
        for model in (Route, DestinationHost):
            cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")


_ROUTES = bulk.BulkInsert(
    Route,
    (
        "domain",
        "sender",
        "special",
        "tls",
        "defer_on_4xx",
        "fallback_relay",
        "source_address",
        "ehlo_name",
        "created_at",
        "updated_at",
    ),
)
_HOSTS = bulk.BulkInsert(DestinationHost, ("route_id", "host", "a_only", "port", "priority", "weight", "position"))


def _insert_routes(rows: Sequence[tuple[str, str, str]]) -> None:
    """Bulk insert (domain, sender, special) routes with default settings (esaroutes.bulk: 10x the ORM's speed)."""
    if not rows:
        return
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    _ROUTES.run([(d, sd, sp, Route.TLS.OPPORTUNISTIC, False, "", "", "", now, now) for d, sd, sp in rows])


def _insert_hosts(rows: Sequence[tuple[int, str, bool, int, int, int, int]]) -> None:
    """Bulk insert (route_id, host, a_only, port, priority, weight, position) destination hosts."""
    _HOSTS.run(rows)


def _write_hosts(route_id: int, destination: domains.Destination) -> None:
    DestinationHost.objects.bulk_create(_host_rows(route_id, destination))


def bump_version() -> int:
    """Next route table version, in the caller's transaction."""
    if not RouteTableVersion.objects.filter(pk=1).update(version=F("version") + 1, changed_at=timezone.now()):
        RouteTableVersion.objects.create(pk=1, version=1)
    return current_version()


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
