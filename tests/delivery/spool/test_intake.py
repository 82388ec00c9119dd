"""Durable acceptance: ICIDs reserved in blocks, and the listener's group commit stored all or nothing."""

from __future__ import annotations

import pytest
from django import db
from django.utils import timezone

from delivery import maillog
from delivery.models import MailLogLine, Message, MessageBody, Recipient
from delivery.spool import intake

SENDER = "alice@sender.test"


@pytest.mark.django_db
def test_reserved_icids_are_fresh_and_unique():
    first = intake.reserve_icids(5)
    single = intake.new_icid()
    second = intake.reserve_icids(5)
    everything = [*first, single, *second]
    assert len(set(everything)) == 11
    assert first == sorted(first) and max(first) < single < min(second)


@pytest.mark.django_db(transaction=True)
def test_group_commit_of_many_messages_is_all_or_nothing(monkeypatch):
    now = timezone.now()
    incomings = [
        intake.Incoming(icid=7, sender=SENDER, recipients=(("bob@dest.test", "dest.test"),), data=b"x" * i)
        for i in range(1, 4)
    ]
    real = maillog.writer.line_rows

    def unstorable(lines, *, at):  # the last rows written: a log line the database refuses (no time)
        return [(None, *row[1:]) for row in real(lines, at=at)]

    monkeypatch.setattr(maillog.writer, "line_rows", unstorable)
    with pytest.raises(db.IntegrityError):
        intake.accept_many(incomings, now=now)
    assert (Message.objects.count(), MessageBody.objects.count(), Recipient.objects.count()) == (0, 0, 0)
    assert MailLogLine.objects.count() == 0
    monkeypatch.setattr(maillog.writer, "line_rows", real)
    mids = intake.accept_many(incomings, [maillog.lines.icid_close(6)], now=now)
    assert mids == sorted(mids) and len(mids) == 3
    assert [m.size for m in Message.objects.order_by("id")] == [1, 2, 3]
    assert [bytes(b.data) for b in MessageBody.objects.order_by("message_id")] == [b"x", b"xx", b"xxx"]
    assert list(Message.objects.values_list("state", flat=True).distinct()) == [Message.State.QUEUED]
    assert MailLogLine.objects.filter(text="ICID 6 close").exists()
    assert MailLogLine.objects.filter(mid=mids[2], text=f"MID {mids[2]} queued for delivery").exists()
