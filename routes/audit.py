"""The one audit writer: who changed what, when, recorded in the same transaction as the change.

Every `AuditEntry` is written here: by the route services (routes, the route table, auth profiles), the access
services (the Recipient Access Table, relay networks, SMTP AUTH users) and the queue's operator actions. Call
these functions inside the transaction that makes the change, so nothing is ever changed without its row.

Actors: a `User` (the web UI, the admin), an `ApiToken` (the REST API: its user, named `api:alice/token-name`) or
a string such as `"cli:alice"` (the command line).
"""

from __future__ import annotations

import dataclasses
import getpass
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.utils import timezone

from esaroutes.models import ApiToken
from routes import domains, importexport
from routes.models import AuditEntry, RecipientAccessRule, RelayNetwork, Route, SmtpUser

Actor = User | AnonymousUser | ApiToken | str


def cli_actor() -> str:
    """The audit log's actor for a management command: `cli:<unix user>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


def record_audit(
    actor: Actor, action: str, object_type: str, object_repr: str, *, before: Any = None, after: Any = None
) -> AuditEntry:
    """One audit log entry (routes, access tables, queue actions): call it inside the change's transaction.

    The actor is a User (the web UI, the admin), an ApiToken (its user; named `api:<user>/<token>`) or a string
    such as "cli:alice"; its name is kept with the entry so it survives the user's deletion.
    """
    if isinstance(actor, ApiToken):
        user: User | None = actor.user
        name = actor.actor_name
    else:
        user = actor if isinstance(actor, User) else None
        name = actor if isinstance(actor, str) else (actor.get_username() if user is not None else "anonymous")
    return AuditEntry.objects.create(
        at=timezone.now(),
        actor=user,
        actor_name=name[:150],
        action=action,
        object_type=object_type,
        object_repr=object_repr[:300],
        before=before,
        after=after,
    )


def record_action(actor: Actor, object_type: str, what: str, detail: dict[str, Any]) -> AuditEntry:
    """An operator's action that is not a row's change (deliver now, bounce, mark a host up): `detail` is kept
    as the entry's `after`."""
    return record_audit(actor, AuditEntry.Action.ACTION, object_type, what, after=detail)


def record_change(
    actor: Actor,
    action: str,
    obj: RecipientAccessRule | RelayNetwork | SmtpUser,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    """One AuditEntry for a change to an access table row, named by its model and its text."""
    return record_audit(actor, action, type(obj).__name__, str(obj), before=before, after=after)


def describe(obj: RecipientAccessRule | RelayNetwork | SmtpUser) -> dict[str, Any]:
    """The audited fields of an access row (never a password hash)."""
    if isinstance(obj, RecipientAccessRule):
        return {"domain": obj.domain, "action": obj.action, "comment": obj.comment}
    if isinstance(obj, RelayNetwork):
        return {"network": obj.network, "comment": obj.comment}
    return {"username": obj.username, "is_active": obj.is_active}


# ---------------------------------------------------------------------------------------------------------------
# Reading an entry (the audit page): its action by name and its before/after field by field

ROUTE_OBJECTS = ("route", "route table")  # what the "Route changes" view of the audit log lists

_LABELS = {
    "domain": "Domain",
    "sender": "Sender",
    "destination": "Destination hosts",
    "auth_profile": "SMTP AUTH profile",
    "bounce_profile": "Bounce profile",
    "tls": "TLS",
    "defer_on_4xx": "Keep recipients queued on a 4xx",
    "fallback_relay": "Fallback relay",
    "action": "Action",
    "comment": "Comment",
    "network": "Network",
    "username": "User name",
    "is_active": "Active",
    "name": "Name",
    "password": "Password",
    "messages": "Messages",
    "recipients": "Recipients",
    "mids": "MIDs",
}


# A destination control entry's fields (its "destination" is not a route's host list).
_DESTINATION_LABELS = {
    "destination": "Destination",
    "max_connections": "Concurrent connections",
    "max_messages_per_connection": "Messages per connection",
    "recipient_limit": "Recipient limit",
    "recipient_minutes": "Recipient limit minutes",
    "limit_scope": "Limit scope",
    "ip_preference": "IP address preference",
    "tls": "TLS",
    "bounce_profile": "Bounce profile",
}


@dataclass(frozen=True)
class FieldChange:
    """One field of an audited object, before and after, as text ("" where the side has none)."""

    field: str
    before: str
    after: str
    hosts: list[importexport.HostChange] = dataclasses.field(default_factory=list)  # a destination's, host by host


def action_label(entry: AuditEntry) -> str:
    """The entry's action by name: "Update route", "Import route table", "Bounce 2 recipients"."""
    if entry.action == AuditEntry.Action.ACTION:
        return entry.object_repr[:1].upper() + entry.object_repr[1:]
    return f"{entry.get_action_display()} {entry.object_type}"


def object_label(entry: AuditEntry) -> str:
    """What the entry is about, domains in Unicode: "route bücher.example", "queue"."""
    if entry.action == AuditEntry.Action.ACTION:
        return entry.object_type
    shown = entry.object_repr
    if entry.object_type in ("route", "RecipientAccessRule"):
        domain, space, rest = shown.partition(" ")
        shown = domains.display_domain(domain) + space + rest
    return f"{entry.object_type} {shown}"


def changes(entry: AuditEntry) -> list[FieldChange]:
    """The entry's before and after, field by field (only what differs, unless one side is missing).

    A route's destination is compared host by host (`importexport.destination_changes`, hosts as
    host:port/pri=N); the route table's entries (import, clear) are one field per route.
    """
    before = entry.before if isinstance(entry.before, dict) else None
    after = entry.after if isinstance(entry.after, dict) else None
    if entry.object_type == "route table":
        return [
            _destination_change(_domain_label(domain), (before or {}).get(domain), (after or {}).get(domain))
            for domain in sorted({*(before or {}), *(after or {})}, key=importexport.export_order)
        ]
    if entry.object_type == "destination controls":  # an import: one field per destination, its settings as text
        return [
            FieldChange(key, _settings_text((before or {}).get(key)), _settings_text((after or {}).get(key)))
            for key in sorted({*(before or {}), *(after or {})})
        ]
    labels = _DESTINATION_LABELS if entry.object_type == "destination control" else _LABELS
    order = list(labels)  # jsonb (PostgreSQL) keeps no key order: fields come in the order people read them
    keys = sorted({*(after or {}), *(before or {})}, key=lambda k: (order.index(k) if k in order else len(order), k))
    found: list[FieldChange] = []
    for key in keys:
        old = before.get(key) if before is not None else None
        new = after.get(key) if after is not None else None
        if before is not None and after is not None and old == new:
            continue
        label = labels.get(key, key.replace("_", " ").capitalize())
        if key == "destination" and entry.object_type == "route":
            found.append(_destination_change(label, old, new))
        else:
            found.append(FieldChange(label, _value(key, old), _value(key, new)))
    return found


def _settings_text(state: Any) -> str:
    if not isinstance(state, dict):
        return ""
    return ", ".join(f"{k}={'' if v is None else v}" for k, v in state.items() if k != "destination")


def _domain_label(domain: str) -> str:
    return "ALL (all other domains)" if domain == domains.DEFAULT_ROUTE else domains.display_domain(domain)


def _destination_change(label: str, old: Any, new: Any) -> FieldChange:
    before, after = _destination(old), _destination(new)
    return FieldChange(label, _hosts_text(before), _hosts_text(after), importexport.destination_changes(before, after))


def _destination(text: Any) -> domains.Destination | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return domains.parse_hosts(text)
    except domains.HostListError:
        return None


def _hosts_text(destination: domains.Destination | None) -> str:
    if destination is None:
        return ""
    if isinstance(destination, domains.Special):
        return destination.value
    return ", ".join(importexport.host_text(spec) for spec in destination)


def _value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if key == "domain" and isinstance(value, str):
        return _domain_label(value)
    if key == "tls" and value in Route.TLS.values:
        return str(Route.TLS(value).label)
    return str(value)
