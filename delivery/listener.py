"""The inbound SMTP listener: aiosmtpd on `ESAROUTES_SMTP_LISTEN`, never an open relay, nothing lost after 250.

Shape
- `Listener` owns the asyncio server (`loop.create_server`, IPv4 or IPv6), the connection counter (the
  installation's limits, over every listener process: `delivery.connlimits`),
  the cached `access.AccessSnapshot` (refreshed in the background at most every `ESAROUTES_SMTP_ACCESS_REFRESH`
  seconds, never on the RCPT path) and a bounded `ThreadPoolExecutor` (`ESAROUTES_SMTP_DB_THREADS`) for the ORM.
  Every database call is one sync function from `delivery.spool.intake` (one transaction each) run in that pool: not
  `sync_to_async`'s default single thread, which would serialise every session's commit behind the others;
  several commits in flight let PostgreSQL group their WAL flushes. A failed job closes its thread's connection,
  so a restarted database is reconnected on the next job, and `stop()` closes every thread's connection.
- `Session` (an aiosmtpd `SMTP` subclass, one per connection) adds what aiosmtpd lacks: connection limits (`421`
  before the greeting), a data timeout that restarts on every packet of DATA (aiosmtpd's own timer only restarts
  on commands), an error budget (`421` and disconnect after `ESAROUTES_SMTP_MAX_ERRORS` 5xx replies), the raw RCPT
  argument (aiosmtpd strips source routes before the handler sees the address), and the `ICID n close` line.
- `Handler` holds the SMTP decisions: relay or RAT at RCPT, recipient limit, AUTH checked off the loop, and the
  durable DATA: `250 2.0.0 Ok: queued as <MID>` only once `intake.accept` committed, `451 4.3.0` otherwise.

Log lines: `New SMTP ICID` and the policy line are buffered at connect (an ICID costs one sequence call, before
the greeting) and written in the transaction of the connection's first message, or with `ICID n close` when it
ends; every message's lines are written in the transaction that stores it.

Also here: `send_test_message()` (the route test page, `manage.py sendtest`) and `ListenerThread` (tests, bench).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as dt
import email.utils
import fcntl
import ipaddress
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any, TypeVar

import aiosmtpd
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, _AuthMechAttr
from aiosmtpd.smtp import Session as SmtpSession
from django import db
from django.conf import settings
from django.db import connection
from django.utils import timezone

from delivery import access, connlimits, maillog
from delivery.spool import intake
from esaroutes import throttle

logger = logging.getLogger("delivery.listener")

R = TypeVar("R")

LOCAL_ERROR = "451 4.3.0 Local error, try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
AUTH_THROTTLED = "421 4.7.0 Too many authentication failures, try again later"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str = "localhost"
    interface: str = "Data 1"
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 1000
    max_connections: int = 300
    max_connections_per_client: int = 50
    command_timeout: float = 300.0
    data_timeout: float = 300.0
    max_errors: int = 20
    auth_without_tls: bool = False
    reverse_dns: bool = False
    reverse_dns_timeout: float = 2.0
    tls_cert: str = ""
    tls_key: str = ""
    db_threads: int = 8
    access_refresh: float = 1.0
    shutdown_grace: float = 5.0
    connections_key: str = "esaroutes:smtp:connections"  # where the counts are in Redis (connlimits)


def config_from_settings(**overrides: Any) -> Config:
    """The listener's configuration from the `ESAROUTES_SMTP_*` settings, with overrides (tests, bench)."""
    host, port = settings.ESAROUTES_SMTP_LISTEN
    base = Config(
        host=host,
        port=port,
        hostname=settings.ESAROUTES_HOSTNAME,
        interface=settings.ESAROUTES_SMTP_INTERFACE,
        max_message_size=settings.ESAROUTES_SMTP_MAX_MESSAGE_SIZE,
        max_recipients=settings.ESAROUTES_SMTP_MAX_RECIPIENTS,
        max_connections=settings.ESAROUTES_SMTP_MAX_CONNECTIONS,
        max_connections_per_client=settings.ESAROUTES_SMTP_MAX_CONNECTIONS_PER_CLIENT,
        command_timeout=settings.ESAROUTES_SMTP_COMMAND_TIMEOUT,
        data_timeout=settings.ESAROUTES_SMTP_DATA_TIMEOUT,
        max_errors=settings.ESAROUTES_SMTP_MAX_ERRORS,
        auth_without_tls=settings.ESAROUTES_SMTP_AUTH_WITHOUT_TLS,
        reverse_dns=settings.ESAROUTES_SMTP_REVERSE_DNS,
        tls_cert=settings.ESAROUTES_SMTP_TLS_CERT,
        tls_key=settings.ESAROUTES_SMTP_TLS_KEY,
        db_threads=settings.ESAROUTES_SMTP_DB_THREADS,
        access_refresh=settings.ESAROUTES_SMTP_ACCESS_REFRESH,
        # The installation is what shares the database: its name keeps two test databases on one Redis apart.
        connections_key=f"esaroutes:smtp:connections:{settings.DATABASES['default']['NAME']}",
    )
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------------------------------------
# TLS


def tls_context(config: Config) -> ssl.SSLContext:
    """The STARTTLS context: the configured certificate, else a self-signed one made once in the data directory."""
    if config.tls_cert:
        cert, key = Path(config.tls_cert), Path(config.tls_key or config.tls_cert)
    else:
        cert, key = ensure_self_signed(settings.DATA_DIR / "tls", config.hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate and key for `hostname` (10 years), generated on first use, key mode 0600."""

    cert_path, key_path = directory / "smtpd-cert.pem", directory / "smtpd-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    # Several listener processes (and machines sharing the data directory) may start at once: one makes the
    # pair, under a lock, and the others use it (two makers gave a key that did not match the certificate).
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        _make_self_signed(cert_path, key_path, hostname)
    return cert_path, key_path


def _make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname or "localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    tmp = key_path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tmp.replace(key_path)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp_cert.replace(cert_path)


# ---------------------------------------------------------------------------------------------------------------
# The listener


class Listener:
    def __init__(self, config: Config, connections: connlimits.Counter | None = None) -> None:
        self.config = config
        self.snapshot = access.AccessSnapshot()
        self.sessions: set[Session] = set()
        limits = connlimits.Limits(config.max_connections, config.max_connections_per_client)
        self.connections = connections or connlimits.for_settings(
            limits, config.connections_key, settings.REDIS_URL or ""
        )
        self.server: asyncio.Server | None = None
        self.tls: ssl.SSLContext | None = None
        self.handler = Handler(self)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.db_threads, thread_name_prefix="smtpd-db"
        )
        # Commits have a thread of their own: one transaction at a time, so batches grow with the load instead
        # of several threads fighting for the GIL and the database with small ones.
        self._commit_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="smtpd-commit")
        self._icids: collections.deque[int] = collections.deque()
        self._icid_lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set whenever no session is open
        self._maillog_started = False
        self.committer: Committer | None = None
        self.smtp_names: _Names | None = None  # aiosmtpd's method tables, found by the first session

    @property
    def per_client(self) -> dict[str, int]:
        """This process's admitted connections per client address."""
        return self.connections.clients

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None and self.server.sockets
        sockname = self.server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on `sock` when given (a socket bound by `manage.py smtpd`), else on the configured address.

        The listening socket always has `SO_REUSEPORT` (where the system has it), so several listener processes
        can share the port, the kernel spreading connections over them.
        """
        loop = asyncio.get_running_loop()
        self.tls = tls_context(self.config)
        self.snapshot = await self.db(access.load_snapshot, None)
        if self.snapshot.rat.get(access.ALL):
            logger.warning("the Recipient Access Table accepts ALL domains: any client may send to any domain")
        if sock is None:
            sock = listen_socket(self.config.host, self.config.port)
        await self.connections.start()
        self.server = await loop.create_server(lambda: Session(self), sock=sock)
        self._refresher = loop.create_task(self._refresh_loop())
        maillog.start_background_writer()
        self._maillog_started = True
        self.committer = Committer(self, writers=1)
        logger.info("SMTP listener on %s port %s", *self.address)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let sessions finish for `grace` seconds, then drop them and release the database."""
        grace = self.config.shutdown_grace if grace is None else grace
        if self.server is not None:
            self.server.close()
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for session in list(self.sessions):
            session.drop()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.connections.stop()
        if self.committer is not None:
            await self.committer.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._close_db_connections)
        await loop.run_in_executor(self._commit_executor, intake.close_connection)
        self._executor.shutdown(wait=True)
        self._commit_executor.shutdown(wait=True)
        if self._maillog_started:
            self._maillog_started = False
            await loop.run_in_executor(None, maillog.stop_background_writer)

    def _close_db_connections(self) -> None:
        """Run `connection.close()` once in every worker thread (a barrier makes each thread take one job)."""
        n = self.config.db_threads
        barrier = threading.Barrier(n)

        def close() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=5)
            intake.close_connection()

        for future in [self._executor.submit(close) for _ in range(n)]:
            future.result()

    async def db(self, fn: Callable[..., R], *args: Any) -> R:
        """Run one sync ORM function (one transaction) in the worker pool."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, _job, fn, args)

    async def commit(self, fn: Callable[..., R], *args: Any) -> R:
        """Run one group commit in the commit thread."""
        return await asyncio.get_running_loop().run_in_executor(self._commit_executor, _job, fn, args)

    async def next_icid(self) -> int:
        """An ICID from this process's reserved block: a database call per `ICID_BLOCK` connections, not per one."""
        if not self._icids:
            async with self._icid_lock:
                if not self._icids:
                    self._icids.extend(await self.db(intake.reserve_icids, ICID_BLOCK))
        return self._icids.popleft()

    async def refresh_access(self) -> None:
        self.snapshot = await self.db(access.load_snapshot, self.snapshot)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.access_refresh)
            try:
                await self.refresh_access()
            except Exception:
                logger.warning("access rules not refreshed (keeping the previous ones)", exc_info=True)

    async def reverse_dns(self, ip: str) -> tuple[str, bool]:
        """(PTR name, verified by a forward lookup), or ("unknown", False); never longer than the timeout."""
        if not self.config.reverse_dns:
            return "unknown", False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.reverse_dns_timeout):
                name, _ = await loop.getnameinfo((ip, 0), socket.NI_NAMEREQD)
                infos = await loop.getaddrinfo(name, None)
        except (OSError, TimeoutError, UnicodeError):
            return "unknown", False
        return name, any(info[4][0] == ip for info in infos)


ICID_BLOCK = 50


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one) with SO_REUSEADDR and, where the system has it,
    SO_REUSEPORT: each listener process binds its own socket to the same port and the kernel shares the
    connections out among them."""
    family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(511)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _job(fn: Callable[..., R], args: tuple[Any, ...]) -> R:
    try:
        return fn(*args)
    except BaseException:
        # The connection may be dead (database restarted, backend killed): drop it, the next job reconnects.
        with contextlib.suppress(Exception):
            connection.close()
        raise


class Committer:
    """Group commit: messages waiting for their commit are stored together, in one transaction per batch.

    A session's DATA waits on `submit()`; `writers` tasks each take everything waiting (up to `max_batch`) and
    run `intake.accept_many` in the worker pool, so with 10 sessions committing at once there are a few
    transactions in flight instead of 10, each with one multi-row INSERT per table and one WAL flush. Every
    `250` still follows the commit of the batch that holds its message. When a batch fails, its messages are
    retried one by one, so one bad message never fails its neighbours; a database outage fails each (451).
    Connection lines (`ICID n close`, ...) ride along with the next batch, or go alone when no message waits.
    """

    def __init__(self, listener: Listener, *, writers: int, max_batch: int = 200) -> None:
        self.listener = listener
        self.max_batch = max_batch
        self._waiting: list[tuple[intake.Incoming, asyncio.Future[int]]] = []
        self._lines: list[maillog.Line] = []
        self._wake = asyncio.Event()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        loop = asyncio.get_running_loop()
        self._writers = [loop.create_task(self._writer()) for _ in range(writers)]

    async def submit(self, incoming: intake.Incoming) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((incoming, future))
        self._kick()
        return await future

    def log(self, lines: list[maillog.Line]) -> None:
        self._lines += lines
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def close(self) -> None:
        """Write everything still waiting, then stop the writers."""
        while self._waiting or self._lines or self._busy:
            self._kick()
            await self._idle.wait()
        for task in self._writers:
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            lines, self._lines = self._lines, []
            if not self._waiting and not self._lines:
                self._wake.clear()
            if not batch and not lines:
                if not self._busy:
                    self._idle.set()
                continue
            self._busy += 1
            try:
                await self._write(batch, lines)
            finally:
                self._busy -= 1
                if not self._busy and not self._waiting and not self._lines:
                    self._idle.set()

    async def _write(self, batch: list[tuple[intake.Incoming, asyncio.Future[int]]], lines: list[maillog.Line]) -> None:
        try:
            mids = await self.listener.commit(intake.accept_many, [incoming for incoming, _ in batch], lines)
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:
                    await self._write([item], [])
                if lines:
                    await self._write([], lines)
                return
            if not batch:
                logger.warning("%d connection log lines not written", len(lines), exc_info=True)
                return
            self._settle(batch[0][1], exc)
            if lines:
                await self._write([], lines)
            return
        for (_, future), mid in zip(batch, mids, strict=True):
            self._settle(future, mid)

    @staticmethod
    def _settle(future: asyncio.Future[int], outcome: int | BaseException) -> None:
        if future.done():  # the session went away while waiting: the message is stored all the same
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


# ---------------------------------------------------------------------------------------------------------------
# One connection


@dataclass
class Conn:
    """What the listener knows about one connection, across STARTTLS (which resets aiosmtpd's `session`)."""

    ip: str = ""
    icid: int = 0
    rdns: str = "unknown"
    relay: bool = False
    helo: str = ""
    tls: bool = False
    auth_user: str = ""
    messages: int = 0
    errors: int = 0
    pending: list[maillog.Line] = field(default_factory=list)

    def log(self, line: maillog.Line) -> None:
        self.pending.append(intake.stamp(line))


@dataclass(frozen=True)
class _Names:
    auth: dict[str, tuple[str, bool]]
    hooks: tuple[str, ...]
    smtp: tuple[str, ...]


IDENT = "ESMTP esaroutes"
_FAST_INIT = aiosmtpd.__version__.startswith("1.4.")


class Session(SMTP):
    def __init__(self, listener: Listener) -> None:
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
            listener.smtp_names = _Names(
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
        self._out = b""

    def _light_init(self, listener: Listener, names: _Names) -> None:
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
                lines = [*self.conn.pending, intake.stamp(maillog.icid_close(self.conn.icid))]
                self.conn.pending = []
                if self.listener.committer is not None:
                    self.listener.committer.log(lines)
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
        conn.log(maillog.new_icid(conn.icid, listener.config.interface, local_ip, conn.ip, conn.rdns, verified))
        if network is not None:
            conn.log(maillog.icid_policy(conn.icid, "RELAY", access.RELAY_GROUP, str(network)))
        else:
            conn.log(maillog.icid_policy(conn.icid, "ACCEPT", access.ACCEPT_GROUP, "ALL"))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

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


# ---------------------------------------------------------------------------------------------------------------
# The SMTP decisions


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?=[ ]|$)")
_FLUSH_NOW = (b"220", b"221", b"334", b"354", b"421")  # greetings, TLS, AUTH, DATA, goodbyes: never held back
_HELO_OK = re.compile(r"[\x21-\x7e]{1,255}")


class Handler:
    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    async def handle_exception(self, error: Exception) -> str:
        logger.error("SMTP session error", exc_info=error)
        return LOCAL_ERROR

    async def handle_HELO(self, server: Session, session: SmtpSession, envelope: Envelope, hostname: str) -> str:
        if not _HELO_OK.fullmatch(hostname):
            return "501 5.5.4 Invalid HELO name"
        session.host_name = hostname
        server.conn.helo = hostname
        return f"250 {self.listener.config.hostname}"

    async def handle_EHLO(
        self, server: Session, session: SmtpSession, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        if not _HELO_OK.fullmatch(hostname):
            session.host_name = None
            return ["501 5.5.4 Invalid EHLO name"]
        session.host_name = hostname
        server.conn.helo = hostname
        out = [r for r in responses if r != "250 HELP"]
        out.append("250-PIPELINING")
        out.append("250 ENHANCEDSTATUSCODES")
        return out

    def handle_STARTTLS(self, server: Session, session: SmtpSession, envelope: Envelope) -> bool:
        """Called by aiosmtpd (synchronously) once the TLS handshake is done: note it for Received and the log."""
        conn = server.conn
        conn.tls = True
        ssl_object = (session.ssl or {}).get("ssl_object")
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            conn.log(maillog.icid_tls(conn.icid, ssl_object.version() or "", cipher[0] if cipher else ""))
        return True

    async def handle_MAIL(
        self, server: Session, session: SmtpSession, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        sender = "" if address == "<>" else address
        if access.address_problem(sender) or not access.path_syntax_ok(server.mail_raw):
            return "553 5.1.7 Bad sender address syntax"
        envelope.mail_from = address  # "<>" kept as is: aiosmtpd tests mail_from for truth
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Session, session: SmtpSession, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        conn = server.conn
        if (
            access.address_problem(address)
            or "@" not in address
            or not address.rpartition("@")[0]
            or not access.path_syntax_ok(server.rcpt_raw)
        ):
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= self.listener.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        relay = conn.relay or bool(session.authenticated)
        decision = access.check_recipient(self.listener.snapshot, address, raw=server.rcpt_raw, relay=relay)
        if not decision.accepted:
            conn.log(maillog.rejected_by_rat(conn.icid, address))
            return f"550 5.7.1 <{address}>... Relaying denied"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Session, session: SmtpSession, envelope: Envelope) -> str:
        conn = server.conn
        conn.messages += 1
        raw = envelope.original_content or b""
        assert isinstance(raw, bytes)
        now = timezone.now()
        sender = "" if envelope.mail_from in ("<>", None) else str(envelope.mail_from)
        recipients = tuple((r, access.envelope_domain(r)) for r in envelope.rcpt_tos)
        headers = header_values(raw)
        data = received_header(self.listener.config, conn, session, envelope.rcpt_tos, now) + raw
        pending, conn.pending = conn.pending, []
        incoming = intake.Incoming(
            icid=conn.icid,
            sender=sender,
            recipients=recipients,
            data=data,
            client_address=_ip_or_none(conn.ip),
            client_helo=conn.helo,
            auth_user=conn.auth_user,
            message_id=storable(headers.get("message-id", "")),
            subject=decode_subject(headers.get("subject", "")),
            pending_lines=tuple(pending),
        )
        server.hold_timeout()
        try:
            assert self.listener.committer is not None
            mid = await self.listener.committer.submit(incoming)
        except (db.Error, OSError):
            conn.pending[:0] = pending
            logger.exception("ICID %s: message not stored, answered 451", conn.icid)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        except Exception:
            conn.pending[:0] = pending
            raise
        return f"250 2.0.0 Ok: queued as {mid}"

    # --- AUTH: aiosmtpd parses, we check the password in the worker pool ----------------------------------
    # Behind the login throttle (esaroutes/throttle.py, scope SMTP): a client address or a username with too many
    # recent failures, counted in the shared cache across connections and listener processes, gets a 421 and the
    # connection closed before any password is checked. Every outcome is a mail log line, written at once.

    async def auth_PLAIN(self, server: Session, args: list[str]) -> AuthResult:
        return await self._auth(server, await server.auth_PLAIN(None, args), "PLAIN")

    async def auth_LOGIN(self, server: Session, args: list[str]) -> AuthResult:
        return await self._auth(server, await server.auth_LOGIN(None, args), "LOGIN")

    async def _auth(self, server: Session, parsed: AuthResult, mechanism: str) -> AuthResult:
        if not parsed.success or not isinstance(parsed.auth_data, LoginPassword):
            return parsed
        conn = server.conn
        username = parsed.auth_data.login.decode("utf-8", "replace")
        password = parsed.auth_data.password.decode("utf-8", "replace")
        snapshot = self.listener.snapshot
        outcome = await self.listener.db(
            throttle.attempt, throttle.SMTP, conn.ip, username, lambda: access.check_login(snapshot, username, password)
        )
        if outcome.refusal is not None:
            self._log_auth(server, _throttled_line(conn, username, outcome.refusal))
            logger.warning(
                "ICID %s: SMTP AUTH refused for %r from %s: too many authentication failures for the %s",
                conn.icid,
                username,
                conn.ip,
                outcome.refusal.by,
            )
            server._closing = True
            await server.push(AUTH_THROTTLED)
            server._close()
            return AuthResult(success=False, handled=True)
        if not outcome.ok:
            lines = [maillog.auth_failed(conn.icid, username, mechanism)]
            refusal = throttle.decide(outcome.counts, throttle.policy(throttle.SMTP)) if outcome.locked_now else None
            if refusal is not None:
                lines.append(_throttled_line(conn, username, refusal))
            self._log_auth(server, *lines)
            logger.info("ICID %s: SMTP AUTH failed for %r from %s", conn.icid, username, conn.ip)
            return AuthResult(success=False, handled=False)
        self._log_auth(server, maillog.auth_succeeded(conn.icid, username, mechanism))
        conn.auth_user = username
        return AuthResult(success=True, auth_data=parsed.auth_data)

    def _log_auth(self, server: Session, *lines: maillog.Line) -> None:
        """Into the mail log now (an operator alerts on these), after the connection's lines still buffered."""
        conn = server.conn
        stamped = [intake.stamp(line) for line in lines]
        if self.listener.committer is None:
            conn.pending += stamped
            return
        pending, conn.pending = conn.pending, []
        self.listener.committer.log([*pending, *stamped])


def _throttled_line(conn: Conn, username: str, refusal: throttle.Refusal) -> maillog.Line:
    failures = refusal.counts.address if refusal.by == "address" else refusal.counts.username
    return maillog.auth_throttled(conn.icid, conn.ip, username, refusal.by, failures, refusal.lockout)


def _ip_or_none(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Message helpers (pure)


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


# ---------------------------------------------------------------------------------------------------------------
# Running it


async def serve(
    config: Config,
    stop: asyncio.Event,
    *,
    ready: Callable[[Listener], None] | None = None,
    sock: socket.socket | None = None,
    connections: connlimits.Counter | None = None,
) -> None:
    """Run the listener until `stop` is set, then stop gracefully (see `Listener.stop`)."""
    listener = Listener(config, connections)
    await listener.start(sock)
    if ready is not None:
        ready(listener)
    try:
        await stop.wait()
    finally:
        await listener.stop()


class ListenerThread:
    """A listener in a background thread with its own event loop (tests, bench): `start()`, `.port`, `stop()`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.listener: Listener | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="smtpd", daemon=True)

    def start(self, timeout: float = 30) -> ListenerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the listener did not start")
        if self._error is not None:
            raise RuntimeError("the listener did not start") from self._error
        return self

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.address[1]

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the listener's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: stopped already
                self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(listener: Listener) -> None:
                self.listener = listener
                self._ready.set()

            await serve(self.config, self._stop, ready=ready)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            logger.exception("listener thread failed")
        finally:
            self._ready.set()


def send_test_message(to: str, *, sender: str | None = None, subject: str | None = None) -> str:
    """Inject a small message through the real listener (`ESAROUTES_SMTP_LISTEN`); return the 250 reply text.

    Raises `RuntimeError` with the server's reply or the connection error when the message was not accepted.
    Safe to call from sync code, even from a thread that runs an event loop.
    """
    import aiosmtplib

    host, port = settings.ESAROUTES_SMTP_LISTEN
    sender = sender if sender is not None else f"postmaster@{settings.ESAROUTES_HOSTNAME}"
    now = timezone.now()
    body = (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject or 'esaroutes test message'}\r\n"
        f"Date: {email.utils.format_datetime(now)}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain=settings.ESAROUTES_HOSTNAME)}\r\n\r\n"
        f"Test message sent by esaroutes at {now.isoformat()}.\r\n"
    ).encode()

    async def send() -> str:
        smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, start_tls=False)
        try:
            await smtp.connect()
            errors, reply = await smtp.sendmail(sender, [to], body)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            raise RuntimeError(f"{refused.code} {refused.message}") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise RuntimeError(f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RuntimeError(f"cannot talk to the listener on {host} port {port}: {exc}") from None
        finally:
            smtp.close()
        if errors:
            code, text = next(iter(errors.values()))
            raise RuntimeError(f"{code} {text}")
        return reply

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(send())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, send()).result()
