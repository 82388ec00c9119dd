"""Admin for the access tables: every save and delete goes through `routes.access_services` (validated, audited)."""

from __future__ import annotations

from typing import Any

from django import forms as djforms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from routes import access_forms, access_services
from routes.models import RecipientAccessRule, RelayNetwork, SmtpUser


@admin.register(RecipientAccessRule)
class RecipientAccessRuleAdmin(admin.ModelAdmin[RecipientAccessRule]):
    list_display = ("domain", "action", "comment", "updated_at")
    search_fields = ("domain", "comment")

    def save_model(self, request: HttpRequest, obj: RecipientAccessRule, form: Any, change: bool) -> None:
        saved = access_services.rat_save(request.user, obj.domain, obj.action, obj.comment)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: RecipientAccessRule) -> None:
        access_services.rat_delete(request.user, obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[RecipientAccessRule]) -> None:
        for pk in queryset.values_list("pk", flat=True):
            access_services.rat_delete(request.user, pk)


@admin.register(RelayNetwork)
class RelayNetworkAdmin(admin.ModelAdmin[RelayNetwork]):
    list_display = ("network", "comment", "created_at")
    fields = ("network", "comment")

    def get_readonly_fields(self, request: HttpRequest, obj: RelayNetwork | None = None) -> tuple[str, ...]:
        return ("network",) if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: RelayNetwork, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)  # the comment only: the network is read-only
            return
        saved = access_services.relay_add(request.user, obj.network, obj.comment)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: RelayNetwork) -> None:
        access_services.relay_delete(request.user, obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[RelayNetwork]) -> None:
        for pk in queryset.values_list("pk", flat=True):
            access_services.relay_delete(request.user, pk)


class SmtpUserAdminForm(djforms.ModelForm[SmtpUser]):
    new_password = djforms.CharField(required=False, widget=djforms.PasswordInput, help_text="Empty keeps it")

    class Meta:
        model = SmtpUser
        fields = ("username", "is_active")


@admin.register(SmtpUser)
class SmtpUserAdmin(admin.ModelAdmin[SmtpUser]):
    form = SmtpUserAdminForm
    list_display = ("username", "is_active", "created_at")

    def save_model(self, request: HttpRequest, obj: SmtpUser, form: Any, change: bool) -> None:
        saved = access_services.user_save(
            request.user,
            obj.username,
            form.cleaned_data.get("new_password") or None,
            obj.is_active,
        )
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: SmtpUser) -> None:
        access_services.user_delete(request.user, obj.pk)


__all__ = ["RecipientAccessRuleAdmin", "RelayNetworkAdmin", "SmtpUserAdmin", "access_forms"]
