"""What a peer sends, as text: smtp_client.safe_text, the one representation (a table, no network)."""

from __future__ import annotations

import aiosmtplib
import pytest

from delivery.outbound.smtp_client import TEXT_LIMIT, BadReply, _translate, safe_text

CUT = f" [... cut at {TEXT_LIMIT} of "


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("2.0.0 Ok: queued as 4F2A", "2.0.0 Ok: queued as 4F2A"),  # the usual reply: untouched
        (b"2.0.0 Ok", "2.0.0 Ok"),
        ("4.3.0 first line\nsecond line", "4.3.0 first line\nsecond line"),  # LF separates a multi-line reply
        ("5.1.1 Benutzer unbekannt: j\u00f6rg", "5.1.1 Benutzer unbekannt: j\u00f6rg"),  # UTF-8 (SMTPUTF8) kept
        (b"4.3.0 \xff\xfe\xc3\x28 second", "4.3.0 \\xff\\xfe\\xc3( second"),  # bytes not UTF-8
        ("4.3.0 \udcff\udcfe\udcc3( second", "4.3.0 \\xff\\xfe\\xc3( second"),  # the same, as aiosmtplib decodes
        (b"nul\x00here", "nul\\x00here"),  # PostgreSQL text refuses NUL
        ("cr\rtab\tesc\x1b[31mdel\x7f", "cr\\x0dtab\\x09esc\\x1b[31mdel\\x7f"),
        ("c1 \x85 \x9b", "c1 \\u0085 \\u009b"),
        ("ls \u2028 ps \u2029 bom \ufeff", "ls \\u2028 ps \\u2029 bom \\ufeff"),
        ("bidi \u202e \u2066 \u200f", "bidi \\u202e \\u2066 \\u200f"),  # no reordering of what is shown
        ("lone \ud800", "lone \\ud800"),
        ("C:\\path \\xff", "C:\\path \\xff"),  # a backslash the peer sent stays (for reading, not reversible)
        ("", ""),
    ],
)
def test_safe_text(raw: str | bytes, text: str) -> None:
    assert safe_text(raw) == text
    text.encode("utf-8")  # always encodable


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("a" * TEXT_LIMIT, "a" * TEXT_LIMIT),  # at the limit: whole, no marker
        ("a" * (TEXT_LIMIT + 1), "a" * TEXT_LIMIT + CUT + f"{TEXT_LIMIT + 1} characters]"),
        # never half an escape
        ("a" * (TEXT_LIMIT - 2) + "\x00", "a" * (TEXT_LIMIT - 2) + CUT + f"{TEXT_LIMIT - 1} characters]"),
        (b"\xff" * 16_777_216, "\\xff" * (TEXT_LIMIT // 4) + CUT + "16777216 characters]"),
    ],
)
def test_safe_text_cuts_with_a_marker(raw: str | bytes, kept: str) -> None:
    assert safe_text(raw) == kept


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (aiosmtplib.SMTPResponseException(451, "4.3.0 busy"), 451, "4.3.0 busy"),  # a reply the peer sent
        (aiosmtplib.SMTPHeloError(554, "5.7.1 go away \udcff"), 554, "5.7.1 go away \\xff"),
        (aiosmtplib.SMTPResponseException(-1, "Response too long"), None, "bad reply: Response too long"),
        (aiosmtplib.SMTPResponseException(500, "Response too long"), None, "bad reply: Response too long"),
        (aiosmtplib.SMTPResponseException(-1, "Malformed SMTP response line: x\x00"), None, None),
        (aiosmtplib.SMTPAuthenticationError(334, "Invalid CRAM-MD5 challenge from server: b'!'"), None, None),
        (aiosmtplib.SMTPResponseException(999, "9.9.9 what"), None, "bad reply: 9.9.9 what"),
        (BadReply("reply too long (over 32768 bytes)"), None, "reply too long (over 32768 bytes)"),
        (aiosmtplib.SMTPServerDisconnected("Server disconnected"), None, "Server disconnected"),
    ],
)
def test_only_a_reply_the_peer_sent_has_a_code(exc: BaseException, code: int | None, text: str | None) -> None:
    got_code, got_text, timed_out = _translate(exc)
    assert (got_code, timed_out) == (code, False)
    if text is not None:
        assert got_text == text
    assert "\x00" not in got_text
