"""The event loop of the SMTP listener and of the delivery runner: uvloop (libuv) or the standard library's.

`ESAROUTES_EVENT_LOOP` chooses; uvloop is the default, as it spends less CPU per socket operation than the
standard loop, which both processes do for every SMTP command. Everything asyncio offers that the listener and
the runner use (streams, start_tls, timeouts, call_soon_threadsafe) behaves the same on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop
from django.conf import settings

T = TypeVar("T")


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the configured kind."""
    if settings.ESAROUTES_EVENT_LOOP == "uvloop":
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a loop of the configured kind."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)
