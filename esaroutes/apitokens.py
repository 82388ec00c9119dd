"""API tokens: made and revoked here, by the token page (esaroutes/token_views.py) and `manage.py apitoken`.

Both changes are audited (object type "API token"); the secret is returned once by `create` and never stored.
A token's name is unique across users (`apitoken revoke NAME` needs no user): 1 to 64 letters, digits, `.`, `_`
or `-`. Users make and revoke their own tokens; an administrator (users.change) may revoke anyone's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from esaroutes.api import auth
from esaroutes.models import ApiToken
from routes import audit

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_DAYS = 3650
OBJECT_TYPE = "API token"


class TokenInvalid(ValueError):
    """A refused token request: `field` is the form field (or command option) at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  # shown once: only its digest is kept


def describe(token: ApiToken) -> dict[str, object]:
    return {
        "name": token.name,
        "user": token.user.get_username(),
        "read_only": token.read_only,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
    }


def create(
    *, user: User, name: str, read_only: bool, expires_days: int | None, actor: audit.Actor, now: datetime | None = None
) -> NewToken:
    name = name.strip()
    if not NAME.fullmatch(name):
        raise TokenInvalid("name", "Use 1 to 64 letters, digits, '.', '_' or '-'.")
    if expires_days is not None and not 1 <= expires_days <= MAX_DAYS:
        raise TokenInvalid("expires", f"Give a number of days from 1 to {MAX_DAYS}, or none for no expiry.")
    now = now or timezone.now()
    secret = auth.new_secret()
    with transaction.atomic():
        if ApiToken.objects.filter(name=name).exists():
            raise TokenInvalid("name", f"A token named {name!r} exists already.")
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=secret[: len(auth.PREFIX) + 6],
            digest=auth.digest(secret),
            read_only=read_only,
            created_at=now,
            expires_at=now + timedelta(days=expires_days) if expires_days else None,
        )
        audit.record_audit(actor, "create", OBJECT_TYPE, name, after=describe(token))
    return NewToken(token, secret)


def revoke(*, name: str, actor: audit.Actor) -> bool:
    """Delete the token (False when there is none by that name): requests with it are refused from now on."""
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().select_related("user").filter(name=name).first()
        if token is None:
            return False
        before = describe(token)
        token.delete()
        audit.record_audit(actor, "delete", OBJECT_TYPE, name, before=before)
    return True
