"""What the apps' admin classes share (each app registers its own models in its own `admin.py`).

Rows that only the apps' services write (the queue, the mail log, webhook events and attempts) are shown in the
admin, never added or changed there: `ViewOnly` refuses both, for a `ModelAdmin` or an inline; `ReadOnlyAdmin`
refuses deleting as well. A password typed in the admin (an SMTP AUTH user's, an outgoing AUTH profile's) is a
`PasswordField` on a `PasswordForm`: never shown, empty keeps the stored one, judged by its app's rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

_Row = TypeVar("_Row", bound=Model)


class ViewOnly:
    """Mixed into a `ModelAdmin` or an inline: its rows are shown, never added or changed."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(ViewOnly, admin.ModelAdmin[Any]):
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PasswordField(forms.CharField):
    """A password typed in the admin: never shown, not even back after an error; empty keeps the stored one.
    `password_errors(password, new=...)` is the app's rule, asked by `PasswordForm.clean`."""

    def __init__(self, password_errors: Callable[..., list[str]], **kwargs: Any) -> None:
        widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
        super().__init__(required=False, widget=widget, **kwargs)
        self.password_errors = password_errors


class PasswordForm(forms.ModelForm[_Row]):
    """A row's admin form with a `PasswordField`: its rule's messages stand at it (a new row is asked as new)."""

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for name, field in self.fields.items():
            if isinstance(field, PasswordField):
                for message in field.password_errors(data.get(name), new=self.instance.pk is None):
                    self.add_error(name, message)
        return data
