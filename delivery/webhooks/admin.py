"""The Django admin's view of webhooks: registrations (secret hidden), their events and attempts, read-only."""

from __future__ import annotations

from django.contrib import admin

from delivery.webhooks.models import Webhook, WebhookAttempt, WebhookEvent
from esaroutes.admin import ReadOnlyAdmin, ViewOnly


@admin.register(Webhook)
class WebhookAdmin(ReadOnlyAdmin):
    """Registrations are audited: the Webhooks page makes, changes and deletes them."""

    list_display = ("name", "url", "enabled", "updated_at")
    exclude = ("secret",)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ViewOnly, admin.ModelAdmin[WebhookEvent]):
    list_display = ("id", "webhook", "event", "state", "attempts", "last_status", "next_attempt_at")
    list_filter = ("state", "event")


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(ViewOnly, admin.ModelAdmin[WebhookAttempt]):
    list_display = ("at", "webhook", "event", "status", "error", "seconds")
