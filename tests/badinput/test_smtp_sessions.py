"""Bad SMTP clients against the real listener: the exact reply, a bounded cost, nothing half-stored, and the
listener still serving everyone else afterwards."""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import pytest

from delivery.models import MailLogLine, Message, MessageBody, Recipient
from tests.listener.conftest import log_texts, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

GREETING = re.compile(rb"220 relay\.test ESMTP esaroutes")


def session(smtpd: Any, *, ehlo: bool = True) -> Any:
    c = smtpd.raw()
    assert GREETING.match(c.reply())
    if ehlo:
        assert c.cmd(b"EHLO client.test").startswith(b"250-relay.test")
    return c


def stored() -> tuple[int, int, int, int]:
    """Messages, bodies, recipients and log lines of a message: all zero when nothing was half-stored."""
    return (
        Message.objects.count(),
        MessageBody.objects.count(),
        Recipient.objects.count(),
        MailLogLine.objects.filter(mid__isnull=False).count(),
    )


def assert_still_serving(smtpd: Any) -> None:
    errors, reply = smtpd.send(["after@dest.test"], b"Subject: still here\r\n\r\nx\r\n")
    assert errors == {} and reply.startswith("2.0.0 Ok: queued as ")


# --- commands --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"BOGUS", b'500 Error: command "BOGUS" not recognized'),
        (b"MAIL", b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
        (b"MAIL FROM", b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
        (b"MAIL FROM:<a@sender.test> BODY=BINARYMIME", b"501 Error: BODY can only be one of 7BIT, 8BITMIME"),
        (b"MAIL FROM:<a@sender.test> SIZE=abc", b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
        (b"MAIL FROM:<a@sender.test> FOO=BAR", b"555 MAIL FROM parameters not recognized or not implemented"),
        (b"RCPT TO:<b@dest.test>", b"503 Error: need MAIL command"),
        (b"DATA", b"503 Error: need RCPT command"),
        (b"HELO", b"501 Syntax: HELO hostname"),
        (b"EHLO", b"501 Syntax: EHLO hostname"),
        (b"NO\x00OP", b'500 Error: command "NO\x00OP" not recognized'),
        (b"NOOP \x00\x00", b"250 OK"),  # RFC 5321 §4.1.1.9: NOOP may carry a string, ignored
        (b"\x00", b'500 Error: command "\x00" not recognized'),
        (b"\xff\xfe\x00", b"500 Error: bad syntax"),
        (b"", b"500 Error: bad syntax"),
        (b"   ", b'500 Error: command "" not recognized'),
        (b"VRFY", b"501 Syntax: VRFY <address>"),
        (b"AUTH PLAIN AGFwcABzM2NyZXQ=", b"538 5.7.11 Encryption required for requested authentication mechanism"),
        (b"BDAT 10 LAST", b'500 Error: command "BDAT" not recognized'),
    ],
    ids=repr,
)
def test_malformed_command_gets_its_exact_reply_and_the_session_goes_on(smtpd, command, reply):
    c = session(smtpd)
    answer = c.cmd(command)
    assert answer == reply, answer
    assert c.cmd(b"NOOP") == b"250 OK"
    assert c.cmd(b"MAIL FROM:<a@sender.test>") == b"250 2.1.0 Ok"
    c.close()


def test_over_long_command_line_is_500_and_the_session_goes_on(smtpd):
    c = session(smtpd)
    assert c.cmd(b"MAIL FROM:<" + b"a" * 5000 + b"@sender.test>") == b"500 Command line too long"
    assert c.cmd(b"NOOP " + b"x" * 200_000) == b"500 Command line too long"
    assert c.cmd(b"MAIL FROM:<a@sender.test>") == b"250 2.1.0 Ok"
    c.close()
    assert_still_serving(smtpd)


def test_commands_with_bare_lf_are_read_as_lines(smtpd):
    c = session(smtpd)
    c.send(b"MAIL FROM:<a@sender.test>\nRCPT TO:<b@dest.test>\n")
    assert (c.reply(), c.reply()) == (b"250 2.1.0 Ok", b"250 2.1.5 Ok")
    c.close()


def test_rcpt_before_mail_and_data_before_rcpt_are_503_and_store_nothing(smtpd):
    c = session(smtpd)
    assert c.cmd(b"RCPT TO:<b@dest.test>") == b"503 Error: need MAIL command"
    assert c.cmd(b"DATA") == b"503 Error: need RCPT command"
    assert c.cmd(b"MAIL FROM:<a@sender.test>") == b"250 2.1.0 Ok"
    assert c.cmd(b"DATA") == b"503 Error: need RCPT command"
    assert c.cmd(b"MAIL FROM:<a@sender.test>") == b"503 Error: nested MAIL command"
    assert c.cmd(b"RSET") == b"250 OK"
    assert c.cmd(b"RCPT TO:<b@dest.test>") == b"503 Error: need MAIL command"
    assert c.cmd(b"QUIT").startswith(b"221")
    c.close()
    assert stored() == (0, 0, 0, 0)


def test_mail_before_ehlo_is_503(smtpd):
    c = session(smtpd, ehlo=False)
    assert c.cmd(b"MAIL FROM:<a@sender.test>") == b"503 Error: send HELO first"
    c.close()


# --- addresses -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b'MAIL FROM:<"john doe"@sender.test>', b"250 2.1.0 Ok"),
        (b'MAIL FROM:<"a@b"@sender.test>', b"250 2.1.0 Ok"),
        (b"MAIL FROM:<a\x00b@sender.test>", b"553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a\rb@sender.test>", b"553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a\x1b[31mb@sender.test>", b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
        (b"MAIL FROM:<a\x7fb@sender.test>", b"553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a\xffb@sender.test>", b"553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<(comment)a@sender.test>", b"553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a@sender.test> (comment)", b"553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:a@sender.test", b"250 2.1.0 Ok"),  # no brackets: tolerated, as most MTAs do
        (b"MAIL FROM:<a@sender.test", b"553 5.1.7 Bad sender address syntax"),
        (b'MAIL FROM:<"unterminated@sender.test>', b"553 5.1.7 Bad sender address syntax"),
    ],
    ids=repr,
)
def test_sender_address_with_quotes_comments_and_controls(smtpd, command, reply):
    c = session(smtpd)
    assert c.cmd(command) == reply
    c.close()


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        (b'<"john doe"@dest.test>', b"250 2.1.5 Ok"),
        (b"<j\x00d@dest.test>", b"501 5.1.3 Bad recipient address syntax"),
        (b"<j\nd@dest.test>", None),  # the LF ends the command line: a broken command, then a junk line
        (b"<j\x08d@dest.test>", b"501 5.1.3 Bad recipient address syntax"),
        (b"<j\x85d@dest.test>", b"501 5.1.3 Bad recipient address syntax"),
        (b"<j\xe2\x80\xa8d@dest.test>", b"501 5.1.3 Bad recipient address syntax"),
        (b"<jd(comment)@dest.test>", b"501 5.1.3 Bad recipient address syntax"),
        (b"<jd@dest.test> (comment)", b"501 5.1.3 Bad recipient address syntax"),
        (b"<jd@dest.test", b"501 5.1.3 Bad recipient address syntax"),
        (b"<jd@dest.test >", b"501 5.1.3 Bad recipient address syntax"),
        (b"<jd..x@dest.test>", b"501 5.1.3 Bad recipient address syntax"),
        (b"<jd@>", b"553 5.1.3 Error: malformed address"),
        (b"<@dest.test>", b"553 5.1.3 Error: malformed address"),
        (b"<>", b"501 5.1.3 Bad recipient address syntax"),
        (b"<" + b"a" * 300 + b"@dest.test>", b"501 5.1.3 Bad recipient address syntax"),
    ],
    ids=repr,
)
def test_recipient_address_with_quotes_comments_and_controls(smtpd, rcpt, reply):
    c = session(smtpd)
    assert c.cmd(b"MAIL FROM:<a@sender.test>") == b"250 2.1.0 Ok"
    c.send(b"RCPT TO:" + rcpt + b"\r\n")
    answer = c.reply()
    if reply is None:
        assert answer.startswith(b"5")
        assert c.reply().startswith(b"5")
    else:
        assert answer == reply
    assert c.cmd(b"RCPT TO:<ok@dest.test>") == b"250 2.1.5 Ok"
    c.close()


# --- data --------------------------------------------------------------------------------------------------------


def send_data(c: Any, data: bytes, *, rcpt: bytes = b"<b@dest.test>", mail: bytes = b"<a@sender.test>") -> bytes:
    assert c.cmd(b"MAIL FROM:" + mail).startswith(b"250")
    assert c.cmd(b"RCPT TO:" + rcpt).startswith(b"250")
    assert c.cmd(b"DATA") == b"354 End data with <CR><LF>.<CR><LF>"
    c.send(data + b".\r\n")
    reply: bytes = c.reply()
    return reply


def test_over_long_header_line_is_500_and_nothing_is_stored(smtpd):
    c = session(smtpd)
    reply = send_data(c, b"Subject: " + b"x" * 5000 + b"\r\n\r\nbody\r\n")
    assert reply == b"500 Line too long (see RFC5321 4.5.3.1.6)"
    assert c.cmd(b"NOOP") == b"250 OK"
    c.close()
    assert stored() == (0, 0, 0, 0)
    assert_still_serving(smtpd)


def test_nul_bytes_in_headers_and_body_are_accepted_not_a_451_forever(smtpd):
    """PostgreSQL text columns cannot hold NUL: a Subject with one must not fail the commit (and every retry)."""
    c = session(smtpd)
    data = b"Subject: a\x00b\r\nMessage-ID: <x\x00y@sender.test>\r\n\r\nbody\x00with nul\r\n"
    reply = send_data(c, data)
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    c.close()
    message = Message.objects.get()
    assert bytes(message.body.data).endswith(data)
    assert (message.subject, message.message_id) == ("a\ufffdb", "<x\ufffdy@sender.test>")
    assert f"MID {message.pk} Subject 'a\ufffdb'" in log_texts()


@pytest.mark.parametrize(
    "subject",
    [b"=?utf-8?q?a=00b?=", b"=?utf-7?q?+2AA-?=", b"=?unicode-escape?q?\\ud800?=", b"=?x-unknown?b?/w==?="],
)
def test_encoded_words_that_decode_to_nul_or_surrogates_are_stored(smtpd, subject):
    c = session(smtpd)
    reply = send_data(c, b"Subject: " + subject + b"\r\n\r\nx\r\n")
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    c.close()
    stored_subject = Message.objects.get().subject
    assert not any(ch == "\x00" or "\ud800" <= ch <= "\udfff" for ch in stored_subject)


def test_a_huge_folded_subject_costs_little_and_is_cut_to_998_characters(smtpd):
    c = session(smtpd)
    started = time.monotonic()
    folded = b"Subject: start" + b"\r\n =?utf-8?q?caf=C3=A9?= word" * 200_000
    reply = send_data(c, folded + b"\r\n\r\nx\r\n")
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    c.close()
    assert time.monotonic() - started < 20
    subject = Message.objects.get().subject
    assert subject.startswith("start café word") and len(subject) == 998


def test_bare_lf_in_data_is_kept_and_never_ends_the_message(smtpd):
    """SMTP smuggling: `<LF>.<CR><LF>` (or `<LF>.<LF>`) inside DATA is not the end of the message."""
    c = session(smtpd)
    smuggled = (
        b"Subject: one\r\n\r\nfirst\n.\r\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nsecond\n.\nthird\r\n"
    )
    reply = send_data(c, smuggled)
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    assert c.cmd(b"NOOP") == b"250 OK"
    c.close()
    message = Message.objects.get()
    assert list(message.recipients.values_list("address", flat=True)) == ["b@dest.test"]
    assert bytes(message.body.data).endswith(smuggled)
    assert message.subject == "one"


def test_eight_bit_data_without_8bitmime_is_accepted_byte_for_byte(smtpd):
    c = session(smtpd)
    data = b"Subject: caf\xc3\xa9 \xe9t\xe9\r\n\r\n\xff\xfe 8-bit body \x80\r\n"
    reply = send_data(c, data)
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    c.close()
    message = Message.objects.get()
    assert bytes(message.body.data).endswith(data)
    assert message.subject == "café \ufffdt\ufffd"


def test_oversize_message_is_552_nothing_stored_and_the_session_goes_on(start_listener):
    smtpd = start_listener(max_message_size=50_000)
    c = session(smtpd)
    too_big = b"552 Error: message size exceeds fixed maximum message size"
    assert c.cmd(b"MAIL FROM:<a@sender.test> SIZE=60000") == too_big
    line = b"x" * 998 + b"\r\n"
    reply = send_data(c, b"Subject: big\r\n\r\n" + line * 100)
    assert reply == b"552 Error: Too much mail data"
    assert stored() == (0, 0, 0, 0)
    reply = send_data(c, b"Subject: small\r\n\r\n" + line * 10)
    assert reply.startswith(b"250 2.0.0 Ok: queued as ")
    c.close()
    assert Message.objects.get().subject == "small"


@pytest.mark.slow
def test_ten_thousand_recipients_get_452_past_the_limit_at_a_bounded_cost(smtpd):
    c = session(smtpd)
    assert c.cmd(b"MAIL FROM:<a@sender.test>") == b"250 2.1.0 Ok"
    started = time.monotonic()
    c.send(b"".join(b"RCPT TO:<r%d@dest.test>\r\n" % i for i in range(10_000)))
    replies = [c.reply() for _ in range(10_000)]
    assert replies[:1000] == [b"250 2.1.5 Ok"] * 1000
    assert replies[1000:] == [b"452 4.5.3 Too many recipients"] * 9000
    assert c.cmd(b"NOOP") == b"250 OK"  # 452 is not an error of the client's: no disconnect
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n")
    assert c.reply().startswith(b"250 2.0.0 Ok: queued as ")
    elapsed = time.monotonic() - started
    c.close()
    assert Recipient.objects.count() == 1000
    assert elapsed < 30, elapsed


# --- clients that say nothing, and many of them --------------------------------------------------------------------


def test_a_silent_client_is_dropped_at_the_command_timeout(start_listener):
    smtpd = start_listener(command_timeout=0.5)
    c = smtpd.raw(timeout=5)
    started = time.monotonic()
    assert GREETING.match(c.reply())
    assert c.closed()
    assert time.monotonic() - started < 3
    assert wait_for(lambda: not smtpd.thread.listener.sessions)
    assert wait_for(lambda: any(t.endswith(" close") for t in log_texts()))
    assert stored() == (0, 0, 0, 0)


def test_a_client_silent_after_mail_and_rcpt_is_dropped_and_nothing_is_stored(start_listener):
    smtpd = start_listener(command_timeout=0.5)
    c = smtpd.raw(timeout=5)
    c.reply()
    c.cmd(b"EHLO client.test")
    c.cmd(b"MAIL FROM:<a@sender.test>")
    c.cmd(b"RCPT TO:<b@dest.test>")
    assert c.closed()
    assert stored() == (0, 0, 0, 0)


@pytest.mark.slow
def test_many_idle_connections_are_refused_421_past_the_limits_and_others_are_served(start_listener, raw_from):
    smtpd = start_listener(max_connections=120, max_connections_per_client=50, command_timeout=30)
    idle: list[Any] = []
    refused = 0
    for n in range(300):
        c = raw_from(smtpd, f"127.0.0.{2 + n // 100}", timeout=10)
        reply = c.reply()
        if reply.startswith(b"220"):
            idle.append(c)
        else:
            assert reply == b"421 4.7.0 Too many connections, try again later"
            assert c.closed()
            refused += 1
    # 127.0.0.2, .3 and .4 sent 100 each: 50 admitted from each of the first two (the per-client limit), then
    # 20 from the third (the total limit of 120).
    assert len(idle) == 120 and refused == 180
    c = raw_from(smtpd, "127.0.0.9")
    assert c.reply() == b"421 4.7.0 Too many connections, try again later"
    for c in idle[100:]:
        c.close()
    assert wait_for(lambda: len(smtpd.thread.listener.sessions) <= 100)
    well_behaved = raw_from(smtpd, "127.0.0.9")
    assert GREETING.match(well_behaved.reply())
    assert well_behaved.cmd(b"EHLO client.test").startswith(b"250")
    assert send_data(well_behaved, b"Subject: hi\r\n\r\nx\r\n").startswith(b"250 2.0.0 Ok: queued as ")
    for c in idle[:100]:
        assert c.cmd(b"NOOP") == b"250 OK"  # the idle ones were kept, not harmed
    assert Message.objects.count() == 1


def test_a_half_open_flood_does_not_block_a_well_behaved_client(start_listener, raw_from):
    """Clients that connect, read nothing and send nothing, from one address: at most the per-client limit of
    them hold a session; another client is served at once."""
    smtpd = start_listener(max_connections_per_client=10, command_timeout=30)
    flood = []
    for _ in range(40):
        s = socket.create_connection((smtpd.host, smtpd.port), timeout=10, source_address=("127.0.0.5", 0))
        flood.append(s)
    try:
        assert wait_for(lambda: smtpd.thread.listener.per_client.get("127.0.0.5", 0) <= 10, timeout=10)
        c = raw_from(smtpd, "127.0.0.6")
        assert GREETING.match(c.reply())
        assert c.cmd(b"EHLO client.test").startswith(b"250")
        assert send_data(c, b"Subject: hi\r\n\r\nx\r\n").startswith(b"250 2.0.0 Ok: queued as ")
    finally:
        for s in flood:
            s.close()
