"""Hold and release recipients (`holdrecipients`/`releaserecipients`), against real peers on loopback."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import worker
from delivery.models import Message, Recipient
from delivery.spool import actions
from routes.models import AuditEntry
from tests.delivery.conftest import hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_held_recipients_wait_never_expire_and_go_when_released(peers):
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    one = queue_message("a@dest.test", "b@dest.test")
    two = queue_message("c@dest.test", sender="other@origin.test")
    held = actions.select_recipients(mids=[one]).filter(address="a@dest.test")
    assert actions.hold_recipients(held, actor="cli:root") == 1
    assert actions.hold_recipients(held, actor="cli:root") == 0  # already held
    assert actions.hold_recipients(actions.select_recipients(sender="other@origin.test"), actor="cli:root") == 1
    worker.deliver_batch([one, two])
    (got,) = peer.wait_for_messages(1)
    assert got.rcpt_tos == ("b@dest.test",)  # the message's other recipient goes on
    assert recipients(one) == [(0, "queued"), (1, "delivered")] and recipients(two) == [(0, "queued")]
    assert set(Recipient.objects.filter(held=True).values_list("attempts", flat=True)) == {0}
    assert set(Message.objects.filter(pk__in=[one, two]).values_list("state", "next_attempt_at")) == {("queued", None)}
    lines = log()
    assert f"Held: MID {one} to [0] by cli:root" in lines and f"Held: MID {two} to [0] by cli:root" in lines

    # held far past its queue lifetime, tried before: still no expiry while held
    Message.objects.filter(pk=two).update(received_at=timezone.now() - timedelta(hours=80))
    Recipient.objects.filter(message_id=two).update(attempts=2, next_attempt_at=timezone.now())
    Message.objects.filter(pk=two).update(next_attempt_at=timezone.now())
    worker.deliver_batch([two])
    assert recipients(two) == [(0, "queued")] and len(peer.messages) == 1

    worker.shutdown()  # a restart changes nothing: the hold is in the database
    assert worker.deliver_batch().claimed == 0
    assert actions.release_recipients(actions.select_recipients(everything=True), actor="cli:root") == 2
    worker.deliver_batch()
    got = peer.wait_for_messages(2)
    assert got[1].rcpt_tos == ("a@dest.test",)
    assert recipients(one) == [(0, "delivered"), (1, "delivered")]
    assert recipients(two) == [(0, "bounced")]  # its lifetime ran out while held: the expiry comes at release
    lines = log()
    assert f"Released: MID {one} to [0] by cli:root" in lines and f"Released: MID {two} to [0] by cli:root" in lines
    assert list(
        AuditEntry.objects.filter(object_type="queue").order_by("id").values_list("object_repr", flat=True)
    ) == [
        "Hold 1 recipient",
        "Hold 1 recipient",
        "Release 2 recipients",
    ]
