"""Delay warnings (the bounce profile's "Send Delay Warning Messages"), end to end against real SMTP peers on
loopback: at most the maximum, spaced by at least the interval, to the sender's peer; none for <>; none when off."""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes

import pytest
from django.utils import timezone

from delivery import worker
from delivery.models import BounceProfile, Message, Recipient
from tests.delivery.conftest import grep, hosts_text, log, queue_message
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def setup_routes(peers, *, send_warnings: bool):
    busy = peers.start(rcpt="452 4.3.1 Insufficient system resources")
    sender_peer = peers.start()
    profile = BounceProfile.objects.create(
        name="warn", send_warnings=send_warnings, warning_interval=3600, warning_max=2
    )
    make_route("dest.test", hosts_text((busy, 0)), bounce_profile_id=profile.pk)
    make_route("origin.test", hosts_text((sender_peer, 0)))
    return busy, sender_peer


def attempt(mid: int) -> tuple[int, ...]:
    """One more delivery attempt of the message, due now; returns the MIDs it generated (delivered at once)."""
    Recipient.objects.filter(message_id=mid).update(next_attempt_at=timezone.now())
    Message.objects.filter(pk=mid).update(next_attempt_at=timezone.now())
    generated = worker.deliver_batch([mid]).generated
    if generated:
        worker.deliver_batch(list(generated))
    return tuple(generated)


def an_hour_passes(mid: int) -> None:
    """The interval since the last warning has passed (its time moved back, rather than waiting an hour)."""
    message = Message.objects.get(pk=mid)
    if message.last_warning_at is not None:
        Message.objects.filter(pk=mid).update(last_warning_at=message.last_warning_at - timedelta(seconds=3600))


def test_a_message_that_keeps_getting_4xx_gets_at_most_max_warnings_spaced_by_the_interval(peers):
    busy, sender_peer = setup_routes(peers, send_warnings=True)
    mid = queue_message("a@dest.test")
    assert attempt(mid) == ()  # the first delay: no warning (the ESA warns from the second attempt)
    (first,) = attempt(mid)  # the second: the first warning
    assert attempt(mid) == ()  # sooner than the interval
    an_hour_passes(mid)
    (second,) = attempt(mid)
    an_hour_passes(mid)
    assert attempt(mid) == ()  # the maximum (2) is reached
    assert Recipient.objects.get(message_id=mid).state == "delayed"
    got = sender_peer.wait_for_messages(2)
    assert len(got) == 2 and all(m.rcpt_tos == ("sender@origin.test",) for m in got)
    assert all(m.mail_from in ("", "<>") for m in got)
    parsed = message_from_bytes(got[0].content)
    assert parsed["Subject"] == "Delivery Status Notification (Delay)"
    assert parsed.get_content_type() == "multipart/report"
    report = got[0].content.decode()
    assert "Action: delayed" in report and "Status: 4.3.1" in report and "Will-Retry-Until: " in report
    assert "Final-Recipient: rfc822; a@dest.test" in report and "Action: failed" not in report
    lines = log()
    assert f"MID {first} was generated for delay warning of MID {mid}" in lines
    assert f"MID {second} was generated for delay warning of MID {mid}" in lines
    assert len(grep(f"was generated for delay warning of MID {mid}$", lines)) == 2
    message = Message.objects.get(pk=mid)
    assert message.warnings_sent == 2
    assert len(busy.messages) == 0


def test_no_warning_to_the_null_sender(peers):
    _, sender_peer = setup_routes(peers, send_warnings=True)
    mid = queue_message("a@dest.test", sender="")
    for _ in range(3):
        assert attempt(mid) == ()
    assert Message.objects.get(pk=mid).warnings_sent == 0 and sender_peer.messages == []
    assert grep("delay warning", log()) == []


def test_no_warning_when_the_profile_sends_none(peers):
    _, sender_peer = setup_routes(peers, send_warnings=False)
    mid = queue_message("a@dest.test")
    for _ in range(3):
        assert attempt(mid) == ()
    assert Message.objects.get(pk=mid).warnings_sent == 0 and sender_peer.messages == []
    assert grep("delay warning", log()) == []
