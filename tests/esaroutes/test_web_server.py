"""The real web server (`manage.py web`, as bin/run starts it) against slow HTTP clients (issue 11, item 7).

Slowloris: connections that send their request headers a byte at a time hold whatever reads them. The web UI
must stay up for everyone else while 100+ of them drip, and the header deadline must drop them however they drip.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.cookiejar
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from esaroutes import webserver
from tests.esaroutes import test_run

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "a-long-admin-password"
SLOW_CLIENTS = 120
HEADER_TIMEOUT = 15  # ESAROUTES_WEB_HEADER_TIMEOUT for this server: long enough to probe while they all drip
PROMPT = 2.0  # seconds: a generous bound for a page on loopback


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def threads(self) -> int:
        """Threads of every process of the server (master and workers)."""
        pids = {self.process.pid, *test_run._descendants(self.process.pid)}
        tasks = [Path(f"/proc/{pid}/task") for pid in pids]
        return sum(len(list(task.iterdir())) for task in tasks if task.exists())


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[Server]:
    port = test_run._free_port()
    # The embedded default in a fresh data directory, as a newcomer's bin/run has it.
    environ = test_run.newcomer_environ(
        tmp_path,
        ESAROUTES_WEB_LISTEN=f"127.0.0.1:{port}",
        ESAROUTES_WEB_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        ESAROUTES_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput", "--verbosity", "0"], ["ensureadmin"]):
        subprocess.run([*manage, *command], cwd=ROOT, env=environ, check=True, capture_output=True)
    log = (tmp_path / "web.log").open("wb")  # a file, not a pipe: an access log nobody reads must not block it
    process = subprocess.Popen(
        [*manage, "web"], cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(port, process)
    children: set[int] = set()
    try:
        up = test_run._wait_until(lambda: test_run._http_ok(server.url("/healthz")), 60)
        assert up, (tmp_path / "web.log").read_text(errors="replace")[-3000:]
        children = test_run._descendants(process.pid)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
        # Checked even when the test failed: nothing the test started outlives it.
        left = test_run._wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 30)
        if not left:
            for pid in children:
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == 0, (tmp_path / "web.log").read_text(errors="replace")[-3000:]


class Slowloris:
    """Connections that send their headers one byte a second and never finish them."""

    HEADERS = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.opened_at = 0.0
        self.dropped_after: dict[int, float] = {}  # connection index -> seconds from open to the server's close
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._socks: list[socket.socket] = []

    def __enter__(self) -> Slowloris:
        self.opened_at = time.monotonic()
        self._socks = [socket.create_connection(("127.0.0.1", self.port), timeout=5) for _ in range(self.count)]
        for s in self._socks:
            s.setblocking(False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for s in self._socks:
            s.close()

    def open(self) -> int:
        return self.count - len(self.dropped_after)

    def _drip(self) -> None:
        sel = selectors.DefaultSelector()
        for i, s in enumerate(self._socks):
            sel.register(s, selectors.EVENT_READ, i)
        sent = 0
        while not self._stop.is_set() and self.open():
            for key, _ in sel.select(timeout=0):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data:  # the server closed it (an answer before the close is read and ignored)
                    self.dropped_after[key.data] = time.monotonic() - self.opened_at
                    sel.unregister(key.fileobj)
            byte = self.HEADERS[sent % len(self.HEADERS) : sent % len(self.HEADERS) + 1]
            for i, s in enumerate(self._socks):
                if i not in self.dropped_after:
                    with contextlib.suppress(OSError):  # reset: the select above records it next round
                        s.send(byte)
            sent += 1
            self._stop.wait(1.0)
        sel.close()


def _logged_in_opener(server: Server) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(server.url("/login/"), timeout=10) as response:
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', response.read())
    assert token
    form = {"username": "admin", "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": token.group(1).decode()}
    with opener.open(server.url("/login/"), data=urllib.parse.urlencode(form).encode(), timeout=10) as response:
        assert urllib.parse.urlsplit(response.url).path == "/"
    return opener


def _timed_get(opener: urllib.request.OpenerDirector, url: str) -> tuple[float, int | str]:
    """Seconds to the whole answer, and its status (or the error); a redirect elsewhere (the login page) fails."""
    started = time.monotonic()
    try:
        with opener.open(url, timeout=PROMPT * 3) as response:
            response.read()
            status: int | str = response.status if response.url == url else f"redirected to {response.url}"
    except OSError as exc:
        status = f"{type(exc).__name__}: {exc}"
    return time.monotonic() - started, status


@pytest.mark.slow
def test_web_ui_answers_while_100_slowloris_clients_drip_and_drops_them_at_the_header_deadline(web_server):
    opener = _logged_in_opener(web_server)
    with Slowloris(web_server.port, SLOW_CLIENTS) as slow:
        probes = []
        for _ in range(5):
            for path in ("/healthz", "/"):
                elapsed, status = _timed_get(opener, web_server.url(path))
                probes.append((path, round(elapsed, 2), status, slow.open()))
        threads = web_server.threads()
        # Every probe answered 200 promptly while (nearly) every slow client was still connected.
        assert all(status == 200 and elapsed < PROMPT for _, elapsed, status, _ in probes), probes
        assert all(still_open >= 100 for *_, still_open in probes), probes
        # The slow clients hold connections, not threads: the server has far fewer threads than there are clients.
        assert threads < SLOW_CLIENTS, threads
        # The header deadline drops each of them, however it drips, once it has run out (not before).
        assert test_run._wait_until(lambda: slow.open() == 0, HEADER_TIMEOUT + 30), f"{slow.open()} still open"
        assert min(slow.dropped_after.values()) >= HEADER_TIMEOUT - 1, sorted(slow.dropped_after.values())[:5]
    elapsed, status = _timed_get(opener, web_server.url("/healthz"))
    assert status == 200 and elapsed < PROMPT


def test_request_headers_with_an_underscore_never_reach_django():
    """X_Forwarded_Proto would land on the same environ key as the proxy's X-Forwarded-Proto."""
    seen: dict[str, object] = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]

    scope: Any = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"x_forwarded_proto", b"https"), (b"host", b"relay.test"), (b"x-forwarded-proto", b"http")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def serve_one():
        loop = asyncio.get_running_loop()

        def call_soon(func, *args):  # as Hypercorn runs send() from Django's thread
            return asyncio.run_coroutine_threadsafe(func(*args), loop).result()

        wrapper = webserver.DjangoApp(app, 1024)
        await wrapper(scope, receive, send, functools.partial(loop.run_in_executor, None), call_soon)

    asyncio.run(serve_one())
    assert seen["HTTP_X_FORWARDED_PROTO"] == "http"
    assert seen["HTTP_HOST"] == "relay.test"
