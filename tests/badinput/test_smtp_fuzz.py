"""Random command streams against the real listener (Hypothesis): whatever a client throws, the listener never sends
a traceback, never dies, and the next well-formed session is served without a 5xx."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiosmtplib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery.listener import headers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

VERBS = [b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN", b"HELP"]
VERBS += [b"AUTH PLAIN", b"AUTH LOGIN", b"STARTTLS", b"BDAT", b"mail from:", b"\x00", b"."]
ARGS = st.one_of(
    st.sampled_from([b"", b"<a@sender.test>", b"<b@dest.test>", b"<>", b'<"x y"@d.test>', b"<@a:b@c>", b"x" * 1200]),
    st.binary(max_size=80),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
LINE = st.tuples(st.sampled_from(VERBS), ARGS, st.sampled_from([b"\r\n", b"\n", b"\r", b""])).map(
    lambda t: t[0] + (b" " + t[1] if t[1] else b"") + t[2]
)
STREAM = st.lists(st.one_of(LINE, st.binary(max_size=200)), min_size=1, max_size=25)
LEAKS = (b"Traceback", b'File "', b"Exception", b"Error(", b"secret", b"/work/", b"site-packages")


@pytest.fixture
def fuzz_target(start_listener: Any) -> Any:
    return start_listener(command_timeout=2, data_timeout=2, max_errors=20)


def throw(running: Any, chunks: list[bytes]) -> bytes:
    """Send the chunks (pipelined, as fast as possible), then read whatever comes back for a moment."""
    sock = socket.create_connection((running.host, running.port), timeout=5)
    received = b""
    try:
        sock.settimeout(0.3)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the listener hung up (QUIT, too many errors): fine
        try:
            while len(received) < 1_000_000:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except (TimeoutError, OSError):
            pass
    finally:
        sock.close()
    return received


def follow_up(running: Any) -> tuple[dict[str, Any], str]:
    async def go() -> tuple[dict[str, Any], str]:
        smtp = aiosmtplib.SMTP(hostname=running.host, port=running.port, timeout=10, start_tls=False)
        await smtp.connect()
        try:
            return await smtp.sendmail("a@sender.test", ["b@dest.test"], b"Subject: after fuzz\r\n\r\nx\r\n")
        finally:
            smtp.close()

    return asyncio.run(go())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=STREAM)
def test_random_command_streams_never_crash_or_leak_and_the_next_session_is_served(fuzz_target, chunks):
    received = throw(fuzz_target, chunks)
    for leak in LEAKS:
        assert leak not in received, (leak, received[-2000:])
    for line in received.split(b"\r\n"):
        if line:
            assert line[:3].isdigit() and line[3:4] in (b" ", b"-"), line
            assert not line.startswith(b"500 Error: (")  # aiosmtpd's default handle_exception: "500 Error: (X) y"
    errors, reply = follow_up(fuzz_target)
    assert errors == {} and reply.startswith("2.0.0 Ok: queued as ")
    assert fuzz_target.thread._thread.is_alive()


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=300))
def test_decode_subject_never_raises_and_is_always_storable(raw):
    subject = headers.decode_subject(raw)
    assert len(subject) <= 998
    assert not any(ch == "\x00" or "\ud800" <= ch <= "\udfff" for ch in subject)


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.tuples(st.sampled_from(["utf-8", "utf-7", "latin-1", "x-bad", "utf-16"]), st.binary())))
def test_encoded_word_subjects_never_raise(words):
    import base64

    raw = " ".join(f"=?{charset}?b?{base64.b64encode(data).decode()}?=" for charset, data in words)
    subject = headers.decode_subject(raw)
    assert not any(ch == "\x00" or "\ud800" <= ch <= "\udfff" for ch in subject)
