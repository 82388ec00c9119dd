"""Admin for the access tables: every save and delete goes through `routes.access.services` (validated, audited).

The rules are the models' `clean()` (run by the admin's ModelForm through `full_clean`, so a refusal comes back
at its field with the Access page's message) and `services.password_errors`; saving through the services
checks them again, in the transaction that writes the row and its audit entry.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from esaroutes.admin import PasswordField, PasswordForm
from routes.access import services
from routes.models import RecipientAccessRule, RelayNetwork, SmtpUser

Row = TypeVar("Row", RecipientAccessRule, RelayNetwork, SmtpUser)


class _AccessAdmin(admin.ModelAdmin[Row]):
    """Deletes, one or a selection, go through the services: each in one transaction with its audit entry."""

    delete_row: staticmethod[[Any, int], None]

    def delete_model(self, request: HttpRequest, obj: Row) -> None:
        self.delete_row(request.user, obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Row]) -> None:
        for pk in queryset.values_list("pk", flat=True):
            self.delete_row(request.user, pk)


@admin.register(RecipientAccessRule)
class RecipientAccessRuleAdmin(_AccessAdmin[RecipientAccessRule]):
    delete_row = staticmethod(services.rat_delete)
    list_display = ("domain", "action", "comment", "updated_at")
    search_fields = ("domain", "comment")

    def save_model(self, request: HttpRequest, obj: RecipientAccessRule, form: Any, change: bool) -> None:
        saved = services.rat_save(request.user, obj.domain, obj.action, obj.comment, pk=obj.pk if change else None)
        obj.pk = saved.pk


@admin.register(RelayNetwork)
class RelayNetworkAdmin(_AccessAdmin[RelayNetwork]):
    delete_row = staticmethod(services.relay_delete)
    list_display = ("network", "comment", "created_at")
    fields = ("network", "comment")

    def get_readonly_fields(self, request: HttpRequest, obj: RelayNetwork | None = None) -> tuple[str, ...]:
        return ("network",) if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: RelayNetwork, form: Any, change: bool) -> None:
        saved = services.relay_save(request.user, obj.network, obj.comment, pk=obj.pk if change else None)
        obj.pk = saved.pk


class SmtpUserAdminForm(PasswordForm[SmtpUser]):
    new_password = PasswordField(
        services.password_errors,
        help_text=f"At least {services.MIN_PASSWORD_LENGTH} characters; empty keeps the password",
    )

    class Meta:
        model = SmtpUser
        fields = ("username", "is_active")


@admin.register(SmtpUser)
class SmtpUserAdmin(_AccessAdmin[SmtpUser]):
    delete_row = staticmethod(services.user_delete)
    form = SmtpUserAdminForm
    list_display = ("username", "is_active", "created_at")

    def save_model(self, request: HttpRequest, obj: SmtpUser, form: Any, change: bool) -> None:
        saved = services.user_save(
            request.user,
            obj.username,
            form.cleaned_data.get("new_password") or None,
            obj.is_active,
            pk=obj.pk if change else None,
        )
        obj.pk = saved.pk


__all__ = ["RecipientAccessRuleAdmin", "RelayNetworkAdmin", "SmtpUserAdmin"]
