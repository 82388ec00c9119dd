"""Bad input: the listener's fixtures (a real listener on a free loopback port) and helpers for raw sessions."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.listener.conftest import RawClient, base_rows, smtpd, start_listener

__all__ = ["base_rows", "smtpd", "start_listener"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/badinput/" in str(item.fspath):
            item.add_marker(pytest.mark.badinput)


class SourcedClient(RawClient):
    """A raw SMTP client connecting from another loopback address (127.0.0.2, ...): a different client to the
    listener's per-client limits and relay networks, still nothing but loopback."""

    def __init__(self, host: str, port: int, timeout: float, source: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        self.buf = b""


@pytest.fixture
def raw_from() -> Any:
    opened: list[SourcedClient] = []

    def connect(running: Any, source: str, timeout: float = 10) -> SourcedClient:
        client = SourcedClient(running.host, running.port, timeout, source)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()
