"""Delivery status notifications (RFC 3464 bounces and delay warnings): pure functions from a failed or delayed
delivery to message bytes (``build_dsn``; with ``will_retry_until``, the delay warning for a recipient still
being retried).

    data = dsn.build_dsn(original=body, sender="alice@example.test", recipients=[dsn.BouncedRecipient(
        "bob@example.net", "5.1.1", "550 5.1.1 <bob@example.net>... User unknown", "mx.example.net", now)],
        reporting_mta="relay.example.test", arrival=received_at, now=now, mid=42)

The result is a complete message, CRLF line endings, ready to queue from ``<>`` to the sender
(``should_bounce`` first). Its shape (RFC 3462 multipart/report, RFC 3464, RFC 3834):

* headers: ``From: Mail Delivery System <MAILER-DAEMON@reporting_mta>``, ``To:`` the sender, ``Subject:
  Delivery Status Notification (Failure)``, ``Date``, a fresh ``Message-ID`` at reporting_mta,
  ``Auto-Submitted: auto-replied``, ``Content-Type: multipart/report; report-type=delivery-status``;
* part 1, text/plain: which recipients failed and why, in words for a non-technical reader, then the
  technical details;
* part 2, message/delivery-status: ``Reporting-MTA``, ``X-Esaroutes-MID``, ``Arrival-Date``; per recipient
  ``Final-Recipient``, ``Action: failed``, ``Status``, ``Remote-MTA`` (when known), ``Diagnostic-Code``,
  ``Last-Attempt-Date`` (when known);
* part 3, text/rfc822-headers with the original's header section, or the whole original as message/rfc822
  with ``include_body``.

Decisions:

* **Nothing in the input can make it raise.** The original may have bare LF or CR, 8-bit bytes, NULs, no blank
  line, or garbage instead of headers: line endings become CRLF; the header section is the run of lines that
  look like header fields (``name:`` or a continuation) up to the first blank or other line, as a lenient
  RFC 5322 reader would see it; NULs are dropped and lines over 998 octets are cut in the headers copy. An
  original that cannot travel as message/rfc822 (a NUL, or a line over 998 octets: RFC 5322 §2.1.1) is
  attached as headers only, even with ``include_body``. 8-bit content is declared ``8bit`` (message/rfc822
  allows no other encoding, RFC 2046 §5.2.1); the SMTP client asks for 8BITMIME when the bytes need it.
* **Reply text is sanitised.** Diagnostics and addresses never put a control character in the output: CR, LF
  and tabs become spaces, other control characters ``?``; the delivery-status part is ASCII only (non-ASCII
  in a reply becomes ``?``); long fields are folded at spaces.
* **Diagnostic-Code type.** ``smtp;`` when the diagnostic is an SMTP reply (starts with a 3-digit code);
  a local decision (a DNS failure, an expired message) is ``X-Esaroutes;`` with its text, as Postfix writes
  ``X-Postfix;``; an empty diagnostic writes no Diagnostic-Code.
* **UTF-8 addresses (RFC 6533).** An ASCII address is ``rfc822; addr``. A non-ASCII one is ``utf-8;`` with
  the utf-8-addr-xtext form (``\\x{FC}`` for ``ü``), so the report stays message/delivery-status and 7-bit
  (message/global-delivery-status would need an SMTPUTF8 path all the way). The human part shows it as
  written, in UTF-8. A non-ASCII sender makes the top-level headers UTF-8 (policy SMTPUTF8): that DSN can
  only be delivered with SMTPUTF8 anyway, as its envelope recipient is that address.
* **Status.** A status that is not ``x.y.z`` with x in 2, 4, 5 is written as ``5.0.0``: the report must stay
  parseable whatever the caller passes.
* **Naive datetimes** are taken as UTC (the project keeps every time in UTC).
"""

from __future__ import annotations

import email.policy
import email.utils
import ipaddress
import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage

from delivery import engine

SUBJECT = "Delivery Status Notification (Failure)"
DELAY_SUBJECT = "Delivery Status Notification (Delay)"
#: RFC 5322 §2.1.1: at most 998 octets per line, CRLF excluded.
MAX_LINE = 998

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
_SMTP_REPLY = re.compile(r"[2-5]\d\d(?:[ -]|\Z)")
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NEWLINES = re.compile(rb"\r\n|\r|\n")
_HOST_JUNK = re.compile(r"[^A-Za-z0-9.:\[\]-]")  # not in a host name or address literal


@dataclass(frozen=True)
class BouncedRecipient:
    address: str  # original recipient
    status: str  # "5.1.1"
    diagnostic: str  # the remote reply, e.g. "550 5.1.1 <x@y>... User unknown", or a local decision's text, or ""
    remote_mta: str = ""  # host name or IP that answered, "" if none
    last_attempt: datetime | None = None


def should_bounce(sender: str) -> bool:
    """Whether a failure is reported to this envelope sender: to anyone but the null sender.

    Only the null reverse-path (``""``, or ``"<>"`` if it slipped through with its brackets) is exempt, as RFC
    5321 §4.5.5 says: it is what bounces themselves are sent from, so a bounce of a bounce cannot loop.
    MAILER-DAEMON@ or postmaster@ senders are *not* exempt: a real message from a postmaster deserves its bounce,
    and a loop through them is stopped by the null sender our own DSNs use.
    """
    return sender.strip() not in ("", "<>")


def build_dsn(
    *,
    original: bytes,
    sender: str,
    recipients: Sequence[BouncedRecipient],
    reporting_mta: str,
    arrival: datetime,
    now: datetime,
    mid: int,
    include_body: bool = False,
    will_retry_until: datetime | None = None,
) -> bytes:
    """The complete bounce message for ``recipients`` of message ``mid``; see the module docstring.

    With ``will_retry_until``, the delay warning instead, for recipients still queued and retried until then: the
    bounce's shape with ``Subject: Delivery Status Notification (Delay)``, ``Action: delayed``, a ``4.x.x``
    ``Status`` (anything else is written ``4.0.0``) and ``Will-Retry-Until``, and a text that says nothing needs
    doing yet. A warning attaches the original's headers only, whatever ``include_body`` says."""
    if will_retry_until is not None:
        include_body = False
    lines = _NEWLINES.split(original)
    if lines and lines[-1] == b"":
        lines.pop()  # the final line ending is not a line of its own
    headers = _header_section(lines)
    attach_whole = include_body and all(len(line) <= MAX_LINE and b"\0" not in line for line in lines)
    if attach_whole:
        attachment = b"Content-Type: message/rfc822\r\n" + _cte(lines) + b"\r\n" + _join(lines)
    else:
        attachment = b"Content-Type: text/rfc822-headers\r\n" + _cte(headers) + b"\r\n" + _join(headers)

    mta = _HOST_JUNK.sub("", reporting_mta) or "localhost"
    if will_retry_until is None:
        human = _human_part(recipients, mta, arrival, now, whole=attach_whole)
    else:
        human = _delay_part(recipients, mta, arrival, will_retry_until)
    report = _report_part(recipients, mta, arrival, mid, will_retry_until)

    body_parts = [human, report, attachment]
    boundary = _boundary(body_parts)
    utf8 = not sender.isascii()
    subject = SUBJECT if will_retry_until is None else DELAY_SUBJECT
    head = _top_headers(sender, mta, now, boundary, utf8=utf8, subject=subject)
    out = [head, b"This is a MIME-formatted message. See the text/plain part for a description.\r\n"]
    for part in body_parts:
        out += [b"\r\n--", boundary, b"\r\n", part]
    out += [b"\r\n--", boundary, b"--\r\n"]
    return b"".join(out)


# --- the parts --------------------------------------------------------------------------------------------------


def _top_headers(sender: str, mta: str, now: datetime, boundary: bytes, *, utf8: bool, subject: str) -> bytes:
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    msg = EmailMessage(policy=policy)
    msg["From"] = f"Mail Delivery System <MAILER-DAEMON@{mta}>"
    to = _one_line(sender.strip().strip("<>"), ascii_only=False)
    try:
        msg["To"] = to
        if max(map(len, msg.as_bytes().splitlines())) > MAX_LINE:  # folding is where a strange address fails
            raise ValueError("unfoldable")
    except Exception:  # a sender the address parser cannot fold must not stop the bounce (the envelope decides)
        del msg["To"]
        msg["To"] = "undisclosed-recipients:;"
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(_aware(now))
    msg["Message-ID"] = email.utils.make_msgid(domain=mta)
    msg["Auto-Submitted"] = "auto-replied"
    msg["MIME-Version"] = "1.0"
    text = msg.as_bytes()
    content_type = b'Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="' + boundary + b'"'
    return text.rstrip(b"\r\n") + b"\r\n" + content_type + b"\r\n\r\n"


def _human_part(
    recipients: Sequence[BouncedRecipient], mta: str, arrival: datetime, now: datetime, *, whole: bool
) -> bytes:
    count = len(recipients)
    para = [
        f"This is the mail system at {mta}.",
        (
            f"Your message could not be delivered to {'this recipient' if count == 1 else f'{count} recipients'}. "
            "The problem is permanent, so the mail system has stopped trying. "
            f"The message arrived on {_rfc5322(arrival)} and was given up on {_rfc5322(now)}."
        ),
    ]
    blocks = ["\r\n".join(textwrap.wrap(p, 76)) for p in para]
    for r in recipients:
        status = _status(r.status)
        explained = textwrap.wrap(_explain(status), 72, initial_indent="    ", subsequent_indent="    ")
        blocks.append(_recipient_block(r, status, explained))
    attached = "Your original message is" if whole else "The headers of your original message are"
    advice = f"Check the address for typing mistakes, or contact the recipient another way. {attached} attached."
    blocks.append("\r\n".join(textwrap.wrap(advice, 76)))
    return _text_part(blocks)


def _recipient_block(r: BouncedRecipient, status: str, explained: Sequence[str] = ()) -> str:
    """One recipient in a human-readable DSN part: the address, `explained`, then the technical details."""
    lines = [f"  {_one_line(r.address, ascii_only=False) or '(no address)'}", *explained]
    lines += _technical_details(r, status)
    return "\r\n".join(lines)


def _text_part(blocks: Sequence[str]) -> bytes:
    """The human-readable MIME part of a DSN: the blocks as paragraphs, 7-bit safe."""
    text = "\r\n\r\n".join(blocks) + "\r\n"
    part = EmailMessage(policy=email.policy.SMTP)
    part.set_content(text, charset="utf-8", cte=None if text.isascii() else "quoted-printable")  # 7-bit safe
    del part["MIME-Version"]  # a top-level header only
    return part.as_bytes()


def _technical_details(r: BouncedRecipient, status: str) -> list[str]:
    """The indented "Technical details" lines of one recipient in a human-readable DSN part."""
    detail = f"Technical details: {status} {engine.status_phrase(status)}"
    if r.remote_mta:
        detail += f"; the server {_one_line(r.remote_mta, ascii_only=False)} answered"
    if r.diagnostic:
        detail += f": {_one_line(r.diagnostic, ascii_only=False)}"
    return textwrap.wrap(detail, 72, initial_indent="    ", subsequent_indent="    ", break_long_words=True)


def _delay_part(
    recipients: Sequence[BouncedRecipient], mta: str, arrival: datetime, will_retry_until: datetime
) -> bytes:
    count = len(recipients)
    para = [
        f"This is the mail system at {mta}.",
        (
            f"Your message has not been delivered to {'this recipient' if count == 1 else f'{count} recipients'} "
            f"yet. It arrived on {_rfc5322(arrival)}. The problem is temporary, so the mail system keeps trying "
            f"until {_rfc5322(will_retry_until)}. You do not need to send it again: you will be told if it "
            "cannot be delivered."
        ),
    ]
    blocks = ["\r\n".join(textwrap.wrap(p, 76)) for p in para]
    blocks += [_recipient_block(r, _delay_status(r.status)) for r in recipients]
    blocks.append("The headers of your original message are attached.")
    return _text_part(blocks)


def _report_part(
    recipients: Sequence[BouncedRecipient],
    mta: str,
    arrival: datetime,
    mid: int,
    will_retry_until: datetime | None = None,
) -> bytes:
    blocks = [
        [
            f"Reporting-MTA: dns; {mta}",
            f"X-Esaroutes-MID: {int(mid)}",
            f"Arrival-Date: {_rfc5322(arrival)}",
        ]
    ]
    for r in recipients:
        delayed = will_retry_until is not None
        fields = [
            f"Final-Recipient: {_address_field(r.address)}",
            "Action: delayed" if delayed else "Action: failed",
            f"Status: {_delay_status(r.status) if delayed else _status(r.status)}",
        ]
        if remote := _one_line(r.remote_mta, ascii_only=True):
            fields.append(f"Remote-MTA: dns; {_mta_name(remote)}")
        if diagnostic := _one_line(r.diagnostic, ascii_only=True):
            kind = "smtp" if _SMTP_REPLY.match(diagnostic) else "X-Esaroutes"
            fields.append(f"Diagnostic-Code: {kind}; {diagnostic}")
        if r.last_attempt is not None:
            fields.append(f"Last-Attempt-Date: {_rfc5322(r.last_attempt)}")
        if will_retry_until is not None:
            fields.append(f"Will-Retry-Until: {_rfc5322(will_retry_until)}")
        blocks.append(fields)
    text = "\r\n\r\n".join("\r\n".join(_fold(f) for f in block) for block in blocks)
    return b"Content-Type: message/delivery-status\r\n\r\n" + text.encode("ascii") + b"\r\n"


# --- helpers ----------------------------------------------------------------------------------------------------


def _header_section(lines: list[bytes]) -> list[bytes]:
    """The original's header lines: fields and their continuations, up to the first line that is neither."""
    out: list[bytes] = []
    for line in lines:
        if _HEADER_LINE.match(line) or (out and line[:1] in (b" ", b"\t") and line.strip()):
            clean = line.replace(b"\0", b"")
            while len(clean) > MAX_LINE:
                out.append(clean[:MAX_LINE])
                clean = b" " + clean[MAX_LINE:]
            out.append(clean)
        else:
            break
    return out


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def _cte(lines: list[bytes]) -> bytes:
    seven_bit = all(line.isascii() for line in lines)
    return b"Content-Transfer-Encoding: 7bit\r\n" if seven_bit else b"Content-Transfer-Encoding: 8bit\r\n"


def _boundary(parts: list[bytes]) -> bytes:
    while True:
        boundary = f"=_esaroutes_dsn_{secrets.token_hex(12)}".encode()
        if not any(boundary in p for p in parts):
            return boundary


def _status(status: str) -> str:
    status = status.strip()
    return status if _STATUS.match(status) else "5.0.0"


def _delay_status(status: str) -> str:
    """A delay report's Status is temporary: ``4.x.x``, else ``4.0.0``."""
    status = status.strip()
    return status if _STATUS.match(status) and status.startswith("4") else "4.0.0"


def _explain(status: str) -> str:
    """What the status means, for someone who is not a mail administrator."""
    _, subject, detail = status.split(".")
    key = f"{subject}.{detail}"
    plain = {
        "1.1": "The address does not exist at the recipient's mail server.",
        "1.2": "The recipient's domain does not exist, or has no mail server.",
        "1.10": "The recipient's domain says it does not accept email at all.",
        "1.3": "The address is not written correctly.",
        "2.1": "The recipient's mailbox is disabled and does not accept messages.",
        "2.2": "The recipient's mailbox is full.",
        "2.3": "The message is larger than the recipient's mail server accepts.",
        "3.4": "The message is larger than the recipient's mail server accepts.",
        "4.7": "Delivery kept failing for too long, so the mail system gave up.",
        "4.4": "The recipient's mail server could not be found.",
    }
    if key in plain:
        return plain[key]
    if subject == "7":
        return "The recipient's mail server refused the message because of its rules (for example a spam filter)."
    return "The recipient's mail server refused the message."


def _one_line(text: str, *, ascii_only: bool) -> str:
    """Whitespace runs (CR, LF, tabs included) become one space; control characters (and non-ASCII) ``?``."""
    text = " ".join(text.split())
    text = _CONTROL.sub("?", text)
    if ascii_only:
        text = "".join(c if c.isascii() else "?" for c in text)
    return "".join(c if c.isprintable() else "?" for c in text)


def _address_field(address: str) -> str:
    address = _one_line(address.strip().strip("<>"), ascii_only=False)
    if address.isascii():
        return f"rfc822; {address}"
    return f"utf-8; {_utf8_addr_xtext(address)}"


def _utf8_addr_xtext(address: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext: QCHARs as they are, anything else as ``\\x{HEX}``."""
    out = []
    for c in address:
        o = ord(c)
        if 0x21 <= o <= 0x7E and c not in "+=\\":
            out.append(c)
        else:
            out.append(f"\\x{{{o:X}}}")
    return "".join(out)


def _mta_name(remote: str) -> str:
    try:
        ipaddress.ip_address(remote.strip("[]"))
    except ValueError:
        return remote
    return f"[{remote.strip('[]')}]"


def _fold(field: str) -> str:
    """Fold a DSN field at spaces so lines stay under 78 characters where possible, always under 998."""
    if len(field) <= 78:
        return field
    lines: list[str] = []
    current = ""
    for word in field.split(" "):
        while len(word) > MAX_LINE - 2:  # one enormous word: cut it
            if current:
                lines.append(current)
                current = ""
            lines.append(word[: MAX_LINE - 2])
            word = word[MAX_LINE - 2 :]
        if current and len(current) + 1 + len(word) > 78:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return "\r\n ".join(lines)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _rfc5322(moment: datetime) -> str:
    return email.utils.format_datetime(_aware(moment))
