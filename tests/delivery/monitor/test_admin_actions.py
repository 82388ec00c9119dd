"""Admin actions go through delivery.spool.actions: deliver now, bounce, delete (confirmed first), mark host up."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils import timezone

from delivery.models import HostStatus, MailLogLine, Message, Recipient
from routes.models import AuditEntry

pytestmark = pytest.mark.django_db


def audits():
    return list(AuditEntry.objects.filter(object_type="queue").order_by("id").values_list("actor_name", "object_repr"))


def act(client, model, action, pks, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(pk) for pk in pks], "index": "0", **extra}
    return client.post(f"/admin/delivery/{model}/", data, follow=True)


def active(**filters):
    return Recipient.objects.filter(state__in=Recipient.ACTIVE, message__bounce_of__isnull=True, **filters).count()


def test_message_deliver_now(admin_client, queued):
    m1, m2 = queued
    response = act(admin_client, "message", "deliver_now", [m1.pk])
    assert "Rescheduled 1 message for immediate delivery." in response.content.decode()
    assert all(r.next_attempt_at <= timezone.now() for r in Recipient.objects.filter(message=m1))
    assert Recipient.objects.get(message=m2).next_attempt_at > timezone.now()
    assert audits() == [("admin", f"Deliver now MID {m1.pk}")]


def test_message_bounce_asks_first_then_bounces(admin_client, queued):
    m1, _m2 = queued
    page = act(admin_client, "message", "bounce_active", [m1.pk]).content.decode()
    assert "Bounce these recipients?" in page and "a@dest.test" in page and 'name="confirm" value="yes"' in page
    assert active() == 3 and audits() == []
    response = act(admin_client, "message", "bounce_active", [m1.pk], confirm="yes")
    assert "2 recipients bounced." in response.content.decode()
    assert active() == 1 and Message.objects.filter(bounce_of=m1).exists()
    assert audits() == [("admin", "Bounce 2 recipients")]


def test_message_delete_after_confirmation(admin_client, queued):
    m1, m2 = queued
    act(admin_client, "message", "delete_active", [m1.pk, m2.pk])
    assert active() == 3
    response = act(admin_client, "message", "delete_active", [m1.pk, m2.pk], confirm="yes")
    assert "3 recipients deleted." in response.content.decode()
    assert active() == 0 and MailLogLine.objects.filter(text=f"Deleted: MID {m2.pk} to [0]").exists()


def test_recipient_bounce_and_delete(admin_client, queued):
    m1, _ = queued
    a, b = Recipient.objects.filter(message=m1).order_by("rid")
    assert (
        "1 recipient bounced."
        in act(admin_client, "recipient", "bounce_selected", [a.pk], confirm="yes").content.decode()
    )
    assert (
        "1 recipient deleted."
        in act(admin_client, "recipient", "delete_from_queue", [b.pk], confirm="yes").content.decode()
    )
    a.refresh_from_db(), b.refresh_from_db()
    assert (a.state, b.state) == (Recipient.State.BOUNCED, Recipient.State.DELETED)
    # Already done: nothing to confirm, nothing changes.
    page = act(admin_client, "recipient", "bounce_selected", [a.pk]).content.decode()
    assert "nothing to do" in page


def test_hoststatus_mark_up(admin_client, queued):
    HostStatus.objects.update(down_until=timezone.now() + timedelta(minutes=5), consecutive_failures=3)
    hs = HostStatus.objects.get(host="mx1.dest.test")
    response = act(admin_client, "hoststatus", "mark_up", [hs.pk])
    assert "Marked 1 host up; 1 queued message sent now." in response.content.decode()
    hs.refresh_from_db()
    assert hs.down_until is None and hs.consecutive_failures == 0
    assert audits() == [("admin", "Mark host up mx1.dest.test:25")]


def test_read_only_staff_sees_no_queue_actions_and_cannot_post_them(client, carol, queued):
    from tests.conftest import PASSWORD

    carol.is_staff = True
    carol.save()
    assert client.login(username="carol", password=PASSWORD)
    page = client.get("/admin/delivery/message/").content.decode()
    assert "bounce_active" not in page and "deliver_now" not in page
    assert "mark_up" not in client.get("/admin/delivery/hoststatus/").content.decode()
    m1, _ = queued
    act(client, "message", "bounce_active", [m1.pk], confirm="yes")
    act(client, "hoststatus", "mark_up", list(HostStatus.objects.values_list("pk", flat=True)))
    assert active() == 3 and audits() == []


def test_operator_staff_has_the_actions(client, bob, queued):
    from tests.conftest import PASSWORD

    bob.is_staff = True
    bob.save()
    assert client.login(username="bob", password=PASSWORD)
    page = client.get("/admin/delivery/message/").content.decode()
    assert "bounce_active" in page and "deliver_now" in page and "delete_active" in page
    assert "mark_up" in client.get("/admin/delivery/hoststatus/").content.decode()
    m1, _ = queued
    act(client, "message", "bounce_active", [m1.pk], confirm="yes")
    assert active() == 1 and audits() == [("bob", "Bounce 2 recipients")]


def test_queue_state_stays_read_only(admin_client, queued):
    m1, _ = queued
    r = Recipient.objects.get(message=m1, rid=1)
    assert admin_client.post(f"/admin/delivery/recipient/{r.pk}/change/", {"state": "delivered"}).status_code == 403
    assert admin_client.post(f"/admin/delivery/message/{m1.pk}/delete/").status_code == 403
    assert "delete_selected" not in admin_client.get("/admin/delivery/message/").content.decode()
