"""A real listener on a free loopback port, in a background thread's event loop, and small SMTP client helpers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiosmtplib
import pytest

from delivery.listener import config, server
from delivery.models import IdCounter, MailLogLine
from routes.models import RelayNetwork, RouteTableVersion

SENDER = "alice@sender.test"


@pytest.fixture
def base_rows(transactional_db: None) -> None:
    """The rows the migrations create, which a transactional test's flush removed."""
    for name in ("icid", "dcid"):
        IdCounter.objects.get_or_create(name=name)
    RouteTableVersion.objects.get_or_create(pk=1)
    for network in ("127.0.0.0/8", "::1/128"):
        RelayNetwork.objects.get_or_create(network=network, defaults={"comment": "loopback"})


class Running:
    def __init__(self, thread: server.ListenerThread) -> None:
        self.thread = thread

    @property
    def port(self) -> int:
        return self.thread.port

    @property
    def host(self) -> str:
        return self.thread.config.host

    def refresh(self) -> None:
        """Make the listener read the access tables now (instead of within a second)."""
        assert self.thread.listener is not None
        self.thread.call(self.thread.listener.refresh_access())

    def send(self, rcpts: list[str], body: bytes | str = b"Subject: hi\r\n\r\nhello\r\n", **kw: Any) -> Any:
        return asyncio.run(send(self.host, self.port, rcpts, body, **kw))

    def raw(self, timeout: float = 10) -> RawClient:
        return RawClient(self.host, self.port, timeout)


async def send(
    host: str,
    port: int,
    rcpts: list[str],
    body: bytes | str,
    *,
    sender: str = SENDER,
    start_tls: bool = False,
    login: tuple[str, str] | None = None,
    mail_options: list[str] | None = None,
) -> Any:
    smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=20, start_tls=start_tls, validate_certs=False)
    await smtp.connect()
    try:
        if login:
            await smtp.login(*login)
        return await smtp.sendmail(sender, rcpts, body, mail_options=mail_options)
    finally:
        if smtp.is_connected:  # a polite client: QUIT, so the log says "ICID n close", not "lost"
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit(timeout=5)
        smtp.close()


class RawClient:
    """A plain socket for what aiosmtplib will not send: malformed commands, pipelining, stalls."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\n".join(lines)

    def cmd(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """Wait for the server to close the connection (returns True), reading whatever comes first."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def start_listener(base_rows: None) -> Iterator[Callable[..., Running]]:
    """Start a listener with config overrides; stopped (gracefully) at teardown."""
    started: list[server.ListenerThread] = []

    def start(**overrides: Any) -> Running:
        overrides = {"host": "127.0.0.1", "port": 0, "hostname": "relay.test", "access_refresh": 0.2, **overrides}
        thread = server.ListenerThread(config.config_from_settings(**overrides)).start()
        started.append(thread)
        return Running(thread)

    yield start
    for thread in started:
        thread.stop()


@pytest.fixture
def smtpd(start_listener: Callable[..., Running]) -> Running:
    return start_listener()


def wait_for(predicate: Callable[[], Any], timeout: float = 10) -> Any:
    """Poll a database condition written by another thread (the listener's close lines)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def log_texts(**filters: Any) -> list[str]:
    return list(MailLogLine.objects.filter(**filters).order_by("id").values_list("text", flat=True))
