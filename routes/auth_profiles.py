"""Outgoing SMTP AUTH profiles (the credentials a route logs in to its hosts with): audited writes, and the
encryption of their passwords.

The passwords are encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256) under `ESAROUTES_ENCRYPTION_KEY`, or,
when that is not set, a key derived from `SECRET_KEY`. They are never shown back; `credentials` is the only way
out, for the delivery side. A change bumps the route table version, so routes using the profile see it.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import transaction

from esaroutes.unique import taken_meanwhile
from routes import audit, services
from routes.models import AuditEntry, AuthProfile


def save(*, profile_id: int | None, name: str, username: str, password: str | None, actor: audit.Actor) -> AuthProfile:
    """Create (profile_id None) or update a profile. `password` None or "" keeps the stored one on update.

    Raises ValidationError (by field) when the profile cannot be saved: the model's checks (`full_clean`) and
    `password_errors`.
    """
    problems = password_errors(password, new=profile_id is None)
    if problems:
        raise ValidationError({"password": problems})
    with transaction.atomic():
        if profile_id is None:
            profile = AuthProfile(name=name, username=username)
            before = None
        else:
            profile = AuthProfile.objects.select_for_update().get(pk=profile_id)
            before = _profile_state(profile)
        profile.name = name
        profile.username = username
        if password:
            profile.password_encrypted = encrypt_password(password)
        profile.full_clean()
        with taken_meanwhile(lambda: ValidationError({"name": ["Auth profile with this Name already exists."]})):
            profile.save()
        after = _profile_state(profile)
        if before is None or after != before or password:
            if password and before is not None:
                after["password"] = "changed"
            action = AuditEntry.Action.CREATE if before is None else AuditEntry.Action.UPDATE
            audit.record_audit(actor, action, "auth profile", profile.name, before=before, after=after)
            services.bump_version()  # routes using it see the new credentials
    return profile


def password_errors(password: str | None, *, new: bool) -> list[str]:
    """Why a profile's password cannot be set: a new profile needs one (None or "" keeps an existing one)."""
    return ["A new profile needs a password."] if new and not password else []


def delete(*, profile_id: int, actor: audit.Actor) -> None:
    """Delete a profile no route uses (the database refuses otherwise: `ProtectedError`)."""
    with transaction.atomic():
        profile = AuthProfile.objects.select_for_update().get(pk=profile_id)
        before = _profile_state(profile)
        profile.delete()
        audit.record_audit(actor, AuditEntry.Action.DELETE, "auth profile", before["name"], before=before)
        services.bump_version()


def credentials(profile_id: int) -> tuple[str, str] | None:
    """(username, password) of an auth profile for SMTP AUTH, or None when it is gone or has no password.

    For the delivery side only; never log or show the result.
    """
    row = AuthProfile.objects.filter(pk=profile_id).values_list("username", "password_encrypted").first()
    if row is None or not row[1]:
        return None
    return row[0], decrypt_password(row[1])


def encrypt_password(password: str) -> str:
    return _fernet().encrypt(password.encode("utf-8")).decode("ascii")


def decrypt_password(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise ImproperlyConfigured(
            "a stored SMTP AUTH password cannot be decrypted: ESAROUTES_ENCRYPTION_KEY (or SECRET_KEY, when the "
            "former is not set) changed since it was saved; enter the password again"
        ) from None


def _fernet() -> Fernet:
    key = settings.ESAROUTES_ENCRYPTION_KEY
    if not key:
        digest = hashlib.sha256(b"esaroutes auth profile passwords\x00" + settings.SECRET_KEY.encode()).digest()
        key = base64.urlsafe_b64encode(digest).decode("ascii")
    try:
        return Fernet(key)
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            "ESAROUTES_ENCRYPTION_KEY: expected a Fernet key (32 bytes in urlsafe base64, 44 characters)"
        ) from None


def _profile_state(profile: AuthProfile) -> dict[str, Any]:
    return {"name": profile.name, "username": profile.username, "password": "set" if profile.password_encrypted else ""}
