"""The private internals of aiosmtpd and asyncio that `delivery.listener.session` relies on, pinned.

`Session._light_init` re-implements aiosmtpd 1.4's private `SMTP.__init__` (without its per-connection
introspection), guarded only by a version prefix; `Session._pending_input` reads `StreamReader._buffer` to hold
back replies to pipelined commands. An upgrade that changes either must fail here, not slow down or misbehave
quietly in production.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import weakref
from types import SimpleNamespace
from typing import Any

import aiosmtpd
import pytest

from delivery.listener import session as session_module
from delivery.listener.config import Config
from delivery.listener.handler import Handler
from delivery.listener.session import Session


def stand_in_listener() -> SimpleNamespace:
    """What a Session reads of its listener when it is built: config, handler, TLS context, the method tables."""
    listener = SimpleNamespace(
        config=Config(hostname="mx.test", max_message_size=12345, command_timeout=42.0, auth_without_tls=True),
        tls=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        smtp_names=None,
    )
    listener.handler = Handler(listener)
    return listener


def comparable(value: Any, owner: object) -> Any:
    """A value of a session's instance state, in a form two sessions' states can be compared in."""
    if inspect.ismethod(value):
        return ("method of the session" if value.__self__ is owner else "method", value.__func__)
    if isinstance(value, dict):
        return {k: comparable(v, owner) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(comparable(v, owner) for v in value)
    if isinstance(value, asyncio.StreamReader):
        return ("StreamReader", value._limit, value._loop)  # type: ignore[attr-defined]
    if isinstance(value, weakref.ref):
        return ("weakref to", type(value()))
    if isinstance(value, asyncio.Future):
        return ("Future", value.done())
    return value


def test_light_init_leaves_the_state_the_real_constructor_leaves(monkeypatch):
    """Every attribute the real `SMTP.__init__` sets, with the values that matter, and no other."""
    monkeypatch.setattr(session_module, "_FAST_INIT", True)  # build the light one even on another aiosmtpd

    async def build() -> tuple[Session, Session]:
        listener = stand_in_listener()
        real = Session(listener)  # the first session runs the real constructor
        assert listener.smtp_names is not None
        light = Session(listener)  # later ones the light one
        return real, light

    real, light = asyncio.run(build())
    real_state = {k: comparable(v, real) for k, v in vars(real).items()}
    light_state = {k: comparable(v, light) for k, v in vars(light).items()}
    assert sorted(light_state) == sorted(real_state), "attributes differ: compare _light_init with SMTP.__init__"
    differing = {k: (real_state[k], light_state[k]) for k in real_state if real_state[k] != light_state[k]}
    assert differing == {}, "values differ: compare _light_init with SMTP.__init__"
    # the tables the real constructor finds by introspection, rebuilt from their names
    assert sorted(light._auth_methods) == ["LOGIN", "PLAIN"]
    assert light._auth_methods["PLAIN"].method.__self__ is real.event_handler  # type: ignore[attr-defined]
    assert "DATA" in light._handle_hooks and "RCPT" in light._smtp_methods


def test_the_light_init_is_used_on_the_aiosmtpd_it_was_checked_against():
    """The guard: widen `_FAST_INIT` for a new aiosmtpd only once the test above passes on it."""
    assert aiosmtpd.__version__.startswith("1.4."), f"aiosmtpd {aiosmtpd.__version__}: check Session._light_init"
    assert session_module._FAST_INIT


def test_stream_reader_buffer_holds_what_was_received_and_not_yet_read():
    """`StreamReader._buffer`: the bytes received and not read yet (a bytearray); a line read leaves it."""

    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
        assert isinstance(reader._buffer, bytearray)  # type: ignore[attr-defined]
        assert bytes(reader._buffer) == b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"  # type: ignore[attr-defined]
        assert await reader.readline() == b"MAIL FROM:<a@b.test>\r\n"
        assert bytes(reader._buffer) == b"RCPT TO:<c@d.test>\r\n"  # type: ignore[attr-defined]
        await reader.readline()
        assert bytes(reader._buffer) == b""  # type: ignore[attr-defined]

    asyncio.run(read())


@pytest.mark.parametrize(
    ("received", "pending"),
    [(b"", b""), (b"RCPT TO:<c@d.test>\r\n", b"RCPT TO:<c@d.test>\r\n"), (b"x" * 70000, b"\n")],
)
def test_a_session_sees_the_commands_already_waiting(received, pending):
    """What `Session.push` decides on: the pipelined input waiting in the session's reader (capped: a large
    buffer counts as "a command is waiting")."""

    async def check() -> None:
        session = Session(stand_in_listener())
        # what connection_made does through StreamReaderProtocol: hand the session its reader
        session._cb_client_connected(session._stream_reader, None)  # type: ignore[attr-defined,arg-type]
        session._reader.feed_data(received)
        assert session._pending_input() == pending

    asyncio.run(check())
