"""Audited changes to bounce profiles (retries, queue lifetime, DSNs, delay warnings): the admin and the API.

The rules are the model's (`BounceProfile.clean()` and the field checks, run by `full_clean`), raised as a
ValidationError by field; each change is written with its audit entry in one transaction. The "Default" profile
keeps its name (the model refuses a rename) and is never deleted (`DefaultProfileProtected`). A profile a route
names cannot be deleted (the database refuses: `ProtectedError`, listing the routes); the destination controls
that name one lose it (none: the Default profile applies to them), and the audit entry names them.

The workers read the profiles at most every `ESAROUTES_ROUTE_REFRESH` seconds (`delivery.spool.plan`), so a
change applies within that time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from delivery.models import BounceProfile
from esaroutes.unique import taken_meanwhile
from routes import audit, services
from routes.models import AuditEntry

OBJECT = "bounce profile"  # the audit log's object type
FIELDS = (
    "name",
    "max_retries",
    "max_queue_lifetime",
    "initial_retry",
    "max_retry_timeout",
    "send_bounces",
    "send_warnings",
    "warning_interval",
    "warning_max",
    "after_possible_delivery",
)
DEFAULT_PROTECTED = (
    f'The "{BounceProfile.DEFAULT_NAME}" bounce profile applies to every route without one: it cannot be deleted.'
)


class DefaultProfileProtected(ValueError):
    """Refused: the Default bounce profile cannot be deleted."""


def describe(profile: BounceProfile) -> dict[str, Any]:
    """The audited picture of a profile: every setting."""
    return {name: getattr(profile, name) for name in FIELDS}


def create(*, values: Mapping[str, Any], actor: audit.Actor) -> BounceProfile:
    """A new profile from `values` (the FIELDS; the model's defaults for those missing)."""
    profile = BounceProfile(**_known(values))
    with transaction.atomic():
        _save(profile)
        audit.record_audit(actor, AuditEntry.Action.CREATE, OBJECT, profile.name, after=describe(profile))
    return profile


def update(*, profile_id: int, changes: Mapping[str, Any], actor: audit.Actor) -> BounceProfile:
    """Change the given fields of a profile (BounceProfile.DoesNotExist when it is gone)."""
    with transaction.atomic():
        profile = BounceProfile.objects.select_for_update().get(pk=profile_id)
        before = describe(profile)
        for name, value in _known(changes).items():
            setattr(profile, name, value)
        _save(profile)
        after = describe(profile)
        if after != before:
            audit.record_audit(actor, AuditEntry.Action.UPDATE, OBJECT, profile.name, before=before, after=after)
    return profile


def delete(*, profile_id: int, actor: audit.Actor) -> None:
    """Delete a profile: never the Default (DefaultProfileProtected), nor one a route names (ProtectedError)."""
    with transaction.atomic():
        profile = BounceProfile.objects.select_for_update().get(pk=profile_id)
        if profile.name == BounceProfile.DEFAULT_NAME:
            raise DefaultProfileProtected(DEFAULT_PROTECTED)
        before = describe(profile)
        controls = sorted(profile.destination_controls.values_list("destination", flat=True))
        profile.delete()  # the routes' PROTECT refuses; the destination controls' SET_NULL lets go
        if controls:
            before["destination_controls"] = controls
            services.bump_version()  # those entries changed: every process reloads them
        audit.record_audit(actor, AuditEntry.Action.DELETE, OBJECT, profile.name, before=before)


def _known(values: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"not a bounce profile field: {', '.join(unknown)}")
    return dict(values)


def _save(profile: BounceProfile) -> None:
    profile.full_clean()
    with taken_meanwhile(lambda: ValidationError({"name": ["Bounce profile with this Name already exists."]})):
        profile.save()
