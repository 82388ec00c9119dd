"""esaroutes.eventloop: the listener's and the runner's loop is uvloop unless ESAROUTES_EVENT_LOOP says asyncio."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from delivery.outbound import runner
from esaroutes import eventloop
from tests.esaroutes.test_settings import _manage


@pytest.mark.parametrize(("name", "kind"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_the_setting_chooses_the_loop(settings: Any, name: str, kind: type) -> None:
    settings.ESAROUTES_EVENT_LOOP = name
    loop = eventloop.new_loop()
    try:
        assert isinstance(loop, kind)
        assert name == "uvloop" or not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()

    async def which() -> type:
        return type(asyncio.get_running_loop())

    assert issubclass(eventloop.run(which()), kind)


def test_the_runner_runs_on_the_configured_loop(settings: Any) -> None:
    settings.ESAROUTES_EVENT_LOOP = "uvloop"
    the_runner = runner.Runner(idle=1.0)
    try:
        assert isinstance(the_runner._loop, uvloop.Loop)
    finally:
        the_runner.close()


def test_an_unknown_loop_stops_start_up_naming_the_variable() -> None:
    result = _manage("check", ESAROUTES_EVENT_LOOP="trio")
    assert result.returncode != 0
    assert "ESAROUTES_EVENT_LOOP: 'trio' is neither 'uvloop' nor 'asyncio'" in result.stderr
