"""A webhook registration, its pending and sent events, and every attempt to send one."""

from __future__ import annotations

from django.db import models
from django_stubs_ext.db.models import TypedModelMeta

from esaroutes.models import Timestamped


class Webhook(Timestamped):
    class Event(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        DELAYED = "delayed", "Delayed (a temporary failure, retried later)"
        BOUNCED = "bounced", "Bounced (a permanent failure)"
        EXPIRED = "expired", "Expired (too long in the queue)"
        SUSPENDED = "suspended", "Delivery suspended for a domain"

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=2000, help_text="http:// or https://; the POST goes here")
    events = models.JSONField(default=list, help_text="Event names this webhook receives")
    secret = models.CharField(max_length=200, help_text="Key of the HMAC-SHA256 signature")
    enabled = models.BooleanField(default=True)

    class Meta(TypedModelMeta):
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WebhookEvent(models.Model):
    """One event for one webhook: pending until a POST is answered 2xx, retried with back-off until then."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed (gave up)"

    # No database constraint: the recorder may insert a row for a webhook deleted a moment ago (its list of
    # webhooks is a few seconds old), and that must never fail the recording; the sender drops such rows.
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries", db_constraint=False)
    event = models.CharField(max_length=20)
    payload = models.TextField(help_text="The JSON body, exactly as signed and sent")
    created_at = models.DateTimeField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True, help_text="HTTP status of the last attempt")
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta(TypedModelMeta):
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.event} #{self.pk} to {self.webhook_id}"


class WebhookAttempt(models.Model):
    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="tries")
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="attempts")
    at = models.DateTimeField(db_index=True)
    status = models.PositiveIntegerField(null=True, blank=True, help_text="HTTP status; empty: no answer")
    error = models.TextField(blank=True)
    seconds = models.FloatField(default=0.0)

    class Meta(TypedModelMeta):
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.status or self.error} at {self.at}"
