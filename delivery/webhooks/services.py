"""Audited changes to webhook registrations: the page, the admin and the API go through these.

Each runs in one transaction with its audit entry (`routes.audit`); the secret never goes into the audit log.
`full_clean()` checks the URL and the name; `events` must be known event names.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from delivery.webhooks import events as webhook_events
from delivery.webhooks.models import Webhook
from routes import audit


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def describe(hook: Webhook) -> dict[str, Any]:
    """The audited view of a registration: everything but the secret."""
    return {"name": hook.name, "url": hook.url, "events": list(hook.events), "enabled": hook.enabled}


def _check(hook: Webhook) -> None:
    unknown = [e for e in hook.events if e not in webhook_events.EVENTS]
    errors: dict[str, list[str]] = {}
    if unknown or not hook.events:
        errors["events"] = [f"Unknown events: {', '.join(unknown)}." if unknown else "Choose at least one event."]
    if not hook.url.lower().startswith(("http://", "https://")):
        errors["url"] = ["Use an http:// or https:// URL."]
    try:
        hook.full_clean()
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)


def create(
    *, actor: audit.Actor, name: str, url: str, events: Sequence[str], secret: str = "", enabled: bool = True
) -> Webhook:
    hook = Webhook(
        name=name, url=url, events=list(dict.fromkeys(events)), secret=secret or new_secret(), enabled=enabled
    )
    _check(hook)
    with transaction.atomic():
        hook.save()
        audit.record_audit(actor, "create", "webhook", hook.name, after=describe(hook))
    webhook_events.forget()
    return hook


def update(hook: Webhook, *, actor: audit.Actor, **changes: Any) -> Webhook:
    """Change the given fields (`secret=""` keeps the current secret)."""
    before = describe(hook)
    for field, value in changes.items():
        if field == "secret" and not value:
            continue
        if field == "events":
            value = list(dict.fromkeys(value))
        setattr(hook, field, value)
    _check(hook)
    with transaction.atomic():
        hook.save()
        after = describe(hook)
        if changes.get("secret"):
            after["secret"] = "(changed)"
        audit.record_audit(actor, "update", "webhook", hook.name, before=before, after=after)
    webhook_events.forget()
    return hook


def delete(hook: Webhook, *, actor: audit.Actor) -> None:
    with transaction.atomic():
        audit.record_audit(actor, "delete", "webhook", hook.name, before=describe(hook))
        hook.delete()
    webhook_events.forget()
