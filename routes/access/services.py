"""Audited writes to the listener's access tables: the Recipient Access Table, relay networks, SMTP AUTH users.

Every writer (the Access page, the Django admin, tests, a future API) goes through these functions, and each
checks the row with the model's `full_clean()`: the rules are the models' (`RecipientAccessRule.clean`: the
domain, `ALL = ACCEPT` refused; `RelayNetwork.clean`: CIDR syntax, not `/0`; `SmtpUser.clean`: the user name),
plus the SMTP AUTH password rule here (`password_errors`), which the admin's form calls too. A refusal is
`AccessInvalid`, whose `errors` map each field to its messages, for the form that shows them.

Each function runs in one transaction with its `AuditEntry` (via `routes.audit`). The listener notices
the change within `ESAROUTES_SMTP_ACCESS_REFRESH` seconds (it fingerprints the tables), without a restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from django import forms
from django.contrib.auth.hashers import make_password
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction

from esaroutes.unique import taken_meanwhile
from routes import audit, domains
from routes.models import AuditEntry, RecipientAccessRule, RelayNetwork, SmtpUser

MIN_PASSWORD_LENGTH = 10
AccessRow = RecipientAccessRule | RelayNetwork | SmtpUser
Row = TypeVar("Row", RecipientAccessRule, RelayNetwork, SmtpUser)


class AccessInvalid(ValueError):
    """The value cannot be saved. `errors` maps a field name (or NON_FIELD_ERRORS) to its messages."""

    def __init__(self, errors: Mapping[str, Sequence[str]] | str) -> None:
        if isinstance(errors, str):
            errors = {NON_FIELD_ERRORS: [errors]}
        self.errors = {name: list(messages) for name, messages in errors.items()}
        super().__init__("; ".join(m for messages in self.errors.values() for m in messages))

    def show_on(self, form: forms.BaseForm, renamed: Mapping[str, str] | None = None) -> None:
        """Put each message at its field of `form` (`renamed` maps a model field to the form's), else on top."""
        for name, messages in self.errors.items():
            field = (renamed or {}).get(name, name)
            for message in messages:
                form.add_error(field if field in form.fields else None, message)


def normalize_rat_domain(text: str) -> str:
    try:
        return domains.normalize_receiving_domain(text)
    except domains.DomainError as exc:
        raise AccessInvalid({"domain": [str(exc)]}) from None


def password_errors(password: str | None, *, new: bool) -> list[str]:
    """Why an SMTP AUTH password cannot be set (None or "" keeps the current one, which a new user lacks)."""
    if not password:
        return ["A new user needs a password."] if new else []
    if len(password) < MIN_PASSWORD_LENGTH:
        return [f"Use at least {MIN_PASSWORD_LENGTH} characters."]
    return []


@transaction.atomic
def rat_save(
    actor: audit.Actor, domain: str, action: str, comment: str = "", *, pk: int | None = None
) -> RecipientAccessRule:
    """Add or change the rule for a domain (exact, `.partial` or `ALL`); with `pk`, change that rule (renaming it)."""
    key = {} if pk is not None else {"domain": normalize_rat_domain(domain)}  # with pk, the model's rules judge it
    rule = _locked(RecipientAccessRule, pk, **key)
    return _write(actor, rule, {"domain": domain, "action": action, "comment": comment})


def rat_delete(actor: audit.Actor, pk: int) -> None:
    _delete(actor, RecipientAccessRule, pk)


@transaction.atomic
def relay_save(actor: audit.Actor, network: str, comment: str = "", *, pk: int | None = None) -> RelayNetwork:
    """Add a relay network, or with `pk` change that one (its comment, or the network itself)."""
    return _write(actor, _locked(RelayNetwork, pk), {"network": network, "comment": comment})


def relay_delete(actor: audit.Actor, pk: int) -> None:
    _delete(actor, RelayNetwork, pk)


@transaction.atomic
def user_save(
    actor: audit.Actor, username: str, password: str | None, is_active: bool = True, *, pk: int | None = None
) -> SmtpUser:
    """Add a user, or change one's password (None keeps it) and active flag; with `pk`, change that user
    (renaming it). The password is stored hashed."""
    user = _locked(SmtpUser, pk, username=username.strip())
    problems = password_errors(password, new=user.pk is None)
    if password and not problems:
        user.password = make_password(password)
    return _write(
        actor,
        user,
        {"username": username, "is_active": is_active},
        errors={"password": problems} if problems else None,
        password_changed=bool(password),
    )


def user_delete(actor: audit.Actor, pk: int) -> None:
    _delete(actor, SmtpUser, pk)


def _locked(model: type[Row], pk: int | None, **natural_key: str) -> Row:
    """The row a save writes, locked: the one `pk` names, else the one with this natural key, else a new one."""
    rows = model._default_manager.select_for_update()
    if pk is not None:
        return rows.get(pk=pk)
    return (rows.filter(**natural_key).first() if natural_key else None) or model()


def _write(
    actor: audit.Actor,
    row: Row,
    fields: Mapping[str, object],
    *,
    errors: Mapping[str, Sequence[str]] | None = None,
    password_changed: bool = False,
) -> Row:
    """Set `fields` on the row, check and save it (`errors` found before: refused with the model's own), and
    audit a creation or a change; no entry when the save changed nothing."""
    before = audit.describe(row) if row.pk else None
    for name, value in fields.items():
        setattr(row, name, value)
    _save(row, extra=errors)
    after = {**audit.describe(row), **({"password": "(changed)"} if password_changed else {})}
    if after != before:
        action = AuditEntry.Action.UPDATE if before else AuditEntry.Action.CREATE
        audit.record_change(actor, action, row, before=before, after=after)
    return row


@transaction.atomic
def _delete(actor: audit.Actor, model: type[AccessRow], pk: int) -> None:
    obj: AccessRow = model._default_manager.select_for_update().get(pk=pk)
    audit.record_change(actor, AuditEntry.Action.DELETE, obj, before=audit.describe(obj))
    obj.delete()


def _save(obj: models.Model, extra: Mapping[str, Sequence[str]] | None = None) -> None:
    """`full_clean` (the model's rules) then save; every refusal, `extra` ones included, as one AccessInvalid."""
    errors: dict[str, list[str]] = {name: list(messages) for name, messages in (extra or {}).items()}
    try:
        obj.full_clean(exclude=list(errors))
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            errors.setdefault(name, []).extend(messages)
    if errors:
        raise AccessInvalid(errors)
    with taken_meanwhile(lambda: AccessInvalid(f"{obj} was added by someone else meanwhile: reload and try again.")):
        obj.save()
