"""`manage.py smtpd`: the inbound SMTP listener on ESAROUTES_SMTP_LISTEN, until SIGTERM or SIGINT.

`ESAROUTES_SMTP_PROCESSES` (or `--processes`; default: one per CPU) listener processes share the port: this one
binds it first (so `--listen 127.0.0.1:0` picks one free port for all), then forks the others, each of which
binds its own socket to the same port with `SO_REUSEPORT`; the kernel spreads new connections over them. Each
process has its own event loop, database connections and commit thread; the ready line is printed once every
process listens.

The connection limits (`ESAROUTES_SMTP_MAX_CONNECTIONS` / `_PER_CLIENT`) are the installation's: with Redis every
process counts there (`connlimits.RedisCounter`); on the embedded default the processes share a table this one
makes before it forks (`connlimits.SharedCounter`), process `i` taking its row `i`.

On a signal it stops accepting, lets sessions in progress finish for a few seconds (`--grace`), then closes the
rest with `421` (a client retries anything it has not had a `250` for) and exits; the first process passes the
signal on to the others and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import sys
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from delivery.listener import connlimits, server, tls
from delivery.listener.config import Config, config_from_settings
from esaroutes import eventloop

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the inbound SMTP listener (ESAROUTES_SMTP_LISTEN)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen", help="HOST:PORT or [IPv6]:PORT instead of ESAROUTES_SMTP_LISTEN (port 0: any free one)"
        )
        parser.add_argument("--grace", type=float, default=5.0, help="seconds for sessions to finish on stop")
        parser.add_argument(
            "--processes", type=int, default=0, help="listener processes (default ESAROUTES_SMTP_PROCESSES)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # The event loop thread gives up the GIL at every socket call; with the default 5 ms switch interval it
        # then waits behind the database threads' Python work (the convoy effect). 0.5 ms keeps it responsive.
        sys.setswitchinterval(float(os.environ.get("ESAROUTES_SMTP_SWITCH_INTERVAL", "0.0005")))
        # Every message allocates thousands of short-lived objects (ORM, email parsing, Celery messages): with the
        # default thresholds the cyclic collector ran several times per message, rescanning everything imported at
        # start-up. Freeze those and collect the young generation less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        overrides: dict[str, Any] = {"shutdown_grace": options["grace"]}
        if options["listen"]:
            from esaroutes.env import parse_listen

            listen = options["listen"]
            any_port = listen.endswith(":0")  # HOST:0, a free port chosen by the system (tests, bench)
            overrides["host"], overrides["port"] = parse_listen(listen[:-1] + "1" if any_port else listen)
            if any_port:
                overrides["port"] = 0
        config = config_from_settings(**overrides)
        processes = max(1, options["processes"] or settings.ESAROUTES_SMTP_PROCESSES)
        sock = server.listen_socket(config.host, config.port)
        config = replace(config, port=int(sock.getsockname()[1]))
        tls.tls_context(config)  # make the self-signed certificate (if needed) once, before the children start
        table = None
        if processes > 1 and not settings.REDIS_URL:
            table = connlimits.SharedCounter(
                processes, connlimits.Limits(config.max_connections, config.max_connections_per_client)
            )
        children: list[int] = []
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        for index in range(1, processes):
            pid = os.fork()
            if pid == 0:  # a child: no database connection, thread or event loop exists yet
                sock.close()
                os.close(ready_r)
                _exit_with_parent()
                code = 1
                try:
                    eventloop.run(self._run(config, None, ready_fd=ready_w, table=table, index=index))
                    code = 0
                except BaseException:
                    logger.exception("SMTP listener process %s failed", os.getpid())
                finally:
                    os._exit(code)
            children.append(pid)
        os.close(ready_w)
        try:
            eventloop.run(self._run(config, sock, children=children, ready_fd=ready_r, table=table, index=0))
        finally:
            os.close(ready_r)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        self.stdout.write("SMTP listener stopped")

    async def _run(
        self,
        config: Config,
        sock: socket.socket | None,
        *,
        ready_fd: int,
        children: list[int] | None = None,
        table: connlimits.SharedCounter | None = None,
        index: int = 0,
    ) -> None:
        if table is not None:
            table.attach(index)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def ready(running: server.Listener) -> None:
            if children is None:  # a child: tell the first process it listens
                os.write(ready_fd, b".")
                return
            waiting = len(children)
            while waiting:
                got = await loop.run_in_executor(None, _read_ready, ready_fd, waiting, children)
                if not got:  # a child died before it listened: stop all rather than run short or hang
                    logger.error("an SMTP listener process failed to start; stopping")
                    stop.set()
                    return
                waiting -= len(got)
            host, port = running.address
            extra = f" ({len(children) + 1} processes)" if children else ""
            self.stdout.write(f"SMTP listener on {host} port {port}{extra}", ending="\n")
            self.stdout.flush()

        announcing: list[asyncio.Task[None]] = []

        def on_ready(running: server.Listener) -> None:
            announcing.append(loop.create_task(ready(running)))

        await server.serve(config, stop, ready=on_ready, sock=sock, connections=table)


def _read_ready(fd: int, waiting: int, children: list[int]) -> bytes:
    """Read readiness bytes from the children; b"" as soon as one of them has exited instead."""
    while True:
        readable, _, _ = select.select([fd], [], [], 0.5)
        if readable:
            return os.read(fd, waiting)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return b""


def _exit_with_parent() -> None:
    """Linux: SIGTERM this process when the first one dies, so no listener outlives it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
