"""The Django admin's view of webhooks: registrations (secret hidden), their events and attempts, read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from delivery.webhooks.models import Webhook, WebhookAttempt, WebhookEvent


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin[Webhook]):
    list_display = ("name", "url", "enabled", "updated_at")
    exclude = ("secret",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # registrations are audited: the Webhooks page makes them

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin[WebhookEvent]):
    list_display = ("id", "webhook", "event", "state", "attempts", "last_status", "next_attempt_at")
    list_filter = ("state", "event")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(admin.ModelAdmin[WebhookAttempt]):
    list_display = ("at", "webhook", "event", "status", "error", "seconds")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
