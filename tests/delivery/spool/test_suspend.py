"""Suspend and resume the deliveries to a domain (`suspenddel`/`resumedel`), against real peers on loopback."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import worker
from delivery.models import DeliverySuspension, Message, Recipient
from delivery.spool import actions
from routes.models import AuditEntry
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_suspend_restart_resume_delivers_nothing_then_everything(peers):
    peer = peers.start()
    other = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    make_route("other.test", hosts_text((other, 0)))
    assert actions.suspend_delivery(["dest.test"], actor="cli:root") == ["dest.test"]
    assert actions.suspend_delivery(["dest.test"], actor="cli:root") == []  # already: nothing changes
    one = queue_message("a@dest.test")
    two = queue_message("b@dest.test", "c@other.test")
    assert worker.deliver_batch([one, two]).claimed == 2
    (got,) = other.wait_for_messages(1)
    assert got.rcpt_tos == ("c@other.test",)  # the other domain's mail goes on
    assert peer.connections == 0 and peer.messages == []
    assert recipients(one) == [(0, "queued")] and recipients(two) == [(0, "queued"), (1, "delivered")]
    assert set(Recipient.objects.filter(domain="dest.test").values_list("attempts", flat=True)) == {0}
    assert set(Message.objects.filter(pk__in=[one, two]).values_list("next_attempt_at", flat=True)) == {None}
    lines = log()
    assert "Deliveries suspended [dest.test] by cli:root" in lines
    assert grep(r"^Deliveries are currently suspended \[dest\.test\]$", lines)

    worker.shutdown()  # restart: nothing in memory survives, the suspension is in the database
    assert list(DeliverySuspension.objects.values_list("domain", flat=True)) == ["dest.test"]
    assert worker.deliver_batch().claimed == 0  # nothing is due while suspended: the sweep finds nothing
    three = queue_message("d@dest.test")  # still accepted and queued
    worker.deliver_batch([three])
    assert peer.connections == 0 and recipients(three) == [(0, "queued")]

    assert actions.resume_delivery(["dest.test"], actor="cli:root") == ["dest.test"]
    assert actions.resume_delivery(["dest.test"], actor="cli:root") == []
    assert worker.deliver_batch().claimed == 3  # the backlog is due at once
    got = peer.wait_for_messages(3)
    assert sorted(r for m in got for r in m.rcpt_tos) == ["a@dest.test", "b@dest.test", "d@dest.test"]
    assert Recipient.objects.exclude(state="delivered").count() == 0  # nothing lost
    assert "Deliveries resumed [dest.test] by cli:root" in log()
    assert list(
        AuditEntry.objects.filter(object_type="queue").order_by("id").values_list("object_repr", flat=True)
    ) == [
        "Suspend delivery to dest.test",
        "Resume delivery to dest.test",
    ]


def test_suspend_all_holds_every_domain_and_a_suspended_recipient_never_expires(peers):
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    make_route("other.test", hosts_text((peer, 0)))
    mid = queue_message("a@dest.test", "b@other.test")
    Recipient.objects.filter(message_id=mid).update(attempts=3)  # tried before, and far past its lifetime
    Message.objects.filter(pk=mid).update(received_at=timezone.now() - timedelta(hours=80))
    actions.suspend_delivery(["ALL"], actor="cli:root")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "queued"), (1, "queued")] and peer.connections == 0
    assert {"Deliveries are currently suspended [dest.test]", "Deliveries are currently suspended [other.test]"} <= set(
        log()
    )
    # resuming one domain under ALL resumes nothing: ALL is what suspends it
    assert actions.resume_delivery(["dest.test"], actor="cli:root") == []
    assert actions.resume_delivery(["ALL"], actor="cli:root") == ["ALL"]
    worker.deliver_batch()
    assert recipients(mid) == [(0, "bounced"), (1, "bounced")]  # its lifetime was over: the expiry comes now
    assert len(grep(r"5\.4\.7 - Delivery expired", log(mid))) == 2
