"""`Listener`: the asyncio server and what its sessions share; `serve()` runs one, `ListenerThread` in a thread.

The listener owns the listening socket, the connection counter (`connlimits`), the cached access rules, the ORM
thread pools (one for the sessions' jobs, one thread for the group commit), and this process's block of ICIDs.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection

from delivery import access, maillog
from delivery.listener import connlimits
from delivery.listener.commit import Committer
from delivery.listener.config import Config
from delivery.listener.handler import Handler
from delivery.listener.session import Names, Session
from delivery.listener.tls import tls_context
from delivery.spool import intake
from esaroutes import eventloop

logger = logging.getLogger(__name__)

R = TypeVar("R")


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
        self.smtp_names: Names | None = None  # aiosmtpd's method tables, found by the first session

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
        maillog.writer.start_background_writer()
        self._maillog_started = True
        self.committer = Committer(self.commit, writers=1)
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
            await loop.run_in_executor(None, maillog.writer.stop_background_writer)

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
            eventloop.run(main())
        except BaseException as exc:
            self._error = exc
            logger.exception("listener thread failed")
        finally:
            self._ready.set()
