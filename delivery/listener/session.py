"""`Session`: the aiosmtpd `SMTP` subclass, one per connection, with what aiosmtpd lacks.

Connection limits (`421` before the greeting), a data timeout that restarts on every packet of DATA, an error
budget, the raw MAIL/RCPT arguments, coalesced replies, and the `ICID n close` line. The decisions are the
`Handler`'s (`handler.py`); the listener (`server.py`) makes one `Session` per accepted connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import aiosmtpd
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, TLSSetupException, _AuthMechAttr
from aiosmtpd.smtp import Session as SmtpSession

from delivery import access, maillog
from delivery.listener import connlimits
from delivery.listener.commit import Committer
from delivery.listener.config import Config
from delivery.listener.conn import Conn
from delivery.spool import intake

logger = logging.getLogger(__name__)

TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?=[ ]|$)")
_FLUSH_NOW = (b"220", b"221", b"334", b"354", b"421")  # greetings, TLS, AUTH, DATA, goodbyes: never held back


@dataclass(frozen=True)
class Names:
    auth: dict[str, tuple[str, bool]]
    hooks: tuple[str, ...]
    smtp: tuple[str, ...]


IDENT = "ESMTP esaroutes"
_FAST_INIT = aiosmtpd.__version__.startswith("1.4.")


class Owner(Protocol):
    """What a session uses of its listener (`server.Listener`)."""

    config: Config
    handler: Any  # the aiosmtpd handler: `handler.Handler`
    tls: ssl.SSLContext | None
    smtp_names: Names | None
    sessions: set[Session]
    connections: connlimits.Counter
    committer: Committer | None
    snapshot: access.AccessSnapshot
    _idle: asyncio.Event

    async def next_icid(self) -> int: ...

    async def reverse_dns(self, ip: str) -> tuple[str, bool]: ...


class Session(SMTP):
    def __init__(self, listener: Owner) -> None:
        config = listener.config
        names = listener.smtp_names
        if names is None or not _FAST_INIT:
            super().__init__(
                listener.handler,
                data_size_limit=config.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname=config.hostname,
                ident=IDENT,
                tls_context=listener.tls,
                timeout=config.command_timeout,
                auth_require_tls=not config.auth_without_tls,
                authenticator=_capture_credentials,
                loop=asyncio.get_running_loop(),
            )
            listener.smtp_names = Names(
                auth={m: (impl.method.__name__, impl.is_builtin) for m, impl in self._auth_methods.items()},
                hooks=tuple(self._handle_hooks),
                smtp=tuple(self._smtp_methods),
            )
        else:
            self._light_init(listener, names)
        self.listener = listener
        self.conn = Conn()
        self.mail_raw = ""
        self.rcpt_raw = ""
        self._admitted = False
        self._counted = False
        self._in_data = False
        self._closing = False
        self._ended = False
        self._ended_here = False  # QUIT, or we closed it (limits, errors, timeout, shutdown): "close", not "lost"
        self._out = b""

    def _light_init(self, listener: Owner, names: Names) -> None:
        """aiosmtpd 1.4's `SMTP.__init__` minus its per-connection introspection (`inspect.getmembers` and
        `dir()` of the protocol and the handler, over a millisecond per connection): the method tables are
        rebuilt from the names the first session found. Guarded by `_FAST_INIT` (aiosmtpd 1.4.x only)."""
        config = listener.config
        handler = listener.handler
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop, limit=self.line_length_limit)
        asyncio.StreamReaderProtocol.__init__(self, reader, client_connected_cb=self._cb_client_connected, loop=loop)
        self.__ident__ = IDENT
        self.loop = loop
        self.event_handler = handler
        self.data_size_limit = config.max_message_size
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.command_size_limits.clear()
        self.hostname = config.hostname
        self.tls_context = listener.tls
        self.require_starttls = False
        self._timeout_duration = config.command_timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = not config.auth_without_tls
        self._proxy_timeout = None
        self._authenticator = _capture_credentials
        self._auth_callback = None
        self._auth_required = False
        self._auth_methods = {
            m: _AuthMechAttr(getattr(self if builtin else handler, name), builtin)
            for m, (name, builtin) in names.auth.items()
        }
        self._handle_hooks = {h: getattr(handler, "handle_" + h) for h in names.hooks}
        self._ehlo_hook_ver = "new"
        self._smtp_methods = {m: getattr(self, "smtp_" + m) for m in names.smtp}
        self._enforce_call_limit = False

    # --- connection life -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            self.conn.ip = str(peer[0]) if peer else ""
            self.listener.sessions.add(self)
            self.listener._idle.clear()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._ended:
            self._ended = True
            self._uncount()
            if self.conn.icid:
                end = maillog.lines.icid_close if self._ended_here else maillog.lines.icid_lost
                lines = [*self.conn.pending, intake.stamp(end(self.conn.icid))]
                self.conn.pending = []
                if self.listener.committer is not None:
                    self.listener.committer.log(lines, linger=True)
        super().connection_lost(error)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.listener.connections.release(self.conn.ip)
        self.listener.sessions.discard(self)
        if not self.listener.sessions:
            self.listener._idle.set()

    def drop(self) -> None:
        """Shutdown: close the connection now (the client retries a message it has not had a 250 for)."""
        self._ended_here = True
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self._writer.write(b"421 4.3.2 Service shutting down\r\n")
            self.transport.close()

    async def _handle_client(self) -> None:
        # The installation's limits (every listener process), checked and taken in one step; a refused connection
        # holds no slot. A connection lost meanwhile cancels this task: a slot taken in Redis for it then counts
        # until the process's next heartbeat rewrites its counts.
        self._admitted = await self.listener.connections.take(self.conn.ip)
        if self._admitted:
            self._counted = True
            if self._ended:
                self._uncount()
                return
        if not self._admitted:
            logger.info("refused %s: too many connections", self.conn.ip)
            await self.push(TOO_MANY_CONNECTIONS)
            self._close()
            return
        try:
            await self._open()
        except Exception:
            logger.exception("connection from %s: cannot start a session", self.conn.ip)
            await self.push("421 4.3.0 Service not available, try again later")
            self._close()
            return
        await super()._handle_client()

    async def _open(self) -> None:
        assert self.transport is not None
        listener = self.listener
        conn = self.conn
        conn.icid = await listener.next_icid()
        conn.rdns, verified = await listener.reverse_dns(conn.ip)
        sockname = self.transport.get_extra_info("sockname")
        local_ip = str(sockname[0]) if sockname else ""
        network = access.relay_match(listener.snapshot, conn.ip)
        conn.relay = network is not None
        conn.log(maillog.lines.new_icid(conn.icid, listener.config.interface, local_ip, conn.ip, conn.rdns, verified))
        if network is not None:
            conn.log(maillog.lines.icid_policy(conn.icid, "RELAY", access.RELAY_GROUP, str(network)))
        else:
            conn.log(maillog.lines.icid_policy(conn.icid, "ACCEPT", access.ACCEPT_GROUP, "ALL"))

    def _close(self) -> None:
        self._ended_here = True
        if self.transport is not None:
            self.transport.close()

    def _timeout_cb(self) -> None:
        self._ended_here = True  # our command timeout closes it
        super()._timeout_cb()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it untyped

    async def smtp_QUIT(self, arg: str) -> None:
        self._ended_here = not arg
        await super().smtp_QUIT(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as exc:  # aiosmtpd closes the connection; the log says why
            if self.conn.icid:
                cause = exc.__cause__
                self.conn.log(maillog.lines.icid_tls_failed(self.conn.icid, str(cause or exc) or type(cause).__name__))
            raise

    # --- timeouts --------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_data and self.transport is not None:
            self._reset_timeout(self.listener.config.data_timeout)
        super().data_received(data)

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        self._reset_timeout(self.listener.config.data_timeout)
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False
            if self.transport is not None:
                self._reset_timeout()

    def hold_timeout(self) -> None:
        """While a commit is in flight the client is waiting on us: no timer may drop it then."""
        self._in_data = False
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    # --- replies ---------------------------------------------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.mail_raw = self._raw_path(arg, "FROM:")
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.rcpt_raw = self._raw_path(arg, "TO:")
        await super().smtp_RCPT(arg)

    def _raw_path(self, arg: str | None, keyword: str) -> str:
        """The path as the client wrote it, after `FROM:`/`TO:` (aiosmtpd strips source routes and comments from
        the address it hands the handler; the relay and syntax checks need what was sent)."""
        return (self._strip_command_keyword(keyword, arg) if arg else None) or ""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser (email's RFC 5322 header parser, a fifth of the loop's time per message),
        skipped for the common `<dot-atom@domain>` form, where it returns exactly the text between the brackets
        and the rest of the argument; anything else still goes through it."""
        match = _PLAIN_PATH.match(arg)
        if match is not None:
            address, rest = match.group(1), arg[match.end() :].lstrip(" ")
            local = address.rpartition("@")[0]
            if not rest.startswith("(") and not (self.local_part_limit and len(local) > self.local_part_limit):
                return address, rest
        result: tuple[str | None, str | None] = super()._getaddr(arg)
        return result

    async def push(self, status: Any) -> None:
        """Send a reply line, coalescing: the lines of a multi-line reply, and the replies to pipelined commands
        while more commands are already waiting, go out in one write (one system call, one TCP segment)."""
        data = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(status, str) else status
        self._out += data + b"\r\n"
        if data[3:4] == b"-":
            return  # a continuation line: the last line of the reply sends them all
        if data[:3] in _FLUSH_NOW or b"\n" not in self._pending_input():
            await self.flush()
        # else the next command is already here: its reply will carry this one
        if data[:1] == b"5" and not self._closing:
            self.conn.errors += 1
            if self.conn.errors >= self.listener.config.max_errors:
                self._closing = True
                logger.info("ICID %s: too many errors, disconnecting %s", self.conn.icid, self.conn.ip)
                self._out += b"421 4.7.0 Too many errors, closing connection\r\n"
                await self.flush()
                self._close()

    async def flush(self) -> None:
        if self._out and self.transport is not None:
            out, self._out = self._out, b""
            self._writer.write(out)
            await self._writer.drain()

    def _pending_input(self) -> bytes:
        buffer = getattr(self._reader, "_buffer", b"")
        return bytes(buffer) if len(buffer) < 65536 else b"\n"


def _capture_credentials(
    server: SMTP, session: SmtpSession, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """aiosmtpd's authenticator is synchronous; pass the credentials on to `Handler._auth` to check off the loop."""
    return AuthResult(success=True, auth_data=auth_data)
