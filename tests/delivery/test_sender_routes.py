"""Routes by sender, end to end against real SMTP peers on loopback: the same recipient domain goes to a
different peer by envelope sender, and a message whose recipients take different routes is split by route."""

from __future__ import annotations

import pytest

from delivery import worker
from tests.delivery.conftest import hosts_text, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_the_sender_picks_the_route_for_the_same_recipient_domain(peers):
    alerts, others, bounces = peers.start(), peers.start(), peers.start()
    make_route("dest.test", hosts_text((others, 0)))
    make_route("dest.test", hosts_text((alerts, 0)), sender="alerts@app.example")
    make_route("dest.test", hosts_text((bounces, 0)), sender="<>")
    from_alerts = queue_message("a@dest.test", sender="alerts@app.example")
    from_bob = queue_message("b@dest.test", sender="bob@app.example")
    from_null = queue_message("c@dest.test", sender="")
    worker.deliver_batch([from_alerts, from_bob, from_null])
    assert [m.rcpt_tos for m in alerts.wait_for_messages(1)] == [("a@dest.test",)]
    assert [m.rcpt_tos for m in others.wait_for_messages(1)] == [("b@dest.test",)]
    assert [m.rcpt_tos for m in bounces.wait_for_messages(1)] == [("c@dest.test",)]
    assert bounces.messages[0].mail_from == "<>"  # the peer records the null sender as MAIL FROM:<>
    for mid in (from_alerts, from_bob, from_null):
        assert recipients(mid) == [(0, "delivered")]


def test_one_message_is_split_by_route_when_its_recipients_take_different_routes(peers):
    app, plain = peers.start(), peers.start()
    make_route("ALL", hosts_text((plain, 0)))
    make_route("dest.test", hosts_text((app, 0)), sender=".app.example")
    mid = queue_message("a@dest.test", "b@other.test", "c@dest.test", sender="alerts@mail.app.example")
    worker.deliver_batch([mid])
    assert [m.rcpt_tos for m in app.wait_for_messages(1)] == [("a@dest.test", "c@dest.test")]
    assert [m.rcpt_tos for m in plain.wait_for_messages(1)] == [("b@other.test",)]
    assert recipients(mid) == [(0, "delivered"), (1, "delivered"), (2, "delivered")]
