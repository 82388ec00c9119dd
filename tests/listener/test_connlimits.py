"""ESAROUTES_SMTP_MAX_CONNECTIONS / _PER_CLIENT are the installation's: counted over every listener process.

Against a real `manage.py smtpd` with two processes sharing the port (Redis on the PostgreSQL pass, the shared
table of the embedded default otherwise), clients on several loopback addresses; and the counters themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection

from delivery.listener import connlimits
from delivery.listener.connlimits import Limits, Verdict
from tests.listener import test_throughput

ROOT = Path(__file__).resolve().parents[2]
REFUSED = b"421 4.7.0 Too many connections, try again later"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing and /proc")
needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="REDIS_URL is not set (embedded default pass)")


# --- the decision ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "mine", "verdict"),
    [
        (0, 0, Verdict.ADMIT),
        (9, 4, Verdict.ADMIT),  # the last slot of both
        (10, 0, Verdict.OVER_TOTAL),
        (10, 5, Verdict.OVER_TOTAL),  # the total first
        (11, 0, Verdict.OVER_TOTAL),
        (9, 5, Verdict.OVER_CLIENT),
        (3, 7, Verdict.OVER_CLIENT),
    ],
)
def test_decide_refuses_over_the_total_first_then_over_the_clients_share(total, mine, verdict):
    assert connlimits.decide(total, mine, Limits(total=10, per_client=5)) is verdict


# --- a real `manage.py smtpd` with two processes ------------------------------------------------------------------


class Smtpd:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        self.pids = [proc.pid, *(int(p) for p in children)]
        self.opened: list[socket.socket] = []

    def connect(self, source: str) -> tuple[socket.socket, bytes]:
        """A connection from `source` (127.x) and the first line the listener sends."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=20, source_address=(source, 0))
        self.opened.append(sock)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return sock, data.partition(b"\r\n")[0]

    def greetings(self, source: str, n: int) -> tuple[list[socket.socket], list[bytes]]:
        """`n` connections from `source`, one after the other: the greeted ones (kept open), the refusals."""
        greeted, refused = [], []
        for _ in range(n):
            sock, line = self.connect(source)
            if line.startswith(b"220 "):
                greeted.append(sock)
            else:
                refused.append(line)
                assert sock.recv(4096) == b""  # and closed
        return greeted, refused

    def owner(self, sock: socket.socket) -> int | None:
        """The listener process holding the server side of `sock` (from /proc/net/tcp)."""
        return test_throughput.server_pid(self.port, sock.getsockname(), self.pids)


@pytest.fixture
def smtpd_processes(base_rows: None, tmp_path: Path) -> Iterator[Callable[..., Smtpd]]:
    started: list[Smtpd] = []
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        url = f"sqlite:///{db['NAME']}"

    def start(max_connections: int, per_client: int, processes: int = 2) -> Smtpd:
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "ESAROUTES_LOG_LEVEL": "WARNING",
            "ESAROUTES_DATA_DIR": str(tmp_path),
            "ESAROUTES_SMTP_MAX_CONNECTIONS": str(max_connections),
            "ESAROUTES_SMTP_MAX_CONNECTIONS_PER_CLIENT": str(per_client),
            "ESAROUTES_SMTP_COMMAND_TIMEOUT": "120",
        }
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "smtpd", "--listen", "127.0.0.1:0", "--processes", str(processes)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"({processes} processes)" in line, line
        running = Smtpd(proc, int(line.split(" port ")[1].split()[0]))
        assert len(running.pids) == processes
        started.append(running)
        return running

    yield start
    for running in started:
        for sock in running.opened:
            sock.close()
        running.proc.send_signal(signal.SIGTERM)
        running.proc.communicate(timeout=60)


@linux_only
def test_two_listener_processes_greet_exactly_the_limits_total_and_per_client(smtpd_processes):
    smtpd = smtpd_processes(max_connections=12, per_client=5)
    a, a_refused = smtpd.greetings("127.0.0.2", 8)
    b, b_refused = smtpd.greetings("127.0.0.3", 8)
    c, c_refused = smtpd.greetings("127.0.0.4", 5)
    d, d_refused = smtpd.greetings("127.0.0.5", 1)
    # 5 each from .2 and .3 (their share), 2 from .4 (the total of 12 is reached), nothing from .5.
    assert (len(a), len(b), len(c), len(d)) == (5, 5, 2, 0)
    assert a_refused + b_refused + c_refused + d_refused == [REFUSED] * 10
    # Both processes greeted some of the 12 (each counting alone would have greeted up to 12 and 5 per client).
    assert {smtpd.owner(sock) for sock in a + b + c} == set(smtpd.pids)

    for sock in a[:3]:
        sock.close()
    # The three slots come back to anyone (the release is asynchronous: wait for it), and no more than three.
    greeted = 0
    deadline = time.monotonic() + 30
    while greeted < 3 and time.monotonic() < deadline:
        more, _ = smtpd.greetings("127.0.0.5", 1)
        greeted += len(more)
    assert greeted == 3
    assert smtpd.greetings("127.0.0.6", 3) == ([], [REFUSED] * 3)
    assert smtpd.greetings("127.0.0.3", 1) == ([], [REFUSED])


@linux_only
def test_a_killed_listener_process_gives_its_slots_back(smtpd_processes):
    smtpd = smtpd_processes(max_connections=16, per_client=16)
    held, refused = smtpd.greetings("127.0.0.2", 17)
    assert (len(held), refused) == (16, [REFUSED])
    parent, child = smtpd.pids
    on_child = [sock for sock in held if smtpd.owner(sock) == child]
    assert on_child, "the kernel gave all 16 connections to one process"
    os.kill(child, signal.SIGKILL)
    # The child's connections are gone with it; their slots come back (at once on the embedded default, once the
    # child's heartbeat expires in Redis), the parent's stay taken.
    greeted: list[socket.socket] = []
    deadline = time.monotonic() + 30
    while len(greeted) < len(on_child) and time.monotonic() < deadline:
        try:
            more, _ = smtpd.greetings("127.0.0.3", 1)
        except ConnectionResetError:  # queued on the child's listening socket as it died
            more = []
        greeted += more
        if not more:
            time.sleep(0.1)
    assert len(greeted) == len(on_child)
    assert smtpd.greetings("127.0.0.4", 2) == ([], [REFUSED] * 2)
    survivor = next(sock for sock in held if smtpd.owner(sock) == parent)
    survivor.sendall(b"NOOP\r\n")
    assert survivor.recv(4096).startswith(b"250")


# --- the counters ------------------------------------------------------------------------------------------------


def _redis_counter(key: str, limits: Limits, **kw: Any) -> connlimits.RedisCounter:
    assert settings.REDIS_URL
    return connlimits.RedisCounter(limits, settings.REDIS_URL, key, **kw)


@pytest.fixture
def redis_key(request: pytest.FixtureRequest) -> Iterator[str]:
    key = f"esaroutes:test:{request.node.name}:{os.getpid()}"
    yield key
    client = redis.Redis.from_url(settings.REDIS_URL or "")
    for name in client.scan_iter(f"{key}:*"):
        client.delete(name)


@needs_redis
def test_processes_taking_at_once_in_redis_never_take_more_than_the_limits(redis_key):
    limits = Limits(total=20, per_client=8)

    async def run() -> tuple[list[bool], list[bool], dict[bytes, bytes]]:
        first, second = _redis_counter(redis_key, limits), _redis_counter(redis_key, limits)
        await first.start()
        await second.start()
        try:
            one = [first.take("10.0.0.1") for _ in range(10)] + [second.take("10.0.0.1") for _ in range(10)]
            many = [(first if i % 2 else second).take(f"10.0.1.{i}") for i in range(30)]
            taken_one = await asyncio.gather(*one)
            taken_many = await asyncio.gather(*many)
            totals = redis.Redis.from_url(settings.REDIS_URL or "").hgetall(f"{redis_key}:totals")
            assert first.total + second.total == 20
        finally:
            await first.stop()
            await second.stop()
        return taken_one, taken_many, totals

    taken_one, taken_many, totals = asyncio.run(run())
    assert sum(taken_one) == 8 and sum(taken_many) == 12
    assert int(totals[b"*"]) == 20 and int(totals[b"10.0.0.1"]) == 8
    assert redis.Redis.from_url(settings.REDIS_URL or "").keys(f"{redis_key}:*") == []  # both left


@needs_redis
def test_a_slot_let_go_of_passes_to_the_same_clients_next_connection_without_asking_redis(redis_key):
    limits = Limits(total=2, per_client=2)

    async def run() -> None:
        mine, other = _redis_counter(redis_key, limits), _redis_counter(redis_key, limits)
        await mine.start()
        await other.start()
        try:
            assert [await mine.take("10.0.0.1"), await mine.take("10.0.0.2")] == [True, True]
            sent = []
            conn = mine._conn
            assert conn is not None
            real_send = conn.send
            conn.send = lambda *args: sent.append(args) or real_send(*args)  # type: ignore[method-assign]
            mine.release("10.0.0.1")
            assert await mine.take("10.0.0.1") is True  # the slot just let go of, not yet given back in Redis
            assert sent == []
            assert await other.take("10.0.0.3") is False  # still both taken for everyone else
            mine.release("10.0.0.2")
            assert await mine.take("10.0.0.1") is False  # another client's slot is not taken over
            started = time.monotonic()
            while not await other.take("10.0.0.3"):  # given back to everyone within RELEASE_DELAY
                assert time.monotonic() - started < 10
                await asyncio.sleep(0.02)
            totals = redis.Redis.from_url(settings.REDIS_URL or "").hgetall(f"{redis_key}:totals")
            assert {k: int(v) for k, v in totals.items()} == {b"*": 2, b"10.0.0.1": 1, b"10.0.0.3": 1}
        finally:
            await mine.stop()
            await other.stop()

    asyncio.run(run())


@needs_redis
def test_a_process_that_stops_beating_in_redis_gives_its_slots_back_after_its_ttl(redis_key):
    limits = Limits(total=4, per_client=4)

    async def run() -> None:
        dead = _redis_counter(redis_key, limits, ttl=2.0, heartbeat=0.1)
        alive = _redis_counter(redis_key, limits, ttl=2.0, heartbeat=0.1)
        await dead.start()
        await alive.start()
        try:
            assert [await dead.take("10.0.0.1") for _ in range(3)] == [True] * 3
            assert await alive.take("10.0.0.2") is True
            assert await alive.take("10.0.0.2") is False
            assert dead._beating is not None
            dead._beating.cancel()  # as a killed process: no heartbeat, no goodbye
            # Not before its entry expired (its last heartbeat was at most a loaded loop's moment ago: a 2 s ttl
            # leaves room for that, where a fixed lower bound on the wait flaked under load)...
            assert await alive.take("10.0.0.2") is False
            started = time.monotonic()
            while not await alive.take("10.0.0.2"):  # ...and soon after
                assert time.monotonic() - started < 10
                await asyncio.sleep(0.05)
            assert [await alive.take("10.0.0.2") for _ in range(3)] == [True, True, False]
        finally:
            await alive.stop()
            await dead.stop()

    asyncio.run(run())


@needs_redis
def test_a_flushed_redis_gets_each_process_counts_back_from_its_heartbeat(redis_key):
    limits = Limits(total=3, per_client=3)

    async def run() -> None:
        counter = _redis_counter(redis_key, limits, heartbeat=0.1)
        await counter.start()
        try:
            assert [await counter.take("10.0.0.1") for _ in range(3)] == [True] * 3
            client = redis.Redis.from_url(settings.REDIS_URL or "")
            client.delete(*client.keys(f"{redis_key}:*"))
            await counter.sync()  # what the next heartbeat does
            assert await counter.take("10.0.0.2") is False
            counter.release("10.0.0.1")
            started = time.monotonic()
            while not await counter.take("10.0.0.2"):
                assert time.monotonic() - started < 10
                await asyncio.sleep(0.02)
        finally:
            await counter.stop()

    asyncio.run(run())


def test_redis_unreachable_each_process_counts_alone_with_a_warning(caplog):
    limits = Limits(total=3, per_client=2)

    async def run() -> list[bool]:
        counter = connlimits.RedisCounter(limits, "redis://127.0.0.1:9/0", "esaroutes:test:down")
        await counter.start()
        try:
            taken = [await counter.take(ip) for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3")]
            counter.release("10.0.0.1")
            taken.append(await counter.take("10.0.0.3"))
            assert not counter.shared
        finally:
            await counter.stop()
        return taken

    with caplog.at_level(logging.WARNING, logger="delivery.listener"):
        # 2 per client and 3 in all: this process's own connections.
        assert asyncio.run(run()) == [True, True, False, True, False, True]
    warnings = [r.getMessage() for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "each listener process counts its own connections" in warnings[0]


@linux_only
def test_the_shared_table_counts_over_forked_processes_and_clears_a_killed_ones_row():
    table = connlimits.SharedCounter(3, Limits(total=5, per_client=3))
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other listener process: takes 3 slots (2 for 10.0.0.1) and stays
        try:
            table.attach(1)
            taken = [asyncio.run(table.take(ip)) for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.2")]
            os.write(ready_w, b"ok" if all(taken) else b"no")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        os.close(ready_w)
        assert os.read(ready_r, 2) == b"ok"
        table.attach(0)
        assert asyncio.run(table.take("10.0.0.1")) is True  # 3 of 10.0.0.1 in the installation
        assert asyncio.run(table.take("10.0.0.1")) is False  # its share
        assert asyncio.run(table.take("10.0.0.3")) is True  # 5: the total
        assert asyncio.run(table.take("10.0.0.4")) is False
        table.release("10.0.0.3")
        assert asyncio.run(table.take("10.0.0.4")) is True
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # Its row still counts until someone would be refused; then it is found dead and cleared.
        assert [asyncio.run(table.take("10.0.0.1")) for _ in range(3)] == [True, True, False]
        assert asyncio.run(table.take("10.0.0.5")) is True
        assert asyncio.run(table.take("10.0.0.6")) is False  # 5 again, all this process's
        assert table.total == 5
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(ready_r)


def test_a_redis_that_accepts_and_never_answers_makes_each_process_count_alone():
    async def run() -> tuple[bool, bool, float]:
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        counter = connlimits.RedisCounter(Limits(total=1, per_client=1), f"redis://127.0.0.1:{port}/0", "t:silent")
        started = time.monotonic()
        try:
            await counter.start()
            first, second = await counter.take("10.0.0.1"), await counter.take("10.0.0.2")
        finally:
            await counter.stop()
            silent.close()
        return first, second, time.monotonic() - started

    first, second, took = asyncio.run(run())
    assert (first, second) == (True, False)
    assert took < connlimits.REDIS_TIMEOUT + 5  # not stuck behind the silent server
