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
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from gunicorn.workers import base  # type: ignore[import-untyped]
from hypercorn.asyncio import serve
from hypercorn.config import Config

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


class HypercornWorker(base.Worker):  # type: ignore[misc]
    def run(self) -> None:
        # Hypercorn owns (and closes) duplicates of the listening sockets gunicorn opened before forking.
        fds = [os.dup(s.fileno()) for s in self.sockets]
        # Finish in-flight requests before gunicorn's own graceful timeout runs out and it kills the process.
        config = hypercorn_config(fds, graceful_timeout=max(1.0, self.cfg.graceful_timeout - 2))
        asyncio.run(self._serve(config))

    async def _serve(self, config: Config) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="web"))
        await serve(self.wsgi, config, shutdown_trigger=self._until_stopped, mode="wsgi")

    async def _until_stopped(self) -> None:
        """Returns (Hypercorn then stops gracefully) once gunicorn's SIGTERM handler or the master's death says so."""
        while self.alive and os.getppid() == self.ppid:
            self.notify()  # gunicorn's heartbeat: this loop is turning
            await asyncio.sleep(1.0)
