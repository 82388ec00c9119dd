"""Delivery tests: real SMTP peers on loopback, the real runner thread, a database other threads can see."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from delivery import worker
from delivery.models import MailLogLine, Recipient
from delivery.spool import intake


@pytest.fixture
def fresh_runner(settings: Any) -> Iterator[None]:
    """Short timeouts, no pooled connection surviving the test, no host-down state carried over."""
    settings.ESAROUTES_DELIVERY_CONNECT_TIMEOUT = 2.0
    settings.ESAROUTES_DELIVERY_COMMAND_TIMEOUT = 2.0
    settings.ESAROUTES_DELIVERY_DATA_TIMEOUT = 2.0
    settings.ESAROUTES_DELIVERY_TRANSACTION_TIMEOUT = 10.0
    settings.ESAROUTES_DELIVERY_EHLO = "relay.esaroutes.test"
    settings.ESAROUTES_ROUTE_REFRESH = 0.0
    worker.shutdown()  # the batches in flight recorded and released, then the runner stopped
    yield
    worker.shutdown()


def queue_message(
    *recipients: str, sender: str = "sender@origin.test", subject: str = "hello", body: str = "Hello.\r\n"
) -> int:
    """Accept a message the way the listener does (one committed transaction); returns its MID."""
    data = (
        f"From: <{sender}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\nMessage-ID: <m@origin.test>\r\n\r\n"
    )
    return intake.accept(
        intake.Incoming(
            icid=1,
            sender=sender,
            recipients=tuple((r, r.rpartition("@")[2].lower()) for r in recipients),
            data=(data + body).encode(),
            subject=subject,
            message_id="<m@origin.test>",
        )
    )


def hosts_text(*pairs: tuple[Any, int]) -> str:
    """Route destination text for peers: `127.0.0.1:port/pri=N, ...`."""
    return ", ".join(f"{p.host}:{p.port}/pri={pri}" for p, pri in pairs)


def log(mid: int | None = None) -> list[str]:
    qs = MailLogLine.objects.order_by("id")
    return [line.text for line in qs if mid is None or line.mid in (None, mid) or f"MID {mid} " in line.text]


def grep(pattern: str, lines: list[str]) -> list[str]:
    return [line for line in lines if re.search(pattern, line)]


def recipients(mid: int) -> list[tuple[int, str]]:
    return list(Recipient.objects.filter(message_id=mid).order_by("rid").values_list("rid", "state"))
