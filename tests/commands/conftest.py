from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command


class Result:
    def __init__(self, out: str, err: str) -> None:
        self.out, self.err = out, err


@pytest.fixture
def run() -> Any:
    """run("hoststatus", "dest.test") -> Result with the command's stdout and stderr."""

    def call(*args: Any) -> Result:
        out, err = io.StringIO(), io.StringIO()
        call_command(*args, stdout=out, stderr=err)
        return Result(out.getvalue(), err.getvalue())

    return call


@pytest.fixture
def terminal(monkeypatch: Any) -> Any:
    """terminal("y"): stdin is a terminal and the next confirmation is answered with the given text."""
    asked: list[str] = []

    def answer(text: str) -> list[str]:
        monkeypatch.setattr("sys.stdin.isatty", lambda: True)
        monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or text)
        return asked

    return answer


@pytest.fixture
def no_terminal(monkeypatch: Any) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)


@pytest.fixture(autouse=True)
def _fresh_route_table() -> Any:
    from routes import snapshot

    snapshot.invalidate()
    yield
    snapshot.invalidate()
