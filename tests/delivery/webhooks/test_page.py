"""The Webhooks page: register (secret shown once), edit, delete, all audited; errors at their field; attempts."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from delivery.webhooks import services
from delivery.webhooks.models import Webhook, WebhookAttempt, WebhookEvent
from routes.models import AuditEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, alice):
    client.force_login(alice)
    return client


def test_register_shows_the_secret_once_and_audits(admin_client):
    response = admin_client.post(
        reverse("delivery:webhook-list"),
        {"name": "siem", "url": "http://127.0.0.1:9/in", "events": ["delivered", "bounced"], "enabled": "on"},
    )
    hook = Webhook.objects.get()
    assert response.status_code == 200 and hook.secret in response.content.decode()
    assert hook.events == ["delivered", "bounced"] and hook.enabled
    assert hook.secret not in admin_client.get(reverse("delivery:webhook-list")).content.decode()
    assert AuditEntry.objects.filter(object_type="webhook", action="create", actor_name="alice").exists()


def test_a_bad_url_and_no_event_are_shown_at_their_fields(admin_client):
    response = admin_client.post(reverse("delivery:webhook-list"), {"name": "siem", "url": "ftp://x", "events": []})
    body = response.content.decode()
    assert response.status_code == 422 and "text/html" in response["Content-Type"]
    assert "Use an http:// or https:// URL." in body or "This field is required." in body
    assert not Webhook.objects.exists()


def test_edit_keeps_the_secret_when_left_empty_and_delete_is_audited(admin_client):
    hook = services.create(actor="cli:test", name="siem", url="http://127.0.0.1:9/in", events=["delivered"])
    secret = hook.secret
    page = admin_client.get(reverse("delivery:webhook-edit", args=[hook.pk])).content.decode()
    assert "Save webhook" in page and secret not in page
    response = admin_client.post(
        reverse("delivery:webhook-edit", args=[hook.pk]),
        {"name": "siem", "url": "http://127.0.0.1:9/other", "events": ["expired"], "secret": ""},
    )
    assert response.status_code == 302
    hook.refresh_from_db()
    assert (hook.url, hook.events, hook.secret) == ("http://127.0.0.1:9/other", ["expired"], secret)
    assert not hook.enabled
    assert admin_client.post(reverse("delivery:webhook-delete", args=[hook.pk])).status_code == 302
    assert not Webhook.objects.exists()
    actions = list(AuditEntry.objects.filter(object_type="webhook").order_by("id").values_list("action", flat=True))
    assert actions == ["create", "update", "delete"]


def test_the_page_lists_the_last_attempts_with_their_status(admin_client):
    hook = services.create(actor="cli:test", name="siem", url="http://127.0.0.1:9/in", events=["delivered"])
    now = timezone.now()
    row = WebhookEvent.objects.create(webhook=hook, event="delivered", payload="{}", created_at=now)
    WebhookAttempt.objects.create(event=row, webhook=hook, at=now, status=503, error="HTTP 503 Service Unavailable")
    body = admin_client.get(reverse("delivery:webhook-list")).content.decode()
    assert "503" in body and "HTTP 503 Service Unavailable" in body and "Delete" in body and "Edit" in body
