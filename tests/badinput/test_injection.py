"""Log and page injection: what a client puts in a Subject, a Message-ID, an address or a reply can never start a new
mail-log line (in mail.current or MailLogLine), and HTML in any of them is shown as text on every page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from delivery import maillog
from delivery.models import MailLogLine, Message
from tests.listener.conftest import log_texts, wait_for
from tests.support.messages import attempt

pytestmark = pytest.mark.django_db(transaction=True)

ESA_LINE = re.compile(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} (Info|Warning|Critical|Debug): [^\r\n]*$")
EVIL = "<script>alert(1)</script>"
FAKE = "Thu Jan  1 00:00:00 2026 Info: MID 999 queued for delivery"
BREAKS = ["\r\n", "\n", "\r", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x00"]


def encoded(text: str) -> bytes:
    """`text` as one RFC 2047 encoded word (UTF-8, base64): how a client smuggles control characters."""
    import base64

    return b"=?utf-8?b?" + base64.b64encode(text.encode()) + b"?="


@pytest.fixture
def injected(smtpd) -> Message:
    subject = EVIL + "".join(f"{brk}{FAKE}" for brk in BREAKS)
    headers = (
        b"Subject: " + encoded(EVIL) + b"\r\n " + b"\r\n ".join(encoded(f"{brk}{FAKE}") for brk in BREAKS) + b"\r\n"
        b"Message-ID: <" + EVIL.encode() + b"\x0b@x>\r\n"
        b"From: " + EVIL.encode() + b" <a@sender.test>\r\n\r\n<html>" + EVIL.encode() + b"</html>\r\n"
    )
    c = smtpd.raw()
    c.reply()
    c.cmd(b"EHLO client.test")
    assert c.cmd(b'MAIL FROM:<"' + EVIL.replace('"', "").encode() + b'"@sender.test>') == b"250 2.1.0 Ok"
    assert c.cmd(b'RCPT TO:<"<b>bold</b>"@dest.test>') == b"250 2.1.5 Ok"
    assert c.cmd(b"RCPT TO:<plain@dest.test>") == b"250 2.1.5 Ok"
    assert c.cmd(b"RCPT TO:<x\xe2\x80\xa8y@dest.test>").startswith(b"501")
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(headers + b".\r\n")
    assert c.reply().startswith(b"250 2.0.0 Ok: queued as ")
    c.cmd(b"QUIT")
    c.close()
    message = Message.objects.get()
    assert len(subject) < 998 and message.subject == subject.replace("\x00", "\ufffd")
    assert wait_for(lambda: MailLogLine.objects.filter(text__endswith=" close").exists())
    attempt(message, host="mx1.dest.test", code=451, reply=f"4.3.0 {EVIL}\r\n{FAKE}", outcome="delayed", rids=(0,))
    return message


def test_nothing_a_client_sends_starts_a_new_mail_log_line(injected):
    assert maillog.writer.flush(10)
    raw = (Path(settings.MAIL_LOG_DIR) / "mail.current").read_bytes()
    text = raw.decode("utf-8")
    lines = [line for line in text.split("\n")[:-1] if not line.startswith(("Begin Logfile", "Version:", "Time "))]
    assert lines and all(ESA_LINE.fullmatch(line) for line in lines), [x for x in lines if not ESA_LINE.fullmatch(x)]
    assert text.splitlines() == text.split("\n")[:-1]  # no Unicode line break either, for any reader
    assert sum(FAKE in line for line in lines) == 0 or all(not line.endswith(FAKE) for line in lines[1:])
    for db_text in log_texts():
        assert not any(ch in db_text for ch in BREAKS), repr(db_text)
    subject_line = next(t for t in log_texts() if " Subject " in t)
    assert "\\r\\n" in subject_line and "\\u2028" in subject_line and "\\x00" not in subject_line


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/log/",
        "/log/?mid={mid}",
        "/tracking/?subject=script",
        "/tracking/{mid}/",  # was a 500 on a malformed Message-ID (parse_headers)
        "/queue/",
        "/hosts/",
    ],
)
def test_html_in_any_header_is_text_on_every_page(client, alice, injected, path):
    client.force_login(alice)
    response = client.get(path.format(mid=injected.pk))
    assert response.status_code == 200
    html = response.content.decode()
    body = html.split("</head>", 1)[1]
    assert EVIL not in body, path
    assert "<b>bold</b>" not in body, path
    assert not re.search(r"<script(?![^>]*\bsrc=)", body), path
    if path not in ("/hosts/", "/queue/"):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path


def test_the_message_page_shows_every_header_and_address_as_text(client, alice, injected):
    client.force_login(alice)
    body = client.get(f"/tracking/{injected.pk}/").content.decode().split("</head>", 1)[1]
    assert "From: &lt;script&gt;alert(1)&lt;/script&gt; &lt;a@sender.test&gt;" in body
    assert "&lt;b&gt;bold&lt;/b&gt;" in body
    assert "<html>" not in body
