"""What the apps' admin classes share (each app registers its own models in its own `admin.py`).

Rows that only the apps' services write (the queue, the mail log, webhook events and attempts) are shown in the
admin, never added or changed there: `ViewOnly` refuses both, for a `ModelAdmin` or an inline; `ReadOnlyAdmin`
refuses deleting as well.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ViewOnly:
    """Mixed into a `ModelAdmin` or an inline: its rows are shown, never added or changed."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(ViewOnly, admin.ModelAdmin[Any]):
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
