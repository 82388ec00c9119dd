from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "delivery.webhooks"
    label = "webhooks"
    verbose_name = "Event webhooks"
    default_auto_field = "django.db.models.BigAutoField"
