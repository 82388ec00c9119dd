"""The Django admin shows webhooks read-only: a registration is made, changed and deleted on the Webhooks page
(audited), never in the admin; an event's or an attempt's row may be deleted there, never added or changed."""

from __future__ import annotations

import pytest
from django.utils import timezone

from delivery.webhooks import services
from delivery.webhooks.models import WebhookAttempt, WebhookEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows():
    hook = services.create(actor="cli:test", name="siem", url="http://127.0.0.1:9/in", events=["delivered"])
    now = timezone.now()
    event = WebhookEvent.objects.create(webhook=hook, event="delivered", payload="{}", created_at=now)
    attempt = WebhookAttempt.objects.create(event=event, webhook=hook, at=now, status=503, error="HTTP 503")
    return {"webhook": hook, "webhookevent": event, "webhookattempt": attempt}


@pytest.mark.parametrize(("model", "deletable"), [("webhook", False), ("webhookevent", True), ("webhookattempt", True)])
def test_webhook_rows_are_shown_never_added_or_changed(admin_client, rows, model, deletable):
    pk = rows[model].pk
    assert admin_client.get(f"/admin/webhooks/{model}/add/").status_code == 403
    page = admin_client.get(f"/admin/webhooks/{model}/{pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert admin_client.get(f"/admin/webhooks/{model}/{pk}/delete/").status_code == (200 if deletable else 403)


def test_the_registration_hides_its_secret(admin_client, rows):
    body = admin_client.get(f"/admin/webhooks/webhook/{rows['webhook'].pk}/change/").content.decode()
    assert "http://127.0.0.1:9/in" in body and rows["webhook"].secret not in body
