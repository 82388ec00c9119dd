"""One outgoing SMTP connection to one destination host, reusable for several messages.

Frozen dataclasses in and out, aiosmtplib only, no ORM, no clock: ``asyncio.run()`` on it is safe from a task,
a command or a test. The orchestration (which host next, host-down state, logging, the queue) drives it:

    async with smtp_client.HostSession(destination) as session:
        if session.failure:                       # the host failed: log Connection Error, try the next one
            ...
        while session.usable and todo:            # connection reuse, at most destination.max_messages
            result = await session.send(todo.pop(0))   # per-recipient outcomes, never raises for SMTP trouble

Decisions worth knowing (details in the docstrings):

* The TCP connection is made here, not by aiosmtplib, so CONNECT and GREETING failures are told apart and the
  peer IP is known even when the greeting fails. A name is resolved with getaddrinfo and each address tried
  in turn (MX lookup is not this module's job).
* Replies never raise: MAIL, RCPT and DATA go through ``execute_command`` and their codes are read here.
  Transport trouble (refused, timeout, drop, TLS) raises inside aiosmtplib or asyncio and is translated in one
  place, :func:`_translate`.
* What a peer sends is text anything can store and show: every reply after the greeting is read by
  :class:`_SafeProtocol`, whose text is :func:`safe_text` (bytes that are not UTF-8 and controls escaped,
  capped), and :func:`_translate` makes every error text safe too.
* A reply that is too long, malformed or cut off is no reply: the host failed (:class:`BadReply`, a
  ``Connection Error``, the recipients on to the next host), never a code of our or aiosmtplib's making that
  would read as the peer's (a made-up 500 once bounced mail no peer had refused).
* DATA is split in two: the DATA command, then the body and the final dot written on the protocol. A
  connection lost (or a timeout) after the dot went out and before the reply is *possible delivery*: the
  recipients go to the next host (a possible duplicate, never a lost message), or, when the destination says
  ``count_possible_delivery``, count as delivered (`engine.possible_delivery_verdict`); the result names them
  (``possible_rids``) so the caller logs ``Possible Delivery:``.
* A 250 to the dot is delivery: QUIT happens later, in :meth:`HostSession.close`, under suppress.
* PIPELINING (RFC 2920) when the peer offers it: MAIL, every RCPT and DATA go in one write and their replies
  are read in order, so a message costs two round trips instead of three or more, and a host that refuses
  every RCPT costs one before the RSET. aiosmtplib reads one reply per command (and drops bytes that come while
  a reply waits to be read), so the session's protocol becomes :class:`_PipeliningProtocol` once STARTTLS and
  AUTH are over.
* Opportunistic TLS: STARTTLS when offered, no certificate check, old protocol versions allowed; a failed
  handshake fails the connection (a host failure), it never falls back to clear text on the same connection.
  Only a 4xx reply to the STARTTLS command itself (before any handshake) goes on in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH, SMTPProtocol

from delivery import engine, outcome
from delivery.engine import Stage, Verdict
from esaroutes import egress


@dataclass(frozen=True, slots=True)
class Envelope:
    mid: int
    sender: str  # "" is the null sender <>
    recipients: tuple[tuple[int, str], ...]  # (rid, address)
    body: bytes  # the message as received: headers, blank line, body; any line endings


@dataclass(frozen=True, slots=True)
class Failure:
    """The connection failed, or broke: what the ``Connection Error:`` line and the host-down state need."""

    stage: Stage
    code: int | None  # None: no SMTP reply (refused, timed out, dropped, TLS handshake)
    text: str  # the reply text, or what went wrong ("details:" of the ESA line)
    peer_ip: str = ""  # the address tried last ("" if the name did not resolve)
    local_ip: str = ""
    timed_out: bool = False
    tls_required: bool = False  # the policy required TLS and it could not be negotiated
    tls_handshake: bool = False  # STARTTLS was accepted and the handshake then failed (or timed out)
    reused: bool = False  # the connection had already carried a message
    refused: bool = False  # our policy left no address to try (allowed networks, IP preference): nothing sent
    slots_full: bool = False  # the gate refused an address (its connection slots all held): held back, not failed

    def __post_init__(self) -> None:  # replies are read whole (aiosmtplib parses EHLO's): cut where they come out
        if len(self.text) > TEXT_LIMIT:
            object.__setattr__(self, "text", safe_text(self.text))

    @property
    def reason(self) -> str:
        return engine.connection_error_reason(self.code, timed_out=self.timed_out)

    @property
    def marks_host_down(self) -> bool:
        if self.refused:  # our policy, not the host's health
            return False
        return engine.marks_host_down(self.stage, self.code, reused_connection=self.reused)


@dataclass(frozen=True, slots=True)
class Connection:
    """What a successfully opened session knows: for ``New SMTP DCID`` and ``DCID n TLS success`` lines."""

    peer_ip: str
    peer_port: int
    local_ip: str
    greeting: str
    extensions: frozenset[str]  # lower-case ESMTP keywords of the last EHLO (empty after a HELO fallback)
    tls_protocol: str | None = None  # "TLSv1.3"
    tls_cipher: str | None = None  # "TLS_AES_256_GCM_SHA384"
    tls_verified: bool = False
    authenticated: bool = False


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    rid: int
    address: str
    verdict: Verdict
    stage: Stage  # where the verdict was reached
    code: int | None
    text: str

    def __post_init__(self) -> None:  # replies are read whole (aiosmtplib parses EHLO's): cut where they come out
        if len(self.text) > TEXT_LIMIT:
            object.__setattr__(self, "text", safe_text(self.text))

    @property
    def status(self) -> tuple[str, str]:
        """(x.y.z, phrase) for the Delayed:/Bounced: line."""
        return engine.enhanced_status(self.code, self.text)


@dataclass(frozen=True, slots=True)
class TransactionResult:
    mid: int
    outcomes: tuple[RecipientOutcome, ...]  # one per recipient of the envelope, in envelope order
    failure: Failure | None = None  # the connection broke during this transaction (the session is now closed)
    possible_rids: tuple[int, ...] = ()  # lost after the final dot was sent, before its reply (see module doc)
    data_reply: str = ""  # text of the 250 to the dot, for the "Response" line

    def __post_init__(self) -> None:  # replies are read whole (aiosmtplib parses EHLO's): cut where they come out
        if len(self.data_reply) > TEXT_LIMIT:
            object.__setattr__(self, "data_reply", safe_text(self.data_reply))

    @property
    def possible_delivery(self) -> bool:
        return bool(self.possible_rids)

    def having(self, verdict: Verdict) -> tuple[RecipientOutcome, ...]:
        return tuple(o for o in self.outcomes if o.verdict is verdict)

    @property
    def delivered(self) -> tuple[RecipientOutcome, ...]:
        return self.having(Verdict.DELIVERED)


# --- the one place where what a peer sends becomes text -------------------------------------------------

#: The most characters of a peer's text kept, after escaping (RFC 5321 allows 512 octets per reply line; a
#: longer text is cut, with a marker saying so).
TEXT_LIMIT = 2000

# Kept out of stored and shown text: C0 controls but LF (the line separator of a multi-line reply), DEL, C1,
# the Unicode line and paragraph separators, bidirectional overrides and isolates, the BOM, and lone
# surrogates (U+DC80..U+DCFF are the bytes that were not UTF-8, as the "surrogateescape" decoder leaves them).
_UNSAFE = r"\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff"
_UNSAFE_CHAR = re.compile(f"[{_UNSAFE}]")
_TOKEN = re.compile(f"([{_UNSAFE}])|[^{_UNSAFE}]+")


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # a byte that was not UTF-8
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def safe_text(raw: str | bytes, limit: int = TEXT_LIMIT) -> str:
    """What a peer sent (a reply's text, an error message quoting it), as text any database, log or page takes.

    * bytes are decoded as UTF-8; a byte that is not UTF-8 becomes ``\\xNN`` (``\\xff``), so does a str
      decoded by aiosmtplib (UTF-8 with "surrogateescape": the same bytes, the same result);
    * a control character (NUL, CR, ESC, DEL...) becomes ``\\xNN``, a C1 control, U+2028/U+2029, a
      bidirectional override or isolate, the BOM or any other lone surrogate ``\\uNNNN``; LF stays: it
      separates the lines of a multi-line reply (aiosmtplib joins them with it). Valid UTF-8 (an SMTPUTF8
      reply) stays as it is; a backslash the peer sent stays as it is (the form is for reading, not reversible);
    * past ``limit`` characters, after escaping, the text is cut (never inside an escape) and ends with
      `` [... cut at LIMIT of N characters]``, N counting the characters received.
    """
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes | bytearray) else str(raw)
    if len(text) <= limit and _UNSAFE_CHAR.search(text) is None:
        return text  # the usual reply: untouched
    out: list[str] = []
    room = limit
    for m in _TOKEN.finditer(text, 0, limit + 1):  # each character gives at least one: the rest never fits
        piece = _escape(m.group()) if m.group(1) else m.group()
        if len(piece) > room:
            if not m.group(1):
                out.append(piece[:room])
            room = -1
            break
        out.append(piece)
        room -= len(piece)
    if room < 0:
        out.append(f" [... cut at {limit} of {len(text)} characters]")
    return "".join(out)


class BadReply(aiosmtplib.SMTPException):
    """The peer's reply was too long, malformed or cut off: no reply at all, as far as meaning goes (the host
    failed, its recipients go on to the next host; never a code of our making that reads as the peer's)."""


# How the exceptions aiosmtplib makes up, with a code of its own, begin: for a reply it could not read (-1 in
# 5.x; the greeting is read by aiosmtplib's parser) and for a bad CRAM-MD5 challenge (334). Never the peer's.
_MADE_UP = ("Response too long", "Malformed SMTP response", "Invalid CRAM-MD5 challenge")

_TRANSPORT_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError, EOFError)

# A reply line (RFC 5321 §4.2): three digits, the first 2-5, then a space, a hyphen (more lines follow) or the
# end of the line. A line that is not this is no reply.
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|\r?\n)")


class _SafeProtocol(SMTPProtocol):
    """aiosmtplib's protocol with a reply reader of its own: strict about the form of a reply, its text made
    safe (:func:`safe_text`), and :class:`BadReply`, never a made-up code, for what is not a reply.

    Installed on a session right after the greeting (aiosmtplib reads that one: its failures are translated by
    :func:`_translate`). Outside a pipelined group it keeps aiosmtplib's guard: bytes that arrive while no reply
    is awaited, or while a parsed one waits to be read, are dropped.
    """

    _owed = 0  # replies of a pipelined group still to be read (see _PipeliningProtocol)
    _bad: BadReply | None = None  # a bad reply was seen: every read from now on raises it, nothing else counts

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if waiter is None or self._bad is not None:
            return
        if self._owed <= 0 and (not self._response_pending or waiter.done()):
            return  # unsolicited, or a reply already waits: aiosmtplib's guard
        self._buffer.extend(data)
        limit = MAX_RESPONSE_LENGTH * max(1, self._owed)
        if len(self._buffer) > limit:
            self._fail(BadReply(f"reply too long (over {limit} bytes)"))
            return
        self._hand_over()

    def _fail(self, exc: BadReply) -> None:
        self._bad = exc
        del self._buffer[:]
        waiter = self._response_waiter
        if waiter is not None and not waiter.done():
            self._set_response_exception(waiter, exc)

    async def read_response(self, timeout: float | None = None) -> aiosmtplib.SMTPResponse:  # noqa: ASYNC109 - overrides aiosmtplib
        waiter = self._response_waiter
        if self._bad is not None and waiter is not None and not waiter.done():
            # the bad reply came while a good one waited to be read (a pipelined group): that one was read, this
            # is the read the bad reply was meant for, or a later one
            self._set_response_exception(waiter, self._bad)
        return await super().read_response(timeout=timeout)

    def _hand_over(self) -> None:
        waiter = self._response_waiter
        if waiter is None or waiter.done():
            return
        try:
            response = self._read_response_from_buffer()
        except BadReply as exc:
            self._fail(exc)
        else:
            if response is not None:
                waiter.set_result(response)

    def _read_response_from_buffer(self) -> aiosmtplib.SMTPResponse | None:
        """The first complete reply in the buffer (taken out of it), or None while it is incomplete."""
        buffer = self._buffer
        offset = 0
        texts: list[bytes] = []
        while True:
            end = buffer.find(b"\n", offset)
            if end == -1:
                return None
            line = bytes(buffer[offset : end + 1])
            m = _REPLY_LINE.match(line)
            if m is None or len(line) > MAX_LINE_LENGTH:
                what = "reply line too long" if m is not None else f"malformed reply line {safe_text(line[:200])!r}"
                raise BadReply(what)
            offset = end + 1
            texts.append(line[4:].strip(b" \t\r\n"))
            if m.group(2) != b"-":
                del buffer[:offset]
                # escaped, not cut: aiosmtplib reads EHLO's extensions and AUTH's challenges from the text; the
                # outcomes and failures made of a reply cut it (TEXT_LIMIT)
                text = safe_text(b"\n".join(texts), limit=4 * offset)
                return aiosmtplib.SMTPResponse(int(m.group(1)), text)


class _PipeliningProtocol(_SafeProtocol):
    """The session's protocol, able to take the replies to a pipelined group of commands (RFC 2920).

    aiosmtplib's guard drops bytes that arrive while a parsed reply waits to be read: its defence against
    unsolicited replies (a reply injected before STARTTLS, say). The replies to a pipelined group arrive
    together, so while replies are owed (``owe()``) this keeps every byte and hands them out one per
    ``read_response``. Outside a group it behaves exactly as :class:`_SafeProtocol`. Installed on a session
    only after STARTTLS and AUTH, on an empty buffer (:meth:`HostSession.open`).
    """

    def owe(self, replies: int) -> None:
        self._owed = replies

    async def read_response(self, timeout: float | None = None) -> aiosmtplib.SMTPResponse:  # noqa: ASYNC109 - overrides aiosmtplib
        if self._owed > 0:
            self._hand_over()  # a reply already in the buffer goes to the waiter the last read left
        try:
            return await super().read_response(timeout=timeout)
        finally:
            self._owed = max(0, self._owed - 1)


def _become(protocol: SMTPProtocol, cls: type[_SafeProtocol], transport: asyncio.BaseTransport | None) -> None:
    """Make the session's protocol one of ours: the same object and state, read by our reader from now on.

    The transport is told again which protocol it serves: uvloop's transports keep the protocol's bound methods
    (`data_received`) from when it was set, so after a class change alone they went on calling aiosmtplib's
    reader, which drops the replies of a pipelined group that arrive while one waits (a stalled session).
    """
    protocol.__class__ = cls
    if transport is not None:
        transport.set_protocol(protocol)


def _peer_code(exc: aiosmtplib.SMTPResponseException) -> int | None:
    """The code of a reply the peer really sent, or None for one aiosmtplib made up (see _MADE_UP)."""
    if not 200 <= exc.code < 600 or str(exc.message).startswith(_MADE_UP):
        return None
    return exc.code


def _translate(exc: BaseException, peer: str = "") -> tuple[int | None, str, bool]:
    """(reply code or None, details text, timed out?) for anything aiosmtplib, asyncio or ssl raise.

    The one place where an exception becomes a code: a code only for a reply the peer sent; a reply too long,
    malformed or cut off, and every code aiosmtplib makes up, is no reply (None). The text is always safe, and
    an operating system error is said in words (`os_error_text`), never as Python's exception text.
    """
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = _peer_code(exc)
        text = str(exc.message) if code is not None else f"bad reply: {exc.message}"
        return code, safe_text(text), False
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError, asyncio.timeout(), socket timeouts
        return None, "timeout", True
    if isinstance(exc, ssl.SSLError):
        return None, safe_text(f"TLS handshake failed: {exc.reason or exc}"), False
    if isinstance(exc, aiosmtplib.SMTPException):
        return None, safe_text(exc.message), False
    if isinstance(exc, OSError) and exc.errno is not None:
        return None, safe_text(os_error_text(exc, peer)), False
    return None, safe_text(str(exc) or type(exc).__name__), False


_OS_ERROR_WORDS = {
    errno.ECONNREFUSED: "connection refused by {peer}",
    errno.ECONNRESET: "connection reset by {peer}",
    errno.ECONNABORTED: "connection to {peer} aborted",
    errno.EPIPE: "connection closed by {peer} while sending",
    errno.EHOSTUNREACH: "no route to {peer} (host unreachable)",
    errno.ENETUNREACH: "no route to {peer} (network unreachable)",
    errno.EADDRNOTAVAIL: "cannot connect to {peer} from the configured source address",
}


def os_error_text(exc: OSError, peer: str = "") -> str:
    """An operating system error as an operator reads it: `connection refused by 127.0.0.1:12602`.

    Not `[Errno 111] Connect call failed ('127.0.0.1', 12602)`, asyncio's text. `peer` is `ip:port`
    (`[::1]:25`); without it the words say "the peer".
    """
    if isinstance(exc, socket.gaierror):
        return f"host name lookup failed: {(exc.strerror or str(exc)).lower()}"
    words = _OS_ERROR_WORDS.get(exc.errno or 0)
    if words is not None:
        return words.format(peer=peer or "the peer")
    reason = (exc.strerror or os.strerror(exc.errno or 0)).lower()
    return f"{reason} ({peer})" if peer else reason


def peer_text(ip: str, port: int) -> str:
    """`ip:port` as mail people write it: `127.0.0.1:25`, `[2001:db8::1]:25`."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# --- helpers ----------------------------------------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def wire_body(body: bytes) -> bytes:
    """The DATA payload: CRLF line ends, dot-stuffed, with the terminating CRLF.CRLF."""
    data = _LINE_END.sub(b"\r\n", body)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


_QUOTED_LOCAL_PART = re.compile(r'^"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"(?=@)')
_UNSAFE_IN_PATH = re.compile(r'[\x00-\x20\x7f<>"\\]')


def smtp_path(address: str) -> str:
    """``<address>`` for MAIL FROM / RCPT TO, the address sent exactly as queued ("" gives ``<>``).

    Raises ValueError for what cannot go on a command line: controls, spaces, angle brackets, quotes and
    backslashes outside a quoted local part. Not aiosmtplib's quote_address: that runs the address through
    email.utils.parseaddr, which silently *rewrites* some malformed addresses (``a@b>\r\nRSET`` becomes
    ``a@b``) instead of refusing them.
    """
    rest = _QUOTED_LOCAL_PART.sub("", address, count=1)
    if _UNSAFE_IN_PATH.search(rest):
        raise ValueError(f"address {address!r} cannot be sent in an SMTP command")
    return f"<{address}>"


_FORBIDDEN_IN_COMMAND = re.compile(rb"[\r\n\x00]")


def needs_8bitmime(body: bytes) -> bool:
    return not body.isascii()  # a byte over 0x7F (in C: the generator over every byte was 5% of a worker's CPU)


def needs_smtputf8(envelope: Envelope) -> bool:
    return not envelope.sender.isascii() or not all(a.isascii() for _, a in envelope.recipients)


#: The policies that check the peer's certificate (for its host name or IP) once TLS is up.
_VERIFYING = (outcome.TlsPolicy.REQUIRED_VERIFY, outcome.TlsPolicy.OPPORTUNISTIC_VERIFY)
#: The policies that go on in clear when STARTTLS is not offered, or refused with a 4xx before any handshake.
_OPTIONAL = (outcome.TlsPolicy.OPPORTUNISTIC, outcome.TlsPolicy.OPPORTUNISTIC_VERIFY)


@functools.cache
def tls_context(policy: outcome.TlsPolicy, ca_file: str | None = None) -> ssl.SSLContext:
    """One shared client context per policy (contexts are thread-safe and costly to build)."""
    if policy in _VERIFYING:
        return ssl.create_default_context(cafile=ca_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if policy is outcome.TlsPolicy.OPPORTUNISTIC:
        # Without verification TLS only defeats passive listening; an old cipher still beats clear text, and
        # a handshake failure would fail the whole host. REQUIRED keeps OpenSSL's defaults.
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


# --- the session ------------------------------------------------------------------------------------------

#: How a host name becomes addresses when not by getaddrinfo (`delivery.outbound.dns.host_addresses`): a
#: blocking call, run in a thread; it raises OSError (a ``Connection Error``) when the name does not resolve.
Lookup = Callable[[str], list[str]]


class NoAddressError(OSError):
    """The host has no address the destination's IP preference allows (``ipv6-required``, only A records)."""


#: Asked with each address just before a connection to it is made (after name resolution, the IP preference
#: and the allowed networks): True lets it go on, False skips the address as if it were not there. The runner's
#: connection slots per destination IP (`delivery.outbound.runner`, limit scope "ip") are taken here, by the
#: connected address rather than by the host's name.
Gate = Callable[[str], Awaitable[bool]]


class SlotsFullError(OSError):
    """No address of the host connected and the gate refused at least one (`engine.held_for_slots`): the
    host's mail waits for a connection slot; nothing was sent and it says nothing of the host's health."""


class SourceAddressError(egress.Refused):
    """The route's (or the global) source address cannot be bound: it is not, or no longer, an address of this
    machine, or not of the destination address's family. Nothing was sent, and it says nothing of the host."""


def _bind_source(sock: socket.socket, source: str) -> None:
    """Bind a connection's socket to the source address; SourceAddressError says, in words, why it cannot be."""
    if (sock.family == socket.AF_INET6) != (":" in source):
        raise SourceAddressError(f"source address {source} is not of the destination address's family")
    try:
        sock.bind((source, 0))
    except OSError as exc:
        raise SourceAddressError(
            f"source address {source} is not an address of this machine ({exc.strerror or exc})"
        ) from None


class HostSession:
    """One SMTP connection to one host: open (connect, greeting, EHLO, STARTTLS, AUTH), then send messages.

    ``open()`` (or ``async with``) never raises for network or SMTP trouble: it sets ``connection`` or
    ``failure``. ``send()`` never raises for them either; it raises ``RuntimeError`` if called when
    ``usable`` is false (a bug in the caller), and ``ValueError`` for an envelope without recipients.
    Create, use and close a session inside one event loop.
    """

    def __init__(
        self, destination: outcome.Destination, *, lookup: Lookup | None = None, gate: Gate | None = None
    ) -> None:
        self.destination = destination
        self._lookup = lookup  # name -> addresses (blocking, run in a thread); None: getaddrinfo
        self._gate = gate  # may a connection to this address be made now (see Gate); None: always
        self.connection: Connection | None = None
        self.failure: Failure | None = None
        self.messages_sent = 0
        self.broken_by: Failure | None = None  # the failure that ended the connection in a transaction
        self._smtp: aiosmtplib.SMTP | None = None
        self._sock: socket.socket | None = None
        self._raw_transport: asyncio.Transport | None = None  # the TCP one, under TLS if any
        self._peer_ip = ""
        self._local_ip = ""
        self._stage = Stage.CONNECT  # how far open() got

    async def __aenter__(self) -> HostSession:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:  # cancelled or a bug: no QUIT, just drop the connection
            self._drop()

    @property
    def connected(self) -> bool:
        """The connection is open, as far as we know (False once the peer closed it or we dropped it)."""
        return self._smtp is not None and self._smtp.is_connected

    def close_reason(self) -> str:
        """Why the connection is over, if not by our QUIT (see engine.close_reason): for ``DCID n close (...)``."""
        failure = self.broken_by or self.failure
        if failure is not None:
            return engine.close_reason(failure.code, timed_out=failure.timed_out, stage=failure.stage)
        if self._smtp is not None and not self._smtp.is_connected:
            return engine.CLOSED_BY_PEER  # closed while idle, or with its reply
        return ""

    @property
    def usable(self) -> bool:
        """Open, still connected, and under the per-connection message limit."""
        return self._smtp is not None and self._smtp.is_connected and self.messages_sent < self.destination.max_messages

    # --- opening ------------------------------------------------------------------------------------------

    async def open(self) -> Connection | Failure:
        if self._smtp is not None or self.failure is not None:
            raise RuntimeError("a HostSession opens once")
        t = self.destination.timeouts
        self._stage = Stage.CONNECT
        try:
            async with asyncio.timeout(t.transaction):
                sock = await self._connect_socket()
                self._stage = Stage.GREETING
                self._smtp = aiosmtplib.SMTP(
                    hostname=self.destination.host.address,
                    local_hostname=self.destination.helo,
                    timeout=t.command,
                    start_tls=False,  # the policy is applied below, explicitly
                    sock=sock,
                )
                greeting = await self._smtp.connect(timeout=t.command)
                # a stream transport (uvloop's is one without being a subclass of asyncio.Transport)
                self._raw_transport = cast(asyncio.Transport, self._smtp.transport)
                if self._smtp.protocol is not None:  # every reply after the greeting is read by our reader
                    _become(self._smtp.protocol, _SafeProtocol, self._smtp.transport)
                self._stage = Stage.EHLO
                await self._ehlo()
                tls = await self._starttls()  # moves the stage to TLS, and back to EHLO after it
                self._stage = Stage.AUTH
                authenticated = await self._auth()
        except _TRANSPORT_ERRORS as exc:
            return self._fail_open(self._stage, exc)
        smtp = self._smtp
        protocol = smtp.protocol
        if smtp.supports_extension("pipelining") and protocol is not None and not protocol._buffer:
            _become(protocol, _PipeliningProtocol, smtp.transport)  # replies read as a group allows
        self.connection = Connection(
            peer_ip=self._peer_ip,
            peer_port=self.destination.host.port,
            local_ip=self._local_ip,
            greeting=safe_text(greeting.message),
            extensions=frozenset(smtp.esmtp_extensions),
            tls_protocol=tls[0] if tls else None,
            tls_cipher=tls[1] if tls else None,
            tls_verified=bool(tls) and self.destination.tls in _VERIFYING,
            authenticated=authenticated,
        )
        return self.connection

    async def _connect_socket(self) -> socket.socket:
        """TCP connect to each address of the host in turn; raises the last error.

        An address outside the allowed networks is skipped unconnected (:class:`egress.Refused`, whose text
        becomes the ``Connection Error`` line's details), and so is one the gate refuses; when none connected
        and the gate refused one, :class:`SlotsFullError` (`engine.held_for_slots`)."""
        host = self.destination.host
        loop = asyncio.get_running_loop()
        if self._lookup is not None:
            found = await asyncio.to_thread(self._lookup, host.address)
        else:
            infos = await loop.getaddrinfo(host.address, host.port, type=socket.SOCK_STREAM)
            found = [str(info[4][0]) for info in infos]
        preference = self.destination.ip_preference
        addresses = engine.order_addresses(found, preference)
        if not addresses:
            raise NoAddressError(engine.no_address_text(host.address, preference, found))
        last: BaseException = OSError(f"no address for {host.address}")
        tried = False
        full: list[str] = []  # the addresses the gate refused
        for address in addresses:
            if not egress.allowed(address, self.destination.allowed_networks):
                if not tried:  # a real connection failure says more than a refusal
                    self._peer_ip = address
                    last = egress.Refused(egress.refusal(address))  # on the resolved address: MX hosts too
                continue
            if self._gate is not None and not await self._gate(address):
                full.append(address)
                continue
            tried = True
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, host.port)
            self._peer_ip = address
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:  # no IPv6 (or IPv4) on this machine: the next address
                last = exc
                continue
            sock.setblocking(False)
            try:
                if self.destination.source_address:
                    _bind_source(sock, self.destination.source_address)
                async with asyncio.timeout(self.destination.timeouts.connect):
                    await loop.sock_connect(sock, sockaddr)
            except (OSError, TimeoutError) as exc:
                sock.close()
                last = exc
                continue
            except BaseException:  # cancelled (the session's own cap included): no socket left behind
                sock.close()
                raise
            self._local_ip = str(sock.getsockname()[0])
            self._sock = sock
            return sock
        if engine.held_for_slots(len(full), connected=False):
            self._peer_ip = full[0]
            raise SlotsFullError(f"every connection slot of {', '.join(full)} is in use")
        raise last

    async def _ehlo(self) -> None:
        """EHLO; on a 5xx (an old HELO-only server) fall back to HELO. Any other failure raises."""
        assert self._smtp is not None
        try:
            await self._smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if not (500 <= exc.code < 600 and self._smtp.is_connected):
                raise
            try:
                await self._smtp.helo()
            except aiosmtplib.SMTPHeloError:
                raise exc from None  # report the EHLO reply, it is the informative one

    async def _starttls(self) -> tuple[str, str] | None:
        """Apply the TLS policy; returns (protocol, cipher) when TLS is up."""
        assert self._smtp is not None
        policy = self.destination.tls
        if policy is outcome.TlsPolicy.OFF:
            return None
        offered = self._smtp.supports_extension("starttls")
        if not offered:
            if policy in _OPTIONAL:
                return None
            self._stage = Stage.TLS
            raise _PolicyFailure("STARTTLS not offered", tls_required=True)
        self._stage = Stage.TLS
        try:
            await self._smtp.starttls(
                server_hostname=self.destination.host.address,
                tls_context=tls_context(policy, self.destination.ca_file),
                timeout=self.destination.timeouts.command,
            )
        except aiosmtplib.SMTPResponseException as exc:
            if policy in _OPTIONAL and 400 <= exc.code < 500 and self._smtp.is_connected:
                return None  # "454 TLS not available": refused before any handshake, the session is still clean
            raise _PolicyFailure(cause=exc, tls_required=policy not in _OPTIONAL) from exc
        except _TRANSPORT_ERRORS as exc:
            raise _PolicyFailure(cause=exc, tls_required=policy not in _OPTIONAL) from exc
        ssl_object = self._smtp.get_transport_info("ssl_object")
        self._stage = Stage.EHLO
        await self._ehlo()  # RFC 3207 §4.2: forget what was learnt before TLS
        if isinstance(ssl_object, ssl.SSLObject):
            cipher = ssl_object.cipher()
            return (ssl_object.version() or "", cipher[0] if cipher else "")
        return ("", "")

    async def _auth(self) -> bool:
        assert self._smtp is not None
        if self.destination.auth is None:
            return False
        if not self._smtp.supports_extension("auth"):
            raise _PolicyFailure("AUTH not offered")
        username, password = self.destination.auth
        await self._smtp.login(username, password, timeout=self.destination.timeouts.command)
        return True

    def _fail_open(self, stage: Stage, exc: BaseException) -> Failure:
        if isinstance(exc, _PolicyFailure):
            translated = _translate(exc.cause) if exc.cause else (None, exc.message, False)
            handshake = exc.cause is not None and not isinstance(exc.cause, aiosmtplib.SMTPResponseException)
            self.failure = self._failure(stage, translated, tls_required=exc.tls_required, tls_handshake=handshake)
        else:
            self.failure = self._failure(
                stage,
                _translate(exc, self._peer()),
                refused=isinstance(exc, egress.Refused | NoAddressError | SlotsFullError),
                slots_full=isinstance(exc, SlotsFullError),
            )
        self._drop()
        return self.failure

    def _peer(self) -> str:
        """The peer being talked to, `ip:port`, for a failure's words ("" before any address was tried)."""
        return peer_text(self._peer_ip, self.destination.host.port) if self._peer_ip else ""

    def _failure(
        self,
        stage: Stage,
        translated: tuple[int | None, str, bool],
        *,
        tls_required: bool = False,
        tls_handshake: bool = False,
        reused: bool = False,
        refused: bool = False,
        slots_full: bool = False,
    ) -> Failure:
        """The failure of this connection at `stage`, from a `_translate`d exception (code, text, timed out)."""
        code, text, timed_out = translated
        return Failure(
            stage=stage,
            code=code,
            text=text,
            peer_ip=self._peer_ip,
            local_ip=self._local_ip,
            timed_out=timed_out,
            tls_required=tls_required,
            tls_handshake=tls_handshake,
            reused=reused,
            refused=refused,
            slots_full=slots_full,
        )

    # --- sending ------------------------------------------------------------------------------------------

    async def send(self, envelope: Envelope) -> TransactionResult:
        """One mail transaction for all the envelope's recipients; outcomes per recipient.

        Needs an extension the peer lacks (SMTPUTF8 for a non-ASCII address → 5.6.7, 8BITMIME for an 8-bit
        body → 5.6.3): every recipient bounces and nothing is sent; the session stays usable. An address that
        cannot go on a command line (see :func:`smtp_path`) bounces with 5.1.3, alone (5.1.7 for the sender:
        everyone).
        """
        if not envelope.recipients:
            raise ValueError("an envelope needs at least one recipient")
        if not self.usable:
            raise RuntimeError("send() on a session that is not usable")
        assert self._smtp is not None
        refusal = self._local_refusal(envelope)
        if refusal is not None:
            return refusal
        self.messages_sent += 1
        reused = self.messages_sent > 1
        tx = _Transaction(envelope, self.destination)
        try:
            async with asyncio.timeout(self.destination.timeouts.transaction):
                await tx.run(self._smtp)
        except _TRANSPORT_ERRORS as exc:
            tx.broke(self._failure(tx.stage, _translate(exc, self._peer()), reused=reused))
        if tx.failure is not None or tx.rset_failed:
            self.broken_by = tx.failure
            self._drop()
        return tx.result()

    def _local_refusal(self, envelope: Envelope) -> TransactionResult | None:
        """Bounce everything, without a word to the peer, when the message cannot be sent as it is."""
        assert self._smtp is not None
        name = self.destination.host.address
        text: str | None = None
        if needs_smtputf8(envelope) and not self._smtp.supports_extension("smtputf8"):
            text = f"5.6.7 SMTPUTF8 is required, but was not offered by host {name}"
        elif needs_8bitmime(envelope.body) and not self._smtp.supports_extension("8bitmime"):
            text = f"5.6.3 8BITMIME is required, but was not offered by host {name}"
        else:
            try:
                smtp_path(envelope.sender)
            except ValueError:
                text = f"5.1.7 Bad sender address syntax: {envelope.sender!r}"
        if text is not None:
            outcomes = tuple(
                RecipientOutcome(rid, address, Verdict.BOUNCE, Stage.MAIL, None, text)
                for rid, address in envelope.recipients
            )
            return TransactionResult(envelope.mid, outcomes)
        bad: dict[int, str] = {}
        for rid, address in envelope.recipients:
            try:
                smtp_path(address)
            except ValueError:
                bad[rid] = f"5.1.3 Bad recipient address syntax: {address!r}"
        if len(bad) == len(envelope.recipients):
            outcomes = tuple(
                RecipientOutcome(rid, address, Verdict.BOUNCE, Stage.RCPT, None, bad[rid])
                for rid, address in envelope.recipients
            )
            return TransactionResult(envelope.mid, outcomes)
        return None  # a few bad recipients are refused inside the transaction, see _Transaction

    # --- closing ------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """QUIT politely (a failure here changes nothing), then close the connection."""
        smtp = self._smtp
        if smtp is not None and smtp.is_connected:
            with contextlib.suppress(*_TRANSPORT_ERRORS):
                async with asyncio.timeout(self.destination.timeouts.command):
                    await smtp.quit()
        self._drop()

    def abort(self) -> None:
        """Close now, without QUIT: a delivery cut off mid-transaction (a shutdown that cancels it)."""
        self._drop()

    def _drop(self) -> None:
        """Close now. Closing a TLS transport only starts a close_notify exchange that a dead or hostile peer
        may never finish, so the TCP transport underneath is aborted too (nothing is left to say on it)."""
        if self._smtp is not None:
            self._smtp.close()
        if self._raw_transport is not None:
            self._raw_transport.abort()
        elif self._sock is not None:  # aiosmtplib never got as far as wrapping it in a transport
            self._sock.close()


class _PolicyFailure(aiosmtplib.SMTPException):
    """A failure decided here (STARTTLS or AUTH not offered) or re-labelled (TLS handshake)."""

    def __init__(self, message: str = "", *, cause: BaseException | None = None, tls_required: bool = False) -> None:
        super().__init__(message or str(cause))
        self.cause = cause
        self.tls_required = tls_required


class _Transaction:
    """The state of one MAIL..DATA exchange, so that a break at any point still yields every outcome."""

    def __init__(self, envelope: Envelope, destination: outcome.Destination) -> None:
        self.envelope = envelope
        self.destination = destination
        self.stage = Stage.MAIL
        self.outcomes: dict[int, RecipientOutcome] = {}
        self.accepted: list[tuple[int, str]] = []
        self.failure: Failure | None = None
        self.dot_sent = False
        self.possible: list[int] = []  # recipients lost after the final dot (possible delivery)
        self.data_reply = ""
        self.rset_failed = False

    def _decide(self, rid: int, address: str, code: int | None, text: str) -> None:
        v = engine.verdict(self.stage, code, defer_on_4xx=self.destination.defer_on_4xx)
        self.outcomes[rid] = RecipientOutcome(rid, address, v, self.stage, code, text)

    def _all_pending(self, code: int | None, text: str) -> None:
        """Every recipient without an outcome yet gets this reply (or this absence of reply)."""
        for rid, address in self.envelope.recipients:
            if rid not in self.outcomes:
                self._decide(rid, address, code, text)

    async def run(self, smtp: aiosmtplib.SMTP) -> None:
        env, t = self.envelope, self.destination.timeouts
        utf8 = needs_smtputf8(env)
        encoding = "utf-8" if utf8 else "ascii"
        payload = wire_body(env.body)
        options: list[bytes] = []
        if smtp.supports_extension("size"):
            options.append(b"SIZE=%d" % (len(payload) - 3))
        if needs_8bitmime(env.body):
            options.append(b"BODY=8BITMIME")
        if utf8:
            options.append(b"SMTPUTF8")

        mail = b" ".join([b"MAIL", b"FROM:" + smtp_path(env.sender).encode(encoding), *options])
        protocol = smtp.protocol
        if isinstance(protocol, _PipeliningProtocol):
            return await self._run_pipelined(smtp, protocol, mail, encoding, payload)

        self.stage = Stage.MAIL
        reply = await smtp.execute_command(mail, timeout=t.command)
        if reply.code != 250:
            self._all_pending(reply.code, reply.message)
            return self._after_reply(smtp, reply.code, reply.message)

        self.stage = Stage.RCPT
        for rid, address in env.recipients:
            try:
                mailbox = smtp_path(address).encode(encoding)
            except ValueError:
                self.outcomes[rid] = RecipientOutcome(
                    rid, address, Verdict.BOUNCE, Stage.RCPT, None, f"5.1.3 Bad recipient address syntax: {address!r}"
                )
                continue
            reply = await smtp.execute_command(b"RCPT", b"TO:" + mailbox, timeout=t.command)
            if reply.code in (250, 251):
                self.accepted.append((rid, address))
            else:
                self._decide(rid, address, reply.code, reply.message)
            if not smtp.is_connected:  # a 421 closes the channel: the rest share its fate
                self._all_pending(reply.code, reply.message)
                return self._after_reply(smtp, reply.code, reply.message)
        if not self.accepted:
            await self._rset(smtp)
            return None

        self.stage = Stage.DATA
        reply = await smtp.execute_command(b"DATA", timeout=t.command)
        if reply.code != 354:
            self._all_pending(reply.code, reply.message)
            if smtp.is_connected:
                await self._rset(smtp)
            return self._after_reply(smtp, reply.code, reply.message)
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        return await self._send_body(smtp, protocol, payload)

    async def _send_body(self, smtp: aiosmtplib.SMTP, protocol: SMTPProtocol, payload: bytes) -> None:
        """After the 354: the dot-stuffed body and its final dot, and the reply that decides delivery."""
        protocol.write(payload)
        self.dot_sent = True
        reply = await protocol.read_response(timeout=self.destination.timeouts.data)
        if reply.code == 250:
            self.data_reply = reply.message
        self._all_pending(reply.code, reply.message)
        # after the reply to the dot the transaction is over either way: no RSET needed
        return self._after_reply(smtp, reply.code, reply.message)

    async def _run_pipelined(
        self, smtp: aiosmtplib.SMTP, protocol: _PipeliningProtocol, mail: bytes, encoding: str, payload: bytes
    ) -> None:
        """MAIL, the RCPTs and DATA in one write; the replies read in order, with the same meaning as one by one.

        A refused MAIL still has its RCPT and DATA replies read (the peer answers them, 503 as a rule). A DATA
        that a peer accepts with no valid recipient gets an empty message (a lone dot), whose reply is ignored,
        then RSET, as RFC 2920 §3.1 says. A 421 ends the session: what is still owed is never read.
        """
        env, t = self.envelope, self.destination.timeouts
        commands = [mail]
        sent: list[tuple[int, str]] = []
        for rid, address in env.recipients:
            try:
                commands.append(b"RCPT TO:" + smtp_path(address).encode(encoding))
            except ValueError:
                self.outcomes[rid] = RecipientOutcome(
                    rid, address, Verdict.BOUNCE, Stage.RCPT, None, f"5.1.3 Bad recipient address syntax: {address!r}"
                )
                continue
            sent.append((rid, address))
        commands.append(b"DATA")
        if any(_FORBIDDEN_IN_COMMAND.search(c) for c in commands):  # smtp_path refuses these; never write one
            raise ValueError("a command contains a control character")
        protocol.owe(len(commands))
        protocol.write(b"\r\n".join(commands) + b"\r\n")

        self.stage = Stage.MAIL
        mail_reply = await protocol.read_response(timeout=t.command)
        if mail_reply.code == 421:
            return self._closing(smtp, mail_reply)
        self.stage = Stage.RCPT
        for rid, address in sent:
            reply = await protocol.read_response(timeout=t.command)
            if mail_reply.code != 250:
                continue  # the MAIL reply decides for everyone
            if reply.code in (250, 251):
                self.accepted.append((rid, address))
            else:
                self._decide(rid, address, reply.code, reply.message)
            if reply.code == 421:
                return self._closing(smtp, reply)
        self.stage = Stage.DATA
        data_reply = await protocol.read_response(timeout=t.command)
        if data_reply.code == 421:
            return self._closing(smtp, data_reply)
        if data_reply.code == 354 and not self.accepted:  # DATA accepted with nobody to send to: end it empty
            protocol.write(b".\r\n")
            await protocol.read_response(timeout=t.data)
        if mail_reply.code != 250:
            self.stage = Stage.MAIL
            self._all_pending(mail_reply.code, mail_reply.message)
            return self._after_reply(smtp, mail_reply.code, mail_reply.message)
        if not self.accepted or data_reply.code != 354:
            if self.accepted:
                self._all_pending(data_reply.code, data_reply.message)
            await self._rset(smtp)
            return None
        return await self._send_body(smtp, protocol, payload)

    def _closing(self, smtp: aiosmtplib.SMTP, reply: aiosmtplib.SMTPResponse) -> None:
        """A 421 in a pipelined group: the peer is closing; everyone still open shares that reply."""
        smtp.close()
        self._all_pending(reply.code, reply.message)
        self.failure = Failure(stage=self.stage, code=reply.code, text=reply.message)

    def _after_reply(self, smtp: aiosmtplib.SMTP, code: int, text: str) -> None:
        """A refusal that also closed the connection (a 421, say) ends the session: say so."""
        if not smtp.is_connected and not 200 <= code < 400 and self.failure is None:
            self.failure = Failure(stage=self.stage, code=code, text=text)

    async def _rset(self, smtp: aiosmtplib.SMTP) -> None:
        """Clear the envelope after a refused transaction; a failure only ends the connection's reuse."""
        try:
            reply = await smtp.execute_command(b"RSET", timeout=self.destination.timeouts.command)
        except _TRANSPORT_ERRORS:
            self.rset_failed = True
        else:
            self.rset_failed = reply.code != 250

    def broke(self, failure: Failure) -> None:
        """The connection broke (no reply): whoever is still open goes to the next host, or, lost after the final
        dot, wherever the destination's possible-delivery choice says."""
        self.failure = failure
        if self.dot_sent and failure.code is None:
            verdict = engine.possible_delivery_verdict(count_delivered=self.destination.count_possible_delivery)
            for rid, address in self.envelope.recipients:
                if rid not in self.outcomes:
                    self.possible.append(rid)
                    self.outcomes[rid] = RecipientOutcome(rid, address, verdict, self.stage, None, failure.text)
        self._all_pending(failure.code, failure.text)

    def result(self) -> TransactionResult:
        outcomes = tuple(self.outcomes[rid] for rid, _ in self.envelope.recipients)
        return TransactionResult(
            mid=self.envelope.mid,
            outcomes=outcomes,
            failure=self.failure,
            possible_rids=tuple(self.possible),
            data_reply=self.data_reply,
        )
