"""Scripted SMTP peers on loopback, for the whole test suite.

Load as a plugin (``pytest_plugins = ["tests.support.peers"]`` in tests/conftest.py) and ask for the fixtures:

    def test_4xx_at_rcpt(peers: PeerFactory) -> None:
        busy = peers.start(rcpt="452 4.3.1 Insufficient system resources")
        good = peers.start()
        ...
        assert good.wait_for_messages(1)[0].rcpt_tos == ("user@example.test",)

* ``peers.start(**script)`` runs a real ``aiosmtpd.smtp.SMTP`` server, created with ``loop.create_server`` on
  127.0.0.1 port 0 in one background event loop thread (not the threaded Controller, which connects to itself
  and would skew ``connections``). Script options: see :class:`Script`.
* ``peers.silent()``, ``peers.closing()``, ``peers.refused()``: raw faults before any SMTP: accept and say
  nothing, accept and hang up, and a port that refuses connections (bound, never listening).
* ``smtp_sink``: Postfix's smtp-sink on a free loopback port, skipped when it is not installed.

Every wait is on a condition or an event, never a sleep-and-poll, except the smtp-sink start-up (see there).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from delivery.engine import Host, Stage
from delivery.listener import tls

LOOPBACK = "127.0.0.1"

#: A scripted reply: a fixed reply line, a {address: reply} table (unlisted addresses are accepted), or a
#: function of the address returning a reply or None (accept). ``None`` accepts.
Reply = str | Mapping[str, str] | Callable[[str], str | None] | None
#: Where to stall or drop: an engine stage, or "quit". At DATA it means after the body and the final dot
#: were received, before the reply (the "possible delivery" window).
At = Stage | Literal["quit"] | None


@dataclass(frozen=True)
class Script:
    """How a scripted peer behaves. Defaults: a plain, well-behaved ESMTP server that accepts everything."""

    greeting: str | None = None  # e.g. "421 4.3.2 busy": sent instead of the 220, then 503 to all but QUIT
    ehlo: str | None = None  # reply to EHLO instead of the capability list
    helo: str | None = None  # reply to HELO; defaults to ``ehlo`` (so a refused EHLO is not saved by HELO)
    mail: Reply = None
    rcpt: Reply = None
    data_cmd: str | None = None  # reply to the DATA command itself, instead of 354
    data: Reply = None  # reply to the final dot (called with the envelope sender); None → 250 queued
    quit: str | None = None  # reply to QUIT instead of 221
    stall_at: At = None  # never answer at this point (the client's timeout must fire)
    drop_at: At = None  # close the connection at this point
    starttls: bool = False  # offer STARTTLS with a self-signed certificate for localhost/127.0.0.1/::1
    starttls_reply: str | None = None  # reply to STARTTLS instead of 220 (e.g. "454 4.7.0 TLS not available")
    require_tls: bool = False  # refuse MAIL etc. before STARTTLS (530)
    auth: Mapping[str, str] | None = None  # users → passwords: offer AUTH PLAIN/LOGIN (after TLS) and require it
    smtputf8: bool = True  # advertise SMTPUTF8
    eightbitmime: bool = True  # advertise 8BITMIME
    size: int | None = 33_554_432  # advertised SIZE; None: not advertised
    pipelining: bool = False  # advertise PIPELINING (aiosmtpd reads pipelined commands one line at a time)
    data_delay: float = 0.0  # seconds a slow server takes to answer the final dot (the session stays open)
    greeting_delay: float = 0.0  # seconds before the 220 banner (Postfix's postscreen pauses so; then it greets)


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes  # as received, CRLF line ends, dot-unstuffed
    mail_options: tuple[str, ...]
    tls: bool
    auth_user: str | None
    helo: str | None
    client: str = ""  # the address the connection came from, as the peer saw it


class Peer:
    """One listening peer. Counters are filled from the server thread and read from the test thread."""

    def __init__(self, factory: PeerFactory, script: Script | None, kind: str) -> None:
        self.factory = factory
        self.script = script
        self.kind = kind
        self.host = LOOPBACK
        self.port = 0
        self.ca_file: str | None = _tls_files()[0] if script and script.starttls else None
        self._cond = threading.Condition()
        self._connections = 0
        self._open = 0  # SMTP sessions held now, and the most ever held at once (destination limits)
        self._peak = 0
        # Per recipient domain: the sessions that carried (a RCPT of) it held now, and the most at once
        self._open_for: dict[str, int] = {}
        self._peak_for: dict[str, int] = {}
        self._messages: list[ReceivedMessage] = []
        self._reads: list[bytes] = []
        self._server: asyncio.AbstractServer | None = None
        self._socket: socket.socket | None = None  # the refused port
        self._transports: set[asyncio.BaseTransport] = set()

    def __repr__(self) -> str:
        return f"<Peer {self.kind} {self.host}:{self.port}>"

    def as_host(self, priority: int = 0, *, address: str | None = None) -> Host:
        return Host(address or self.host, self.port, priority)

    @property
    def connections(self) -> int:
        with self._cond:
            return self._connections

    @property
    def peak_sessions(self) -> int:
        """The most SMTP sessions this peer held at the same time (scripted peers)."""
        with self._cond:
            return self._peak

    def peak_sessions_for(self, domain: str) -> int:
        """The most SMTP sessions carrying recipients of `domain` this peer held at the same time: a session
        counts for a domain from its first RCPT of it until it closes."""
        with self._cond:
            return self._peak_for.get(domain, 0)

    @property
    def open_sessions(self) -> int:
        with self._cond:
            return self._open

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self._messages)

    @property
    def reads(self) -> list[bytes]:
        """What the peer received, one item per read of its socket (after STARTTLS: the decrypted bytes), on
        every connection in order: what a client wrote at once arrives in one read on loopback."""
        with self._cond:
            return list(self._reads)

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= n, timeout):
                raise AssertionError(f"{self}: {len(self._messages)} messages after {timeout} s, wanted {n}")
            return list(self._messages)

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: self._connections >= n, timeout):
                raise AssertionError(f"{self}: {self._connections} connections after {timeout} s, wanted {n}")
            return self._connections

    def stop(self) -> None:
        self.factory._call(self._stop())

    # --- server side (runs in the factory's loop thread) ----------------------------------------------

    def _connected(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)
        with self._cond:
            self._connections += 1
            self._open += 1
            self._peak = max(self._peak, self._open)
            self._cond.notify_all()

    def _disconnected(self, domains: Collection[str] = ()) -> None:
        with self._cond:
            self._open -= 1
            for domain in domains:
                self._open_for[domain] -= 1
            self._cond.notify_all()

    def _carries(self, domain: str) -> None:
        with self._cond:
            self._open_for[domain] = self._open_for.get(domain, 0) + 1
            self._peak_for[domain] = max(self._peak_for.get(domain, 0), self._open_for[domain])

    def _read(self, data: bytes) -> None:
        with self._cond:
            self._reads.append(data)

    def _received(self, message: ReceivedMessage) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        for transport in list(self._transports):
            transport.close()
        self._transports.clear()


# --- protocols ------------------------------------------------------------------------------------------


class _Silent(asyncio.Protocol):
    """Accept the connection and never say a word."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer._connected(transport)


class _Closer(asyncio.Protocol):
    """Accept the connection and hang up at once."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer._connected(transport)
        transport.close()


class _Refuser(asyncio.Protocol):
    """Send a non-220 greeting. A 421 closes (RFC 5321 §3.8); otherwise 503 to everything but QUIT (§3.1)."""

    def __init__(self, peer: Peer, greeting: str) -> None:
        self.peer = peer
        self.greeting = greeting
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer._connected(transport)
        transport.write(self.greeting.encode() + b"\r\n")
        if self.greeting.startswith("421"):
            transport.close()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip().upper() == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            self.transport.write(b"503 5.5.1 Error: no valid greeting\r\n")


class _ScriptedSMTP(SMTP):
    """aiosmtpd's server with a reply to the DATA command itself, a connection counter and a record of each read."""

    def __init__(self, peer: Peer, script: Script, **kwargs: Any) -> None:
        super().__init__(_Handler(peer, script), **kwargs)
        self.peer = peer
        self.script = script
        self.domains: set[str] = set()  # the recipient domains this session carried (peak_sessions_for)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not the second call that STARTTLS makes
            self.peer._connected(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not getattr(self, "_counted_lost", False):
            self._counted_lost = True
            self.peer._disconnected(self.domains)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.peer._read(bytes(data))
        super().data_received(data)

    async def _handle_client(self) -> None:
        if self.script.greeting_delay:
            await asyncio.sleep(self.script.greeting_delay)  # a slow greeter: the scenario, not a wait of the test
        await super()._handle_client()

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.script.starttls_reply is not None:
            await self.push(self.script.starttls_reply)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self.script.data_cmd is not None and self.envelope is not None and self.envelope.rcpt_tos:
            await self.push(self.script.data_cmd)
            return
        await super().smtp_DATA(arg)


def _reply_for(reply: Reply, address: str) -> str | None:
    if reply is None or isinstance(reply, str):
        return reply
    if callable(reply):
        return reply(address)
    return reply.get(address)


class _Handler:
    def __init__(self, peer: Peer, script: Script) -> None:
        self.peer = peer
        self.script = script

    async def _fault(self, server: SMTP, at: At) -> None:
        """Stall or drop here if the script says so. Both end only when the connection goes."""
        if self.script.drop_at == at and at is not None:
            if server.transport is not None:
                server.transport.close()
            await asyncio.Event().wait()  # cancelled by aiosmtpd when the connection is lost
        if self.script.stall_at == at and at is not None:
            await asyncio.Event().wait()  # cancelled when the peer stops or the client hangs up

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        await self._fault(server, Stage.EHLO)
        if self.script.ehlo is not None:
            if self.script.ehlo.startswith("2"):
                session.host_name = hostname
            return [self.script.ehlo]
        session.host_name = hostname
        dropped = set()
        if not self.script.eightbitmime:
            dropped.add("8BITMIME")
        if not self.script.smtputf8:
            dropped.add("SMTPUTF8")
        if self.script.size is None:
            dropped.add("SIZE")
        out = [r for r in responses if r[4:].split(" ")[0].upper() not in dropped]
        if self.script.size is not None:
            out = [f"250-SIZE {self.script.size}" if r.startswith("250-SIZE") else r for r in out]
        if self.script.pipelining:
            out.insert(1, "250-PIPELINING")
        return out

    async def handle_HELO(self, server: SMTP, session: Any, envelope: Any, hostname: str) -> str:
        await self._fault(server, Stage.EHLO)
        reply = self.script.helo if self.script.helo is not None else self.script.ehlo
        if reply is None or reply.startswith("2"):
            session.host_name = hostname
        return reply or f"250 {server.hostname}"

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        await self._fault(server, Stage.MAIL)
        reply = _reply_for(self.script.mail, address)
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        await self._fault(server, Stage.RCPT)
        reply = _reply_for(self.script.rcpt, address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        domain = address.rpartition("@")[2].lower()
        if isinstance(server, _ScriptedSMTP) and domain not in server.domains:
            server.domains.add(domain)
            self.peer._carries(domain)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        await self._fault(server, Stage.DATA)
        if self.script.data_delay:
            await asyncio.sleep(self.script.data_delay)  # a slow server: the scenario, not a wait of the test
        reply = _reply_for(self.script.data, envelope.mail_from)
        if reply is not None and not reply.startswith("2"):
            return reply
        self.peer._received(
            ReceivedMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=bytes(envelope.original_content),
                mail_options=tuple(envelope.mail_options),
                tls=session.ssl is not None,
                auth_user=session.auth_data if session.authenticated else None,
                helo=session.host_name,
                client=str(session.peer[0]) if session.peer else "",
            )
        )
        return reply or f"250 2.0.0 Ok: queued as {len(self.peer.messages)}"

    async def handle_QUIT(self, server: SMTP, session: Any, envelope: Any) -> str:
        await self._fault(server, "quit")
        return self.script.quit or "221 2.0.0 Bye"

    async def handle_exception(self, error: Exception) -> str:
        return f"451 4.3.0 peer error: {type(error).__name__}"  # never aiosmtpd's permanent 500


def _authenticator(users: Mapping[str, str]) -> Callable[..., AuthResult]:
    def check(server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            if users.get(user) == password:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    return check


# --- TLS material ---------------------------------------------------------------------------------------

_tls_lock = threading.Lock()
_tls_paths: tuple[str, str] | None = None


def _tls_files() -> tuple[str, str]:
    """(cert, key) paths of a self-signed certificate for localhost, 127.0.0.1 and ::1; made once."""
    global _tls_paths
    with _tls_lock:
        if _tls_paths is None:
            cert, key = tls.self_signed("localhost", addresses=("127.0.0.1", "::1"), days=30, ca=True)
            directory = Path(tempfile.mkdtemp(prefix="esaroutes-peers-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            cert_path, key_path = directory / "cert.pem", directory / "key.pem"
            cert_path.write_bytes(cert)
            key_path.write_bytes(key)
            _tls_paths = (str(cert_path), str(key_path))
        return _tls_paths


def server_tls_context() -> ssl.SSLContext:
    cert, key = _tls_files()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


# --- the factory ----------------------------------------------------------------------------------------


class PeerFactory:
    """Owns one event loop thread and every peer started on it; ``close()`` stops them all."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="smtp-peers", daemon=True)
        self._thread.start()
        self._peers: list[Peer] = []

    def _next_address(self) -> str:
        """127.0.0.1 for the first peer, 127.0.0.2 for the second, ...: a route may list a host once (with one
        port), so peers of one route need addresses of their own. All of 127.0.0.0/8 is loopback on Linux."""
        return f"127.0.0.{len(self._peers) % 250 + 1}"

    def __enter__(self) -> PeerFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def start(self, **script: Any) -> Peer:
        """A scripted aiosmtpd peer (or, for greeting faults, a raw one); see :class:`Script`."""
        return self._start(None, script)

    def start_at(self, address: str, port: int, **script: Any) -> Peer:
        """:meth:`start` listening on (address, port) instead of the next 127.0.0.x: ``start_at("::1",
        other.port)`` puts a peer on each family of one host name."""
        return self._start((address, port), script)

    def _start(self, at: tuple[str, int] | None, script: dict[str, Any]) -> Peer:
        s = Script(**script)
        peer = Peer(self, s, "smtp")
        if s.stall_at in (Stage.CONNECT, Stage.GREETING):
            return self._raw(peer, lambda: _Silent(peer))
        if s.drop_at in (Stage.CONNECT, Stage.GREETING):
            return self._raw(peer, lambda: _Closer(peer))
        if s.greeting is not None:
            greeting = s.greeting
            return self._raw(peer, lambda: _Refuser(peer, greeting))
        tls = server_tls_context() if s.starttls else None

        def protocol() -> asyncio.BaseProtocol:
            return _ScriptedSMTP(
                peer,
                s,
                hostname="peer.test",
                enable_SMTPUTF8=True,  # advertising is filtered by the EHLO hook
                decode_data=False,
                data_size_limit=s.size,
                tls_context=tls,
                require_starttls=s.require_tls,
                auth_required=s.auth is not None,
                auth_require_tls=True,
                authenticator=_authenticator(s.auth) if s.auth is not None else None,
                loop=self._loop,
            )

        return self._raw(peer, protocol, at)

    def silent(self) -> Peer:
        """Accepts TCP connections and never says anything (a stalled greeting)."""
        peer = Peer(self, None, "silent")
        return self._raw(peer, lambda: _Silent(peer))

    def closing(self) -> Peer:
        """Accepts TCP connections and closes them at once."""
        peer = Peer(self, None, "closing")
        return self._raw(peer, lambda: _Closer(peer))

    def refused(self) -> Peer:
        """A loopback port that refuses connections: bound, never listening, so nobody else takes it."""
        peer = Peer(self, None, "refused")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        peer.host = self._next_address()
        sock.bind((peer.host, 0))
        peer._socket = sock
        peer.port = sock.getsockname()[1]
        self._peers.append(peer)
        return peer

    def _raw(self, peer: Peer, protocol: Callable[[], asyncio.BaseProtocol], at: tuple[str, int] | None = None) -> Peer:
        peer.host, port = at or (self._next_address(), 0)

        async def listen() -> asyncio.AbstractServer:
            return await self._loop.create_server(protocol, peer.host, port)

        server = self._call(listen())
        peer._server = server
        peer.port = server.sockets[0].getsockname()[1]
        self._peers.append(peer)
        return peer

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            for peer in self._peers:
                await peer._stop()
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(RuntimeError):
            self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def peers() -> Iterator[PeerFactory]:
    with PeerFactory() as factory:
        yield factory


# --- Postfix smtp-sink ----------------------------------------------------------------------------------


@dataclass
class SmtpSink:
    host: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)

    def as_host(self, priority: int = 0) -> Host:
        return Host(self.host, self.port, priority)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _smtp_sink_path() -> str | None:
    found = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    return found if Path(found).exists() else None


@pytest.fixture
def smtp_sink(smtp_sinks: Callable[..., SmtpSink]) -> SmtpSink:
    """Postfix's smtp-sink (accepts and discards everything) on a free loopback port."""
    return smtp_sinks()


@pytest.fixture
def smtp_sinks() -> Iterator[Callable[..., SmtpSink]]:
    """Start Postfix smtp-sinks with options of its own, e.g. ``smtp_sinks("-r", "RCPT", "-b", "452 4.3.1 full")``
    (every RCPT answered with that 4xx), each on its own loopback address and port; all stopped at the end."""
    exe = _smtp_sink_path()
    if exe is None:
        pytest.skip("smtp-sink not installed (Debian: apt-get install postfix)")
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str, host: str = LOOPBACK) -> SmtpSink:
        port = free_port()
        cmd = [exe, *options, "-c", f"{host}:{port}", "100"]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        _wait_listening(proc, port, host=host)
        return SmtpSink(host, port, proc)

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(timeout=5)
            if proc.stderr is not None:
                proc.stderr.close()


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 5.0, *, host: str = LOOPBACK) -> None:
    """smtp-sink says nothing when it is ready, so try to connect; the pause between tries is a wait on
    the process, which also notices at once if it died."""
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout)
    while dt.datetime.now(dt.UTC) < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.02)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            pytest.fail(f"smtp-sink exited with {proc.returncode}: {err}")
    pytest.fail(f"smtp-sink did not listen on {host}:{port} within {timeout} s")
