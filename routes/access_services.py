"""Audited writes to the listener's access tables: the Recipient Access Table, relay networks, SMTP AUTH users.

Each function runs in one transaction with its `AuditEntry` (via `delivery.access.audit`). The listener notices
the change within `ESAROUTES_SMTP_ACCESS_REFRESH` seconds (it fingerprints the tables), without a restart.
"""

from __future__ import annotations

import ipaddress

from django.contrib.auth.hashers import make_password
from django.db import transaction

from delivery import access
from routes import domains
from routes.models import AuditEntry, RecipientAccessRule, RelayNetwork, SmtpUser


class AccessInvalid(ValueError):
    """The value cannot be saved; the message says why, for the field."""


def normalize_rat_domain(text: str) -> str:
    try:
        return domains.normalize_receiving_domain(text)
    except domains.DomainError as exc:
        raise AccessInvalid(str(exc)) from None


def normalize_network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise AccessInvalid(f'"{text.strip()}" is not an IP address or network (CIDR, e.g. 10.0.0.0/8)') from None


@transaction.atomic
def rat_save(actor: access.Actor, domain: str, action: str, comment: str = "") -> RecipientAccessRule:
    """Add or change the rule for a domain (exact, `.partial` or `ALL`)."""
    stored = normalize_rat_domain(domain)
    if action not in RecipientAccessRule.Action.values:
        raise AccessInvalid(f"unknown action {action!r}")
    rule = RecipientAccessRule.objects.select_for_update().filter(domain=stored).first()
    before = access.describe(rule) if rule else None
    if rule is None:
        rule = RecipientAccessRule(domain=stored)
    rule.action, rule.comment = action, comment[:255]
    rule.save()
    access.audit(
        actor,
        AuditEntry.Action.UPDATE if before else AuditEntry.Action.CREATE,
        rule,
        before=before,
        after=access.describe(rule),
    )
    return rule


@transaction.atomic
def rat_delete(actor: access.Actor, pk: int) -> None:
    rule = RecipientAccessRule.objects.select_for_update().get(pk=pk)
    access.audit(actor, AuditEntry.Action.DELETE, rule, before=access.describe(rule))
    rule.delete()


@transaction.atomic
def relay_add(actor: access.Actor, network: str, comment: str = "") -> RelayNetwork:
    stored = normalize_network(network)
    if RelayNetwork.objects.filter(network=stored).exists():
        raise AccessInvalid(f"{stored} is already a relay network")
    relay = RelayNetwork.objects.create(network=stored, comment=comment[:255])
    access.audit(actor, AuditEntry.Action.CREATE, relay, after=access.describe(relay))
    return relay


@transaction.atomic
def relay_delete(actor: access.Actor, pk: int) -> None:
    relay = RelayNetwork.objects.select_for_update().get(pk=pk)
    access.audit(actor, AuditEntry.Action.DELETE, relay, before=access.describe(relay))
    relay.delete()


@transaction.atomic
def user_save(actor: access.Actor, username: str, password: str | None, is_active: bool = True) -> SmtpUser:
    """Add a user, or change one's password (None keeps it) and active flag. The password is stored hashed."""
    username = username.strip()
    if not username or any(not c.isprintable() or c.isspace() for c in username):
        raise AccessInvalid("a user name is printable characters without spaces")
    user = SmtpUser.objects.select_for_update().filter(username=username).first()
    before = access.describe(user) if user else None
    if user is None:
        if not password:
            raise AccessInvalid("a new user needs a password")
        user = SmtpUser(username=username)
    if password:
        if len(password) < 10:
            raise AccessInvalid("use at least 10 characters")
        user.password = make_password(password)
    user.is_active = is_active
    user.save()
    after = {**access.describe(user), **({"password": "(changed)"} if password else {})}
    access.audit(
        actor, AuditEntry.Action.UPDATE if before else AuditEntry.Action.CREATE, user, before=before, after=after
    )
    return user


@transaction.atomic
def user_delete(actor: access.Actor, pk: int) -> None:
    user = SmtpUser.objects.select_for_update().get(pk=pk)
    access.audit(actor, AuditEntry.Action.DELETE, user, before=access.describe(user))
    user.delete()
