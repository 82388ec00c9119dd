"""The web server's worker: gunicorn manages the processes, Hypercorn's event loop reads the requests.

gunicorn's own threaded worker hands each new connection to a thread, which then waits for the request: a few
dozen clients sending their headers a byte at a time hold every thread (issue 11). In this worker each process
runs one asyncio loop (Hypercorn, HTTP/1.1 parsed by h11) that holds any number of connections and hands Django a
request only once its head and body have arrived, to run in one of `--threads` threads. A slow client costs a
connection, never a thread. Hypercorn's idle timer runs from the moment a connection opens, or its last response
ends, until a complete request head has arrived, and bytes do not restart it: a client that has not sent its
request head after ESAROUTES_WEB_HEADER_TIMEOUT seconds is dropped, however it drips.

gunicorn keeps what it does well: worker processes restarted when they die, SIGTERM as a graceful stop (in-flight
requests finish within --graceful-timeout), SIGINT/SIGQUIT as a quick one, and its heartbeat (a worker whose loop
stops turning is killed after --timeout).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from django.conf import settings
from gunicorn.workers import base  # type: ignore[import-untyped]
from hypercorn.app_wrappers import WSGIWrapper
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

# Seconds a connection may stay silent while its request body is awaited, or its response computed, before it is
# closed: bounds a client that sends a request head and then stalls. No page takes this long.
READ_TIMEOUT = 300


def hypercorn_config(fds: list[int], *, graceful_timeout: float) -> Config:
    config = Config()
    config.bind = [f"fd://{fd}" for fd in fds]
    config.keep_alive_timeout = settings.ESAROUTES_WEB_HEADER_TIMEOUT
    config.read_timeout = READ_TIMEOUT
    config.graceful_timeout = graceful_timeout
    config.accesslog = "-"  # one line per request on stdout, as gunicorn had it
    config.errorlog = logging.getLogger("hypercorn.error")  # to the application log, like Django's own errors
    return config


class DjangoApp(WSGIWrapper):
    """Django's WSGI app as Hypercorn runs it, less the request headers whose names hold an underscore.

    In the WSGI environ `X_Forwarded_Proto` and `X-Forwarded-Proto` are the same key (HTTP_X_FORWARDED_PROTO), so a
    client could pass for the proxy; nginx, Apache, gunicorn and Django's runserver drop such headers, Hypercorn
    does not.
    """

    async def __call__(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] == "http":
            scope["headers"] = [(name, value) for name, value in scope["headers"] if b"_" not in name]
        await super().__call__(scope, receive, send, sync_spawn, call_soon)


class HypercornWorker(base.Worker):  # type: ignore[misc]
    config: Config | None = None  # set once the worker serves

    def run(self) -> None:
        # Hypercorn owns (and closes) duplicates of the listening sockets gunicorn opened before forking.
        fds = [os.dup(s.fileno()) for s in self.sockets]
        # Finish in-flight requests before gunicorn's own graceful timeout runs out and it kills the process.
        self.config = hypercorn_config(fds, graceful_timeout=max(1.0, self.cfg.graceful_timeout - 2))
        asyncio.run(self._serve(self.config))

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT or SIGQUIT (Ctrl-C on a terminal): a quick stop, through Hypercorn's shutdown all the same.

        gunicorn's own handler raises SystemExit wherever the loop happens to be, and asyncio logs a traceback for
        every connection it then cancels. Idle and half-sent connections close at once; a request still running
        gets a second."""
        if self.config is None:  # still booting: gunicorn's own quick exit, nothing to close yet
            super().handle_quit(sig, frame)
            return
        self.alive = False
        self.config.graceful_timeout = 1.0

    async def _serve(self, config: Config) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="web"))
        app = DjangoApp(self.wsgi, config.wsgi_max_body_size)
        await worker_serve(app, config, shutdown_trigger=self._until_stopped)

    async def _until_stopped(self) -> None:
        """Returns (Hypercorn then stops gracefully) once gunicorn's SIGTERM handler or the master's death says so."""
        while self.alive and os.getppid() == self.ppid:
            self.notify()  # gunicorn's heartbeat: this loop is turning
            await asyncio.sleep(1.0)
