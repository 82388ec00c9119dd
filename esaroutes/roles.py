"""The four roles, as Django groups, and the permissions each one holds.

The groups are created by the data migration `esaroutes/migrations/0001_roles.py`, which calls `sync_groups()`
with the historical apps; call it again (e.g. from a shell) after adding models to re-grant the same rules.

- Administrator: every permission of every app, users and groups included. Superusers are Administrators.
- Operator: everything in routes and delivery (routes, access rules, queue actions, host retry) except the raw
  message download; no users, no groups.
- Read-only operator: every `view_*` permission of routes and delivery except the raw message; changes nothing.
- Help desk: message tracking and the mail log only.
"""

from __future__ import annotations

from typing import Any

ADMINISTRATOR = "Administrator"
OPERATOR = "Operator"
READ_ONLY = "Read-only operator"
HELP_DESK = "Help desk"
ROLES = (ADMINISTRATOR, OPERATOR, READ_ONLY, HELP_DESK)

OPERATED_APPS = ("routes", "delivery")
# Seeing message bodies is the administrator's alone (the ESA shows raw messages to administrators only).
ADMIN_ONLY = {("delivery", "view_messagebody"), ("delivery", "change_messagebody")}
HELP_DESK_PERMISSIONS = {
    ("delivery", "view_message"),
    ("delivery", "view_recipient"),
    ("delivery", "view_deliveryattempt"),
    ("delivery", "view_maillogline"),
}


def role_permissions(role: str, permissions: list[tuple[str, str, Any]]) -> list[Any]:
    """Pick, from (app_label, codename, permission) triples, those the role holds."""
    if role == ADMINISTRATOR:
        return [p for _, _, p in permissions]
    if role == OPERATOR:
        return [p for a, c, p in permissions if a in OPERATED_APPS and (a, c) not in ADMIN_ONLY]
    if role == READ_ONLY:
        return [
            p for a, c, p in permissions if a in OPERATED_APPS and c.startswith("view_") and (a, c) not in ADMIN_ONLY
        ]
    if role == HELP_DESK:
        return [p for a, c, p in permissions if (a, c) in HELP_DESK_PERMISSIONS]
    raise ValueError(f"unknown role {role!r}")


def sync_groups(apps: Any = None) -> None:
    """Create the four groups (if missing) and set their permissions to exactly the rules above."""
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    triples = [
        (p.content_type.app_label, p.codename, p) for p in Permission.objects.select_related("content_type").all()
    ]
    for role in ROLES:
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set(role_permissions(role, triples))


def role_of(user: Any) -> str | None:
    """The user's role name: superusers are Administrators; otherwise the first role group, in ROLES order."""
    if not getattr(user, "is_authenticated", False):
        return None
    if user.is_superuser:
        return ADMINISTRATOR
    names = set(user.groups.values_list("name", flat=True))
    return next((r for r in ROLES if r in names), None)
