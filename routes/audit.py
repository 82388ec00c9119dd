"""The one audit writer: who changed what, when, recorded in the same transaction as the change.

Every `AuditEntry` is written here: by the route services (routes, the route table, auth profiles), the access
services (the Recipient Access Table, relay networks, SMTP AUTH users) and the queue's operator actions. Call
these functions inside the transaction that makes the change, so nothing is ever changed without its row.

Actors: a `User` (the web UI, the admin) or a string such as `"cli:alice"` (the command line).
"""

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.utils import timezone

from routes.models import AuditEntry, RecipientAccessRule, RelayNetwork, SmtpUser

Actor = User | AnonymousUser | str


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

    The actor is a User (the web UI, the admin) or a string such as "cli:alice"; its name is kept with the entry
    so it survives the user's deletion.
    """
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
