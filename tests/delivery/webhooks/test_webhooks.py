"""Webhooks end to end: a delivery writes the event row, the sender POSTs it signed to a real loopback receiver."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import worker
from delivery.models import Message, Recipient
from delivery.spool import actions
from delivery.webhooks import send, services
from delivery.webhooks.models import Webhook, WebhookAttempt, WebhookEvent
from esaroutes import egress
from routes.models import AuditEntry
from tests.delivery.conftest import hosts_text, queue_message, recipients
from tests.routes.helpers import make_route
from tests.support.webhooks import receivers, start  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def _hook(url, events=("delivered", "bounced"), secret="s3cret"):
    return services.create(actor="cli:test", name="siem", url=url, events=list(events), secret=secret)


def test_a_delivery_is_posted_signed_to_the_receiver(peers, receivers):  # noqa: F811
    receiver = start(receivers, 200)
    _hook(receiver.url)
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delivered")]
    (row,) = WebhookEvent.objects.all()
    assert (row.event, row.state) == ("delivered", "pending")
    assert send.send_due() == 1
    (got,) = receiver.requests
    assert got.path == "/hook?x=1"
    assert got.headers["X-Esaroutes-Event"] == "delivered"
    assert got.headers["X-Esaroutes-Delivery"] == str(row.pk)
    stamp, signed = got.headers["X-Esaroutes-Timestamp"], got.headers["X-Esaroutes-Signature"]
    assert send.verify("s3cret", stamp, got.body, signed)
    assert not send.verify("wrong", stamp, got.body, signed)
    body = json.loads(got.body)
    assert body["event"] == "delivered" and body["mid"] == mid and body["recipient"] == "a@dest.test"
    assert body["sender"] == "sender@origin.test" and body["code"] == 250 and body["host"] == peer.host
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_status) == ("sent", 1, 200)
    assert list(WebhookAttempt.objects.values_list("status", flat=True)) == [200]
    assert send.send_due() == 0  # sent once


def test_a_500_is_retried_with_back_off_until_a_200(peers, receivers):  # noqa: F811
    receiver = start(receivers, 500, 200)
    _hook(receiver.url)
    peer = peers.start(rcpt="550 5.1.1 user unknown")
    make_route("dest.test", hosts_text((peer, 0)))
    make_route("origin.test", "/dev/null")
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    (row,) = WebhookEvent.objects.filter(event="bounced")
    now = timezone.now()
    assert send.send_due(now=now) == 0
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_status) == ("pending", 1, 500)
    assert row.last_error == "HTTP 500 Internal Server Error"
    assert row.next_attempt_at >= now + timedelta(seconds=29)
    assert send.send_due(now=now + timedelta(seconds=5)) == 0 and len(receiver.requests) == 1  # not due yet
    assert send.send_due(now=now + timedelta(seconds=31)) == 1
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_status) == ("sent", 2, 200)
    assert [r.headers["X-Esaroutes-Delivery"] for r in receiver.requests] == [str(row.pk)] * 2
    assert list(WebhookAttempt.objects.order_by("id").values_list("status", flat=True)) == [500, 200]


def test_only_the_events_a_webhook_wants_are_written(peers, receivers):  # noqa: F811
    _hook(start(receivers).url, events=["bounced"])
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    worker.deliver_batch([queue_message("a@dest.test")])
    assert not WebhookEvent.objects.exists()


def test_a_receiver_outside_the_allowed_networks_is_not_connected(peers, receivers, settings):  # noqa: F811
    start(receivers)  # 127.0.0.1
    outside = start(receivers, host="127.0.0.2")
    _hook(outside.url)
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    worker.deliver_batch([queue_message("a@dest.test")])
    settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS = egress.parse("127.0.0.1/32")
    assert send.send_due() == 0
    (attempt,) = WebhookAttempt.objects.all()
    assert attempt.status is None
    assert attempt.error == "127.0.0.2 is outside ESAROUTES_DELIVERY_ALLOWED_NETWORKS: not connected"
    assert outside.requests == []


def test_an_expiry_is_its_own_event_not_a_bounce(peers, receivers):  # noqa: F811
    receiver = start(receivers)
    _hook(receiver.url, events=["expired", "bounced"])
    make_route("dest.test", hosts_text((peers.refused(), 0)))
    make_route("origin.test", "/dev/null")
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])  # refused: delayed, still queued
    now = timezone.now()
    Message.objects.filter(pk=mid).update(received_at=now - timedelta(hours=73), next_attempt_at=now)
    Recipient.objects.filter(message_id=mid).update(next_attempt_at=now)
    worker.deliver_batch([mid])  # past the queue lifetime: 5.4.7
    assert recipients(mid) == [(0, "bounced")]
    (row,) = WebhookEvent.objects.all()
    assert row.event == "expired"
    assert send.send_due() == 1
    (got,) = receiver.requests
    assert got.headers["X-Esaroutes-Event"] == "expired"
    body = json.loads(got.body)
    assert (body["event"], body["mid"], body["recipient"]) == ("expired", mid, "a@dest.test")
    assert body["dsn_status"] == "5.4.7" and body["response"].startswith("5.4.7 Delivery expired")


def test_suspending_a_domain_is_an_event(receivers):  # noqa: F811
    receiver = start(receivers)
    _hook(receiver.url, events=["suspended"])
    actions.suspend_delivery(["dest.test"], actor="cli:test")
    assert send.send_due() == 1
    body = json.loads(receiver.requests[0].body)
    assert (body["event"], body["domain"], body["by"]) == ("suspended", "dest.test", "cli:test")


def test_a_row_of_a_deleted_webhook_is_dropped_and_never_fails_recording(peers, receivers):  # noqa: F811
    receiver = start(receivers)
    hook = _hook(receiver.url, events=["delivered"])
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    mid = queue_message("a@dest.test")
    from delivery.webhooks import events

    events.subscribers()  # the recorder's list is a few seconds old: it still names the webhook
    Webhook.objects.filter(pk=hook.pk).delete()  # behind the services' back: no forget()
    worker.deliver_batch([mid])
    assert Recipient.objects.get(message_id=mid).state == "delivered"
    assert WebhookEvent.objects.count() == 1
    assert send.send_due() == 0 and not WebhookEvent.objects.exists() and receiver.requests == []


def test_registrations_are_audited_without_the_secret():
    hook = services.create(actor="cli:test", name="siem", url="http://127.0.0.1:9/x", events=["delivered"])
    assert len(hook.secret) >= 32
    services.update(hook, actor="cli:test", events=["delivered", "expired"], secret="new")
    services.delete(hook, actor="cli:test")
    entries = list(AuditEntry.objects.filter(object_type="webhook").order_by("id"))
    assert [e.action for e in entries] == ["create", "update", "delete"]
    assert all(hook.secret not in json.dumps([e.before, e.after]) for e in entries)
    assert entries[1].after["events"] == ["delivered", "expired"] and entries[1].after["secret"] == "(changed)"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "ftp://127.0.0.1/x"}, "url"),
        ({"events": ["sent"]}, "events"),
        ({"events": []}, "events"),
        ({"name": ""}, "name"),
    ],
)
def test_a_bad_registration_names_its_field(kwargs, field):
    from django.core.exceptions import ValidationError

    values = {"name": "siem", "url": "http://127.0.0.1:9/x", "events": ["delivered"]} | kwargs
    with pytest.raises(ValidationError) as caught:
        services.create(actor="cli:test", **values)
    assert field in caught.value.message_dict


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert send.signature("k", 1700000000, b"{}") == f"sha256={expected}"


@pytest.mark.parametrize(("attempts", "seconds"), [(1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (20, 3600)])
def test_retry_delay_doubles_to_an_hour(attempts, seconds):
    assert send.retry_delay(attempts) == timedelta(seconds=seconds)
