"""delivery.spool.record: whatever bytes a peer sends (not UTF-8, NUL, controls, huge replies) are stored and
shown safely, and a recording failure never becomes a re-send of what a peer accepted. Real loopback peers, both
backends."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from delivery import maillog, worker
from delivery.models import DeliveryAttempt, MailLogLine, Message, Recipient
from delivery.outcome import Attempt, Final, Report
from delivery.spool import record
from tests.delivery.conftest import queue_message
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]

A, B, C = "a@dest.test", "b@dest.test", "c@dest.test"


def refuse_b(reply: bytes) -> Any:
    """An RCPT script: `reply` (raw bytes, pushed as they are) for B, the others accepted."""
    return lambda address: reply if address == B else None


def log_texts(mid: int) -> list[str]:
    return [t for t in MailLogLine.objects.order_by("id").values_list("text", flat=True) if f"MID {mid} " in t]


def mail_current() -> str:
    maillog.writer.flush()
    return maillog.writer.log_file().path.read_bytes().decode("utf-8")


def assert_safe(text: str) -> None:
    """Encodable as UTF-8, no NUL and no control character but the line separator."""
    text.encode("utf-8")
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", text), repr(text)


def attempts(mid: int) -> list[tuple[int, str, int | None, str]]:
    return list(
        DeliveryAttempt.objects.filter(message_id=mid).order_by("id").values_list("port", "outcome", "code", "response")
    )


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_a_451_with_bytes_that_are_not_utf8_delays_its_recipient_and_the_others_get_it_once(peers, pipelining):
    peer = peers.start(pipelining=pipelining, rcpt=refuse_b(b"451-4.3.0 first line\r\n451 \xff\xfe\xc3\x28 second"))
    make_route("dest.test", f"{peer.host}:{peer.port}")
    mid = queue_message(A, B, C)
    worker.deliver_batch([mid])
    [received] = peer.wait_for_messages(1)
    assert received.rcpt_tos == (A, C)
    r = Recipient.objects.get(message_id=mid, rid=1)
    assert (r.state, r.last_code) == ("delayed", 451)
    assert r.last_response == "4.3.0 first line\n\\xff\\xfe\\xc3( second"
    assert set(Recipient.objects.filter(message_id=mid).values_list("rid", "state")) == {
        (0, "delivered"),
        (1, "delayed"),
        (2, "delivered"),
    }
    [(_, outcome, code, response)] = [a for a in attempts(mid) if a[1] != "delivered"]
    assert (outcome, code, response) == ("delayed", 451, "4.3.0 first line\n\\xff\\xfe\\xc3( second")
    [delayed] = [t for t in log_texts(mid) if t.startswith("Delayed:")]
    assert delayed.endswith(r"('451', ['4.3.0 first line', '\\xff\\xfe\\xc3( second'])")
    assert delayed in mail_current()
    assert len(peer.messages) == 1  # and nothing was sent twice


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (b"451 4.3.0 nul\x00here", "4.3.0 nul\\x00here"),
        (b"451 4.3.0 bell\x07 esc\x1b[31m del\x7f cr\rafter", "4.3.0 bell\\x07 esc\\x1b[31m del\\x7f cr\\x0dafter"),
        (
            b"451 4.3.0 c1 \xc2\x85 line sep \xe2\x80\xa8 bidi \xe2\x80\xae",
            "4.3.0 c1 \\u0085 line sep \\u2028 bidi \\u202e",
        ),
    ],
    ids=["nul", "controls", "unicode-separators"],
)
def test_nul_and_control_characters_are_stored_escaped(peers, raw, stored):
    peer = peers.start(rcpt=refuse_b(raw))
    make_route("dest.test", f"{peer.host}:{peer.port}")
    mid = queue_message(A, B, C)
    worker.deliver_batch([mid])
    assert peer.wait_for_messages(1)[0].rcpt_tos == (A, C)
    r = Recipient.objects.get(message_id=mid, rid=1)
    assert (r.state, r.last_response) == ("delayed", stored)
    for text in [r.last_response, *(a[3] for a in attempts(mid)), *log_texts(mid)]:
        assert_safe(text)
    assert len(peer.messages) == 1


def test_a_huge_multi_line_reply_is_cut_with_a_marker(peers):
    lines = [b"451-4.3.0 " + bytes([0x41 + i % 26]) * 200 for i in range(150)]  # 30 KB, under the 32 KiB limit
    peer = peers.start(rcpt=refuse_b(b"\r\n".join([*lines, b"451 4.3.0 last"])))
    make_route("dest.test", f"{peer.host}:{peer.port}")
    mid = queue_message(A, B, C)
    worker.deliver_batch([mid])
    assert peer.wait_for_messages(1)[0].rcpt_tos == (A, C)
    r = Recipient.objects.get(message_id=mid, rid=1)
    assert r.state == "delayed" and r.last_code == 451
    assert r.last_response.startswith("4.3.0 " + "A" * 200 + "\n4.3.0 " + "B" * 200)
    assert re.search(r" \[\.\.\. cut at 2000 of 31\d\d\d characters\]$", r.last_response)
    assert len(r.last_response) < 2100
    [delayed] = [t for t in log_texts(mid) if t.startswith("Delayed:")]
    assert len(delayed) < 2500 and "cut at 2000" in delayed


def test_the_tracking_and_queue_pages_show_such_a_reply_escaped(peers, alice):
    peer = peers.start(rcpt=refuse_b(b"451-4.3.0 <b>bold</b>\r\n451 \xff\x00\x1b"))
    make_route("dest.test", f"{peer.host}:{peer.port}")
    mid = queue_message(A, B, C)
    worker.deliver_batch([mid])
    client = Client()
    client.force_login(alice)
    for url in (f"/tracking/{mid}/", "/queue/", f"/log/?mid={mid}"):
        page = client.get(url)
        assert page.status_code == 200, url
        body = page.content.decode()
        assert "<b>bold</b>" not in body, url
    assert "&lt;b&gt;bold&lt;/b&gt;" in client.get(f"/tracking/{mid}/").content.decode()


def test_a_report_that_cannot_be_recorded_as_is_still_records_its_deliveries(peers, monkeypatch):
    """Defence in depth: record() failing for one report, in a way no retry cures, never re-sends what the
    peer accepted, and never holds up the other messages of the group commit."""
    peer = peers.start()
    make_route("dest.test", f"{peer.host}:{peer.port}")
    bad, good = queue_message(A, B), queue_message(C)
    real_record = record.record
    calls: list[int] = []

    def flaky_record(reports: Any, **kwargs: Any) -> list[int]:
        calls.append(len(reports))
        if any(f.mid == bad and "queued as" in f.text for r in reports for f in r.finals):
            raise ValueError("something no retry cures")
        return real_record(reports, **kwargs)

    monkeypatch.setattr(record, "record", flaky_record)
    worker.deliver_batch([bad, good])
    assert len(peer.wait_for_messages(2)) == 2
    assert set(Recipient.objects.values_list("message_id", "state")) == {(bad, "delivered"), (good, "delivered")}
    assert Message.objects.get(pk=bad).state == Message.objects.get(pk=good).state == "done"
    worker.deliver_batch([bad, good])  # nothing due: nothing is sent again
    assert len(peer.messages) == 2


def test_a_report_with_texts_no_database_takes_is_recorded_safe_and_the_others_as_they_are():
    """The group commit holding one report whose texts neither database takes (as before the SMTP edge made
    them safe): every report is recorded, that one with safe texts, the delivery in it as delivered."""
    make_route("dest.test", "127.0.0.1:2525")
    hostile, plain = queue_message(A, B), queue_message(C)
    text = "4.3.0 first\n\udcff\udcfe\udcc3( nul\x00"

    def report(mid: int, *, delayed: str | None = None) -> Report:
        r = Report(
            finals=[Final(mid, 0, "delivered", 250, "2.0.0 Ok", "127.0.0.1")],
            attempts=[Attempt(mid, 0, 7, "127.0.0.1", "127.0.0.1", 2525, 250, "2.0.0 Ok", "delivered")],
            lines=[maillog.lines.message_done(7, mid, [0])],
        )
        if delayed is not None:
            r.finals.append(Final(mid, 1, "delayed", 451, delayed, "127.0.0.1", "4.3.0"))
            r.attempts.append(Attempt(mid, 1, 7, "127.0.0.1", "127.0.0.1", 2525, 451, delayed, "next_host"))
            r.lines.append(
                maillog.lines.rcpt_outcome(
                    maillog.lines.DELAYED, 7, mid, "s@o.test", B, 1, "4.3.0", "busy", 451, delayed
                )
            )
        return r

    worker._record([report(hostile, delayed=text), report(plain)])
    assert set(Recipient.objects.values_list("message_id", "rid", "state")) == {
        (hostile, 0, "delivered"),
        (hostile, 1, "delayed"),
        (plain, 0, "delivered"),
    }
    r = Recipient.objects.get(message_id=hostile, rid=1)
    assert (r.state, r.last_response) == ("delayed", "4.3.0 first\n\\xff\\xfe\\xc3( nul\\x00")
    assert DeliveryAttempt.objects.get(message_id=hostile, recipient__rid=1).response == r.last_response
    assert Message.objects.get(pk=plain).state == "done"
    assert [t for t in log_texts(hostile) if t.startswith("Delayed:")]
