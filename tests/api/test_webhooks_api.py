"""/api/v1/webhooks: CRUD over the audited services, secret write-only (shown once), If-Match, roles."""

from __future__ import annotations

from django.utils import timezone

from delivery.webhooks import services
from delivery.webhooks.models import Webhook, WebhookAttempt, WebhookEvent
from routes.models import AuditEntry
from tests.api.conftest import is_problem

URL = "/api/v1/webhooks/"


def test_create_shows_the_secret_once_then_never(api_client, alice):
    client = api_client(alice, name="ops")
    response = client.post(
        URL, {"name": "siem", "url": "http://127.0.0.1:9/in", "events": ["delivered"]}, format="json"
    )
    assert response.status_code == 201, response.content
    created = response.json()
    hook = Webhook.objects.get()
    assert created["secret"] == hook.secret and created["events"] == ["delivered"]
    listed = client.get(URL).json()
    assert "secret" not in listed["results"][0] and hook.secret not in str(listed)
    assert "secret" not in client.get(f"{URL}{hook.pk}/").json()
    entry = AuditEntry.objects.get(object_type="webhook", action="create")
    assert entry.actor_name == "api:alice/ops"


def test_update_needs_if_match_and_delete_is_audited(api_client, alice):
    client = api_client(alice)
    hook = services.create(actor="cli:test", name="siem", url="http://127.0.0.1:9/in", events=["delivered"])
    path = f"{URL}{hook.pk}/"
    is_problem(client.patch(path, {"enabled": False}, format="json"), 428)
    etag = client.get(path)["ETag"]
    is_problem(client.patch(path, {"enabled": False}, format="json", HTTP_IF_MATCH='"stale"'), 412)
    response = client.patch(path, {"enabled": False, "events": ["bounced"]}, format="json", HTTP_IF_MATCH=etag)
    assert response.status_code == 200 and response.json()["events"] == ["bounced"]
    hook.refresh_from_db()
    assert not hook.enabled
    etag = client.get(path)["ETag"]
    assert client.delete(path, HTTP_IF_MATCH=etag).status_code == 204
    assert not Webhook.objects.exists()
    assert list(AuditEntry.objects.filter(object_type="webhook").values_list("action", flat=True).order_by("id")) == [
        "create",
        "update",
        "delete",
    ]


def test_bad_input_names_its_field(api_client, alice):
    client = api_client(alice)
    is_problem(
        client.post(URL, {"name": "x", "url": "http://127.0.0.1:9/", "events": ["sent"]}, format="json"),
        400,
        "events.0",
    )
    is_problem(client.post(URL, {"name": "x", "url": "not a url", "events": ["delivered"]}, format="json"), 400, "url")
    is_problem(
        client.post(URL, {"name": "x", "url": "ftp://127.0.0.1/", "events": ["delivered"]}, format="json"), 400, "url"
    )
    assert not Webhook.objects.exists()


def test_attempts_are_listed_newest_first(api_client, alice):
    hook = services.create(actor="cli:test", name="siem", url="http://127.0.0.1:9/in", events=["delivered"])
    now = timezone.now()
    row = WebhookEvent.objects.create(webhook=hook, event="delivered", payload="{}", created_at=now)
    for status in (500, 200):
        WebhookAttempt.objects.create(event=row, webhook=hook, at=now, status=status)
    body = api_client(alice).get(f"{URL}{hook.pk}/attempts/").json()
    assert [a["status"] for a in body["results"]] == [200, 500] and body["results"][0]["event_name"] == "delivered"


def test_only_administrators_and_never_a_read_only_token_to_change(api_client, alice, bob, carol):
    payload = {"name": "x", "url": "http://127.0.0.1:9/", "events": ["delivered"]}
    is_problem(api_client(bob).get(URL), 403)
    is_problem(api_client(carol).get(URL), 403)
    is_problem(api_client(bob).post(URL, payload, format="json"), 403)
    assert api_client(alice, read_only=True).get(URL).status_code == 200
    is_problem(api_client(alice, read_only=True).post(URL, payload, format="json"), 403)
    assert not Webhook.objects.exists()
