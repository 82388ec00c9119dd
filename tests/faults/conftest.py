"""Fault tests: the relay's real processes on private services (see tests/support/harness.py).

Which backends run: `bin/test` runs the suite twice, so by default the PostgreSQL + Redis variants run in its
PostgreSQL pass (the pytest process's DATABASE_URL is PostgreSQL) and the embedded variants in its embedded pass;
each variant still runs on services of its own, never the ones the pytest process points at.
`ESAROUTES_FAULT_BACKENDS=postgres,embedded` runs both in any pass. `ESAROUTES_FAULT_MESSAGES` sets the size of
the restart test's queue.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.support import harness

SUMMARY: list[str] = []


def backend_selected(backend: str) -> bool:
    chosen = os.environ.get("ESAROUTES_FAULT_BACKENDS", "").strip()
    if chosen:
        return backend in {b.strip() for b in chosen.split(",")}
    on_postgres = bool(settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql")
    return (backend == "postgres") == on_postgres


def _skip_unless(backend: str) -> None:
    if not backend_selected(backend):
        pytest.skip(f"{backend} fault variant runs in the other bin/test pass (ESAROUTES_FAULT_BACKENDS runs both)")
    if backend == "postgres" and (harness.pg_bin() is None or shutil.which("redis-server") is None):
        pytest.skip("PostgreSQL server binaries or redis-server not installed")


@pytest.fixture(params=["postgres", "embedded"])
def backend(request: Any) -> str:
    _skip_unless(request.param)
    return str(request.param)


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    """Make a Stack (private services, relay processes); every process is killed at the end, pass or fail."""
    made: list[harness.Stack] = []

    def make(backend: str, network: harness.Network | None = None, **env: str) -> harness.Stack:
        stack = harness.Stack.create(tmp_path / f"stack{len(made)}", backend, network=network, **env)
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.close()


@pytest.fixture
def machines() -> Iterator[Any]:
    """Make a harness.Network of `count` machines (network namespaces); skips where none can be made. Its
    namespaces, veth pairs and every process in them go at the end, pass or fail."""
    made: list[harness.Network] = []

    def make(count: int = 2) -> harness.Network:
        problem = harness.netns_problem()
        if problem:
            pytest.skip(problem)
        network = harness.Network(count)
        made.append(network)
        return network

    try:
        yield make
    finally:
        for network in made:
            network.close()


@pytest.fixture
def fault_sinks() -> Iterator[Any]:
    made: list[harness.Sinks] = []

    def make(count: int = 2, **kw: Any) -> harness.Sinks:
        s = harness.Sinks(count, first=20 + 10 * len(made), **kw)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


def report(name: str, line: str) -> None:
    """A one-line result, repeated in the terminal summary (the README quotes these)."""
    SUMMARY.append(f"{name}: {line}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.write_sep("=", "fault test results")
        for line in SUMMARY:
            terminalreporter.write_line(line)


def pytest_sessionfinish() -> None:
    harness.remove_templates()
