"""Message helpers (pure): header values, the Subject decoded and storable, the Received header we prepend."""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import re
from email.header import decode_header, make_header

from aiosmtpd.smtp import Session as SmtpSession

from delivery.listener.config import Config
from delivery.listener.conn import Conn

_FOLD = re.compile(rb"\r?\n[ \t]")
_LINE = re.compile(rb"\r?\n")


def header_values(data: bytes, names: tuple[str, ...] = ("subject", "message-id")) -> dict[str, str]:
    """The first value of each named header, unfolded, from the header block only (never the body)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = data if end < 0 else data[:end]
    out: dict[str, str] = {}
    for line in _LINE.split(_FOLD.sub(b" ", head)):
        name, sep, value = line.partition(b":")
        key = name.strip().decode("ascii", "replace").lower()
        if sep and key in names and key not in out:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


def decode_subject(raw: str) -> str:
    """A Subject with its RFC 2047 encoded words decoded; the raw text when they do not decode.

    Only the start is decoded (the email package's decoder is quadratic: a folded Subject of megabytes would hold
    a listener thread for minutes); the first 4 x 998 characters hold the 998 kept of any sensible Subject.
    """
    if len(raw) > _SUBJECT_SCAN:
        raw = raw[:_SUBJECT_SCAN].rpartition(" ")[0] or raw[:_SUBJECT_SCAN]
    if "=?" not in raw:
        return storable(raw[:998])
    try:
        return storable(str(make_header(decode_header(raw)))[:998])
    except (ValueError, LookupError, UnicodeError):
        return storable(raw[:998])


_SUBJECT_SCAN = 4 * 998
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """Text a database column can hold: PostgreSQL refuses NUL, and no database encodes a lone surrogate (an
    encoded word in UTF-7 can make one), which would fail the commit of the message with 451 on every retry."""
    return _UNSTORABLE.sub("\ufffd", text)


_HEADER_SAFE = re.compile(r"[^\x21-\x7e]")


def received_header(config: Config, conn: Conn, session: SmtpSession, rcpts: list[str], now: dt.datetime) -> bytes:
    """The RFC 5321 trace header we prepend: `from HELO (rdns [ip]) by us with ESMTP[S][A] id ...; date`."""
    helo = _HEADER_SAFE.sub("?", conn.helo or "unknown")[:255]
    try:
        ip = ipaddress.ip_address(conn.ip)
        literal = f"IPv6:{ip}" if ip.version == 6 else str(ip)
    except ValueError:
        literal = "unknown"
    protocol = "ESMTP" if session.extended_smtp else "SMTP"
    if conn.tls:
        protocol += "S"
    if session.authenticated:
        protocol += "A"
    text = (
        f"Received: from {helo} ({_HEADER_SAFE.sub('?', conn.rdns)} [{literal}])\r\n"
        f"\tby {config.hostname} (esaroutes) with {protocol} id {conn.icid}.{conn.messages}"
    )
    if len(rcpts) == 1 and not _HEADER_SAFE.search(rcpts[0]):
        text += f"\r\n\tfor <{rcpts[0]}>"
    text += f";\r\n\t{email.utils.format_datetime(now.astimezone())}\r\n"
    return text.encode("utf-8", "surrogateescape")
