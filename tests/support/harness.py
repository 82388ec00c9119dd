"""Real processes for the fault tests: a private PostgreSQL and Redis, the relay's own processes, recording sinks
and SMTP injectors. Nothing here touches the shared services on 5432/6379: every service gets a free loopback
port and a directory of its own, so a test may kill, stop or flush it at will.

    with Stack.create(tmp, backend="postgres") as stack:     # private PostgreSQL + Redis (or "embedded")
        sinks = Sinks(2)                                    # loopback SMTP hosts counting (Message-ID, rcpt)
        stack.route("dest.test", sinks.route_text())
        stack.start_smtpd(); stack.start_worker(); stack.start_beat()
        result = inject(stack.smtp_port, range(400))        # smtplib from a few threads through the listener
        assert sinks.wait_for(result.accepted_keys(), 60)

Every process runs in a session of its own (``start_new_session``) and is killed with its whole process group
when the stack closes, whatever happened in the test.

Several machines on this one (tests/faults/test_scaleout.py): :class:`Network` makes network namespaces joined to
the root namespace by veth pairs with IPv6 ULA addresses; ``Stack.create(..., listen=network.root_addresses)``
puts the private PostgreSQL and Redis on the root ends as well as on loopback, and ``stack.start_worker(host=h)``
runs a process inside namespace ``h`` with that machine's own data directory, journal and mail log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
LOOPBACK = "127.0.0.1"
SECRET = "faults-" + "x7Kq2mZp9Lw4Rt8Yv3Nb6Hc1Jd5Fg0Se" * 2
DOMAIN = "dest.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def url_host(address: str) -> str:
    """An address as it goes in a URL or a route: IPv6 in brackets."""
    return f"[{address}]" if ":" in address else address


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """For state with no event to wait on (a row count in another process's database)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --- processes ------------------------------------------------------------------------------------------------


class Proc:
    """A child process in its own session; its output goes to a log file and is watched for patterns."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.log_path.open("ab") as log:
            for raw in self.popen.stdout:
                log.write(raw)
                log.flush()
                with self._cond:
                    self._lines.append(raw.decode(errors="replace"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """The first output line from line `start` on that matches; fails if the process exits first."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in self._lines[start:]:
                m = regex.search(line)
                if m:
                    found.append(m)
                    return True
            return self.popen.poll() is not None and not self._reader.is_alive()

        with self._cond:
            self._cond.wait_for(seen, timeout)
        if not found:
            raise AssertionError(f"{self.name}: no line matching {pattern!r} in {timeout} s:\n{self.tail()}")
        return found[0]

    @property
    def line_count(self) -> int:
        with self._cond:
            return len(self._lines)

    def tail(self, n: int = 40) -> str:
        with self._cond:
            return "".join(self._lines[-n:])

    def children(self) -> list[int]:
        """Direct child processes (a Celery worker's pool processes)."""
        found: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):  # a child belongs to the thread that forked it
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
        return found

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (the process and every child it forked)."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._reader.join(timeout=5)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Ask the group to stop; SIGKILL what is left after `timeout`. Returns the exit status."""
        self.signal_group(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)
        self.kill()  # stragglers of the group (pool processes), or the process itself after the timeout
        return self.popen.returncode


# --- private services -----------------------------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of our own (fsync on), on a free loopback port, socket and data in `base`."""

    def __init__(self, base: Path, port: int | None = None, listen: Iterable[str] = ()) -> None:
        self.base = base
        self.port = port or free_port()
        self.data = base / "data"
        self.listen = list(listen)  # addresses besides loopback (the root ends of test namespaces' veths)
        bindir = pg_bin()
        assert bindir is not None
        self.bin = bindir

    @property
    def url(self) -> str:
        return self.url_at(LOOPBACK)

    def url_at(self, address: str) -> str:
        return f"postgres://postgres@{url_host(address)}:{self.port}/esaroutes"

    def allow(self, network: str) -> None:
        """Trust clients from `network` too (initdb's pg_hba.conf trusts loopback only)."""
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {network} trust\n")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_as_postgres(list(argv)), capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    def start(self) -> None:
        addresses = ",".join([LOOPBACK, *self.listen])
        options = f"-c listen_addresses={addresses} -p {self.port} -k {self.base} -c fsync=on -c max_connections=200"
        done = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "postgres.log"), "-w", "-t", "60",
            "-o", options, "start", check=False,
        )  # fmt: skip
        if done.returncode != 0:
            log = (self.base / "postgres.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash (recovery at the next start); `fast` ends every session and checkpoints."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self) -> None:
        self._run(str(self.bin / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", "esaroutes")


class PrivateRedis:
    """A redis-server of our own: no persistence, so SHUTDOWN NOSAVE loses every queued task."""

    def __init__(self, base: Path, log_dir: Path, listen: Iterable[str] = ()) -> None:
        self.base = base
        self.log_dir = log_dir
        self.listen = list(listen)
        self.port = free_port()
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return self.url_at(LOOPBACK)

    def url_at(self, address: str) -> str:
        return f"redis://{url_host(address)}:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", LOOPBACK, *self.listen, "--protected-mode", "no",
            "--save", "", "--appendonly", "no",
            "--dir", str(self.base), "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self.proc = Proc(f"redis-{self.starts}", argv, dict(os.environ), self.log_dir)
        self.proc.wait_for(r"Ready to accept connections", 30)

    def command(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-h", LOOPBACK, "-p", str(self.port), *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip()

    def shutdown_nosave(self) -> None:
        """SHUTDOWN NOSAVE: the server exits and everything it held (queued tasks, counters) is gone."""
        self.command("SHUTDOWN", "NOSAVE")
        if self.proc is not None:
            self.proc.stop(timeout=10)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()


# --- recording sinks ------------------------------------------------------------------------------------------

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


class _SinkHandler:
    def __init__(self, sinks: Sinks, index: int) -> None:
        self.sinks = sinks
        self.index = index

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.sinks.delay:
            await asyncio.sleep(self.sinks.delay)  # slow, but never inside the window after the final dot
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        m = _MESSAGE_ID.search(bytes(envelope.original_content))
        message_id = m.group(1).decode() if m else ""
        peer = str(session.peer[0]) if session.peer else ""
        self.sinks._took(self.index, [(message_id, r) for r in envelope.rcpt_tos], peer)
        return "250 2.0.0 Ok: taken"


class _SinkSMTP(SMTP):
    """Counts the connections it gets and has open, per client address (which machine opened it)."""

    _peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        handler: _SinkHandler = self.event_handler
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        handler.sinks._connected(handler.index, self._peer, +1)

    def connection_lost(self, exc: Exception | None) -> None:
        handler: _SinkHandler = self.event_handler
        handler.sinks._connected(handler.index, self._peer, -1)
        super().connection_lost(exc)


class Sinks:
    """`count` well-behaved SMTP hosts on 127.0.0.20, .21, ... (or on `hosts`; one event loop thread) that count
    every (Message-ID, recipient) they answered 250 for, so a test can tell delivered from duplicated."""

    def __init__(
        self, count: int = 2, *, delay: float = 0.0, first: int = 20, hosts: Iterable[str] | None = None
    ) -> None:
        self.delay = delay
        self.taken: Counter[tuple[str, str]] = Counter()
        self.per_sink: Counter[int] = Counter()
        self.events: list[tuple[float, tuple[str, str], int]] = []  # (monotonic time, key, sink): for diagnosis
        self.peers: list[str] = []  # the client address of each of `events` (which machine delivered it)
        self.connections: Counter[tuple[int, str]] = Counter()  # (sink, client address) -> connections
        self.open: Counter[str] = Counter()  # client address -> connections open now
        self.peak_open = 0  # the most connections open at once, over every sink and client (destination limits)
        addresses = list(hosts) if hosts is not None else [f"127.0.0.{first + i}" for i in range(count)]
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-sinks", daemon=True)
        self._thread.start()
        self.addresses: list[tuple[str, int]] = []
        self._servers: list[asyncio.AbstractServer] = []
        for i, host in enumerate(addresses):
            handler = _SinkHandler(self, i)

            def protocol(handler: _SinkHandler = handler) -> SMTP:
                return _SinkSMTP(handler, hostname="sink.test", decode_data=False, loop=self._loop)

            server = asyncio.run_coroutine_threadsafe(self._loop.create_server(protocol, host, 0), self._loop).result(
                10
            )
            self._servers.append(server)
            self.addresses.append((host, int(server.sockets[0].getsockname()[1])))

    def route_text(self, priority: int = 0) -> str:
        return ", ".join(f"{url_host(h)}:{p}/pri={priority}" for h, p in self.addresses)

    def _took(self, index: int, keys: list[tuple[str, str]], peer: str = "") -> None:
        with self._cond:
            self.taken.update(keys)
            now = time.monotonic()
            self.events += [(now, k, index) for k in keys]
            self.peers += [peer] * len(keys)
            self.per_sink[index] += len(keys)
            self._cond.notify_all()

    def _connected(self, index: int, peer: str, change: int) -> None:
        with self._cond:
            self.connections[(index, peer)] += max(change, 0)
            self.open[peer] += change
            self.peak_open = max(self.peak_open, sum(self.open.values()))

    @property
    def total(self) -> int:
        with self._cond:
            return sum(self.taken.values())

    def wait_for(self, keys: Iterable[tuple[str, str]], timeout: float) -> bool:
        """True once every key has been taken at least once."""
        wanted = set(keys)
        with self._cond:
            return self._cond.wait_for(lambda: wanted <= self.taken.keys(), timeout)

    def wait_total(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: sum(self.taken.values()) >= n, timeout)

    def tally(self, accepted: Iterable[tuple[str, str]]) -> Tally:
        wanted = set(accepted)
        with self._cond:
            delivered = sum(1 for k in wanted if self.taken[k] > 0)
            duplicates = sum(c - 1 for c in self.taken.values() if c > 1)
            unexpected = sum(1 for k in self.taken if k not in wanted)
        return Tally(len(wanted), delivered, len(wanted) - delivered, duplicates, unexpected)

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class Refuser:
    """A destination host that is not taking mail: it answers every connection `421` at once and closes it,
    counting the connections per client address (which machine tried it)."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self.connections: Counter[str] = Counter()
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.address = (host, int(self._sock.getsockname()[1]))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-refuser", daemon=True)
        self._thread.start()

    def route_text(self, priority: int = 0) -> str:
        return f"{url_host(self.address[0])}:{self.address[1]}/pri={priority}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:  # the 0.2 s poll (TimeoutError), or a client that left before we took it
                continue
            with self._lock:
                self.connections[str(peer[0])] += 1
            with contextlib.suppress(OSError), conn:
                conn.sendall(b"421 4.3.2 refuser.test not taking mail\r\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@dataclass(frozen=True)
class Tally:
    accepted: int  # messages the listener answered 250 for
    delivered: int  # of those, taken by a sink at least once
    lost: int
    duplicates: int  # extra copies taken (a message taken 3 times counts 2)
    unexpected: int  # taken but never answered 250 (stored although the client was told 451)

    def line(self, sent: int) -> str:
        extra = f" (accepted {self.accepted}, stored despite 451: {self.unexpected})" if sent != self.accepted else ""
        return f"sent {sent} delivered {self.delivered} lost {self.lost} duplicates {self.duplicates}{extra}"


# --- injecting mail -------------------------------------------------------------------------------------------


def message_key(n: int, domain: str = DOMAIN) -> tuple[str, str]:
    return (f"<fault-{n}@faults.test>", f"u{n}@{domain}")


def message_bytes(n: int, domain: str = DOMAIN) -> bytes:
    message_id, rcpt = message_key(n, domain)
    return (
        f"From: <sender@origin.test>\r\nTo: <{rcpt}>\r\nSubject: fault test {n}\r\nMessage-ID: {message_id}\r\n\r\n"
        + f"Message {n}.\r\n" * 8
    ).encode()


@dataclass
class Injection:
    """What the clients were told, per message number."""

    accepted: set[int] = field(default_factory=set)
    refused: dict[int, str] = field(default_factory=dict)  # 4xx/5xx replies, connection errors
    domain: str = DOMAIN
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def accepted_keys(self) -> list[tuple[str, str]]:
        return [message_key(n, self.domain) for n in sorted(self.accepted)]

    def refused_keys(self) -> list[tuple[str, str]]:
        return [message_key(n, self.domain) for n in sorted(self.refused)]

    def wait_answered(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.accepted) + len(self.refused) >= n, timeout)


class Injector:
    """Clients (threads, smtplib) sending numbered messages through the listener, `per_session` per connection.

    A message refused with 4xx or lost with its connection is recorded as refused and not sent again: a real
    client would retry it later, which the counts here leave out on purpose (refused ones must not appear).
    """

    def __init__(
        self,
        port: int,
        numbers: Iterable[int],
        *,
        threads: int = 4,
        per_session: int = 25,
        host: str = LOOPBACK,
        domain: str = DOMAIN,
    ) -> None:
        self.port = port
        self.host = host
        self.domain = domain
        self.result = Injection(domain=domain)
        self._todo = list(numbers)
        self._lock = threading.Lock()
        self.per_session = per_session
        self.sent = len(self._todo)
        self._threads = [threading.Thread(target=self._client, name=f"inject-{i}") for i in range(threads)]

    def start(self) -> Injector:
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float = 300) -> Injection:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "injection did not finish"
        return self.result

    def _next(self) -> int | None:
        with self._lock:
            return self._todo.pop(0) if self._todo else None

    def _record(self, n: int, reply: str | None) -> None:
        with self.result._cond:
            if reply is None:
                self.result.accepted.add(n)
            else:
                self.result.refused[n] = reply
            self.result._cond.notify_all()

    def _client(self) -> None:
        client: smtplib.SMTP | None = None
        in_session = 0
        while (n := self._next()) is not None:
            try:
                if client is None or in_session >= self.per_session:
                    if client is not None:
                        with contextlib.suppress(smtplib.SMTPException, OSError):
                            client.quit()
                    client, in_session = smtplib.SMTP(self.host, self.port, timeout=30), 0
                    client.ehlo("injector.test")
                _, rcpt = message_key(n, self.domain)
                client.sendmail("sender@origin.test", [rcpt], message_bytes(n, self.domain))
                in_session += 1
                self._record(n, None)
            except smtplib.SMTPResponseException as exc:
                self._record(n, f"{exc.smtp_code} {exc.smtp_error!r}")
                if exc.smtp_code == 421:
                    client = None
            except (smtplib.SMTPException, OSError) as exc:
                self._record(n, f"{type(exc).__name__}: {exc}")
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
        if client is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()


def inject(port: int, numbers: Iterable[int], **kw: Any) -> Injection:
    return Injector(port, numbers, **kw).start().join()


# --- machines: network namespaces -----------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_problem() -> str | None:
    """Why network namespaces cannot be made here (the reason a test skips with), or None."""
    if os.geteuid() != 0:
        return "making network namespaces needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    name = f"esrprobe{secrets.token_hex(3)}"
    done = _ip("netns", "add", name, check=False)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


@dataclass
class NetHost:
    """One machine: network namespace `netns`, whose end of the veth pair has `ip`; `root_ip` is the root
    namespace's end, where PostgreSQL and Redis answer this machine. Ports are the namespace's own."""

    name: str
    netns: str
    ip: str
    root_ip: str
    smtp_port: int = 2525
    killed_at: float | None = None  # time.monotonic() of kill_all's first SIGKILL

    @property
    def hostname(self) -> str:
        return f"relay-{self.name}.faults.test"  # ESAROUTES_HOSTNAME: the start of its lease tokens

    def wrap(self, argv: list[str]) -> list[str]:
        """`ip netns exec` sets the namespace and execs argv: the process keeps the pid we started."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def pids(self) -> list[int]:
        done = _ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in done.stdout.split()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process in the namespace, the machine's power cord; returns their pids."""
        killed: set[int] = set()
        for _ in range(20):  # again while any is left (a fork racing the first round)
            pids = [p for p in self.pids() if p not in killed or _alive(p)]
            if not pids:
                break
            if self.killed_at is None:
                self.killed_at = time.monotonic()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.update(pids)
            time.sleep(0.05)
        return sorted(killed)


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a killed child of ours stays in the process table until we reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _canonical(address: str) -> str:
    """The form the kernel reports peers in (no leading zeros), so addresses compare as strings."""
    return str(ipaddress.ip_address(address))


class Network:
    """`count` machines on this one: namespaces joined to the root namespace by a veth pair each.

    Addresses are IPv6 ULA (RFC 4193, a random fdXX:XXXX:XXXX::/48 per run), far from the private IPv4 ranges:
    machine i has the /64 <prefix>:i+1::/64, ::1 on the root end and ::2 in its namespace (nodad, so both are
    usable at once), and a default route via the root end. Service addresses (the sinks) are <prefix>:ff::N on
    the first root end: the root namespace takes a packet for any of its own addresses whatever interface it
    comes in on, so every machine reaches them without forwarding. (127.x on veths would need route_localnet on
    both ends and still collide with the root namespace's local route for 127.0.0.0/8.) Every name carries a
    random tag, so runs never meet; close() deletes the namespaces, which deletes their veth pairs.
    """

    def __init__(self, count: int = 2) -> None:
        tag = secrets.token_hex(3)
        g = secrets.token_hex(5)
        self.prefix = f"fd{g[:2]}:{g[2:6]}:{g[6:]}"  # 40 random bits: the ULA global ID
        self.hosts: list[NetHost] = []
        self._root_links: list[str] = []
        self._services = 0
        try:
            for i in range(count):
                name = "abcdefgh"[i]
                netns, root_link, ns_link = f"esr{tag}{name}", f"v{tag}{name}r", f"v{tag}{name}n"
                root_ip, ip = _canonical(f"{self.prefix}:{i + 1}::1"), _canonical(f"{self.prefix}:{i + 1}::2")
                _ip("netns", "add", netns)
                self.hosts.append(NetHost(name, netns, ip, root_ip))
                _ip("link", "add", root_link, "type", "veth", "peer", "name", ns_link, "netns", netns)
                self._root_links.append(root_link)
                _ip("addr", "add", f"{root_ip}/64", "dev", root_link, "nodad")
                _ip("link", "set", root_link, "up")
                _ip("-n", netns, "link", "set", "lo", "up")
                _ip("-n", netns, "addr", "add", f"{ip}/64", "dev", ns_link, "nodad")
                _ip("-n", netns, "link", "set", ns_link, "up")
                _ip("-n", netns, "-6", "route", "add", "default", "via", root_ip, "dev", ns_link)
        except BaseException:
            self.close()
            raise

    @property
    def cidr(self) -> str:
        return str(ipaddress.ip_network(f"{self.prefix}::/48"))

    @property
    def root_addresses(self) -> list[str]:
        return [h.root_ip for h in self.hosts]

    def service_address(self) -> str:
        """A new address in the root namespace that every machine reaches (for a sink)."""
        self._services += 1
        address = _canonical(f"{self.prefix}:ff::{self._services:x}")
        _ip("addr", "add", f"{address}/128", "dev", self._root_links[0], "nodad")
        return address

    def close(self) -> None:
        for host in self.hosts:
            host.kill_all()
            _ip("netns", "del", host.netns, check=False)
        for link in self._root_links:  # gone with its peer's namespace; this is for a half-made pair
            _ip("link", "del", link, check=False)
        self.hosts.clear()
        self._root_links.clear()


# --- the relay ------------------------------------------------------------------------------------------------


TEMPLATES: dict[str, Path] = {}  # backend -> a migrated database to copy (one migrate per test session)
_template_lock = threading.Lock()


class Stack:
    """The relay's processes (listener, workers, beat) on a private database and broker in `base`."""

    def __init__(self, base: Path, backend: str) -> None:
        self.base = base
        self.backend = backend
        self.data_dir = base / "var"
        self.log_dir = base / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.smtp_port = free_port()
        self.procs: list[Proc] = []
        self.pg: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.extra_env: dict[str, str] = {}
        self._names: Counter[str] = Counter()

    # --- setting up ---

    @classmethod
    def create(cls, base: Path, backend: str, *, network: Network | None = None, **extra_env: str) -> Stack:
        """With `network`, PostgreSQL and Redis also listen on its root ends and trust its machines."""
        stack = cls(base, backend)
        stack.extra_env.update(extra_env)
        listen = network.root_addresses if network is not None else []
        try:
            if backend == "postgres":
                # The postgres user must reach it: not under /tmp/pytest-of-root (mode 0700).
                pg_dir = Path(tempfile.mkdtemp(prefix="faults-pg-"))
                shutil.chown(pg_dir, "postgres") if os.geteuid() == 0 else None
                stack.pg = PrivatePostgres(pg_dir, listen=listen)
                subprocess.run(
                    ["cp", "-a", str(_template("postgres", stack.env)), str(stack.pg.data)], check=True, timeout=60
                )
                if network is not None:
                    stack.pg.allow(network.cidr)
                stack.pg.start()
                stack.redis = PrivateRedis(base, stack.log_dir, listen=listen)
                stack.redis.start()
            else:
                shutil.copy(_template("embedded", stack.env), stack.data_dir / "esaroutes.sqlite3")
        except BaseException:
            stack.close()
            raise
        return stack

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ESAROUTES_", "DJANGO_", "CELERY_")) and k not in ("DATABASE_URL", "REDIS_URL")
        }
        env.update(
            PYTHONUNBUFFERED="1",
            SECRET_KEY=SECRET,
            ESAROUTES_DATA_DIR=str(self.data_dir),
            ESAROUTES_HOSTNAME="relay.faults.test",
            ESAROUTES_SMTP_LISTEN=f"{LOOPBACK}:{self.smtp_port}",
            ESAROUTES_SMTP_PROCESSES="1",
            ESAROUTES_LEASE_SECONDS="3",
            ESAROUTES_SWEEP_INTERVAL="1",
            ESAROUTES_VISIBILITY_TIMEOUT="30",
            ESAROUTES_DELIVERY_CONNECT_TIMEOUT="3",
            ESAROUTES_DELIVERY_COMMAND_TIMEOUT="5",
            ESAROUTES_DELIVERY_DATA_TIMEOUT="5",
            ESAROUTES_DELIVERY_TRANSACTION_TIMEOUT="30",
            ESAROUTES_DELIVERY_IDLE="2",
            ESAROUTES_HOST_DOWN_INITIAL="1",
            ESAROUTES_HOST_DOWN_MAX="5",
            ESAROUTES_ROUTE_REFRESH="0.5",
            ESAROUTES_LOG_LEVEL="INFO",
        )
        if self.pg is not None:
            env["DATABASE_URL"] = self.pg.url
        if self.redis is not None:
            env["REDIS_URL"] = self.redis.url
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [str(VENV_BIN / "python"), "manage.py", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def route(self, domain: str, hosts: str) -> None:
        self.manage("smtproutes", "new", domain, hosts)

    def default_destination(self, **limits: int | str) -> None:
        """Set the Default destination control's fields (``max_messages_per_connection=5``) before workers start."""
        code = (
            "from routes.models import DestinationControl as D; "
            f"D.objects.filter(destination=D.DEFAULT).update(**{limits!r})"
        )
        self.manage("shell", "-c", code)

    def relay_network(self, network: str) -> None:
        """Let clients in `network` relay (the defaults are loopback only)."""
        code = f"from routes.models import RelayNetwork as R; R.objects.create(network={network!r}, comment='faults')"
        self.manage("shell", "-c", code)

    # --- processes ---

    def host_data_dir(self, host: NetHost) -> Path:
        """A machine's own data directory: its journal, mail log and beat schedule are local to it."""
        path = self.base / f"host-{host.name}" / "var"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def host_env(self, host: NetHost) -> dict[str, str]:
        assert self.pg is not None and self.redis is not None, "machines share PostgreSQL and Redis"
        return {
            "DATABASE_URL": self.pg.url_at(host.root_ip),
            "REDIS_URL": self.redis.url_at(host.root_ip),
            "ESAROUTES_DATA_DIR": str(self.host_data_dir(host)),
            "ESAROUTES_HOSTNAME": host.hostname,
            "ESAROUTES_SMTP_LISTEN": f"{url_host(host.ip)}:{host.smtp_port}",
        }

    def _start(self, kind: str, argv: list[str], host: NetHost | None = None, **env: str) -> Proc:
        if host is not None:
            kind = f"{kind}-{host.name}"
            argv = host.wrap(argv)
            env = {**self.host_env(host), **env}
        self._names[kind] += 1
        proc = Proc(f"{kind}-{self._names[kind]}", argv, self.env(**env), self.log_dir)
        self.procs.append(proc)
        return proc

    READY = {"smtpd": r"SMTP listener on", "worker": r"\bready\.", "beat": r"beat: Starting"}

    def start_smtpd(self, host: NetHost | None = None, *, wait: bool = True) -> Proc:
        proc = self._start("smtpd", [str(VENV_BIN / "python"), "manage.py", "smtpd", "--grace", "2"], host)
        if wait:
            proc.wait_for(self.READY["smtpd"], 60)
        return proc

    def start_worker(self, *, wait: bool = True, concurrency: int = 2, host: NetHost | None = None) -> Proc:
        kind = f"worker-{host.name}" if host is not None else "worker"
        n = self._names[kind] + 1
        node = f"w{n}@{host.name if host is not None else 'faults'}"
        argv = [
            str(VENV_BIN / "celery"), "-A", "esaroutes", "worker",  # the configured pool: prefork on Redis
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", node,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        proc = self._start("worker", argv, host)
        if wait:
            proc.wait_for(self.READY["worker"], 60)
        return proc

    def start_beat(self, host: NetHost | None = None, *, wait: bool = True) -> Proc:
        data_dir = self.host_data_dir(host) if host is not None else self.data_dir
        argv = [
            str(VENV_BIN / "celery"), "-A", "esaroutes", "beat", "--loglevel", "INFO",
            "--schedule", str(data_dir / f"beat-schedule-{self._names['beat']}"),
        ]  # fmt: skip
        proc = self._start("beat", argv, host)
        if wait:
            proc.wait_for(self.READY["beat"], 60)
        return proc

    def wait_ready(self, procs: Iterable[Proc], timeout: float = 90) -> None:
        """Wait for processes started with wait=False (they start side by side: Django's start-up is slow)."""
        for proc in procs:
            proc.wait_for(self.READY[proc.name.split("-")[0]], timeout)

    # --- the database, read directly ---

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        if self.pg is not None:
            import psycopg

            with psycopg.connect(f"host={LOOPBACK} port={self.pg.port} user=postgres dbname=esaroutes") as conn:
                return list(conn.execute(query).fetchall())
        with contextlib.closing(sqlite3.connect(self.data_dir / "esaroutes.sqlite3", timeout=20)) as conn:
            return list(conn.execute(query).fetchall())

    def queued(self) -> int:
        return int(self.sql("SELECT count(*) FROM delivery_message WHERE state = 'queued'")[0][0])

    def wait_queue_empty(self, timeout: float) -> bool:
        def empty() -> bool:
            try:
                return self.queued() == 0
            except Exception:
                return False

        return wait_until(empty, timeout, interval=0.2)

    # --- tearing down ---

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()
        if self.redis is not None:
            self.redis.close()
        if self.pg is not None:
            self.pg.stop("immediate")
            shutil.rmtree(self.pg.base, ignore_errors=True)


def _template(backend: str, env_for: Callable[..., dict[str, str]]) -> Path:
    """A migrated, empty database for `backend`, made once per test session and copied by each test."""
    with _template_lock:
        if backend in TEMPLATES:
            return TEMPLATES[backend]
        base = Path(tempfile.mkdtemp(prefix=f"faults-template-{backend}-"))
        _cleanup.append(base)
        env = env_for()
        if backend == "postgres":
            os.chown(base, *_postgres_ids()) if os.geteuid() == 0 else None
            pg = PrivatePostgres(base)
            pg.init()
            pg.start()
            try:
                pg.create_database()
                env["DATABASE_URL"] = pg.url
                env.pop("REDIS_URL", None)
                env["ESAROUTES_DATA_DIR"] = str(base / "var")
                _migrate(env)
            finally:
                pg.stop("fast")
            TEMPLATES[backend] = pg.data
        else:
            env.pop("DATABASE_URL", None)
            env.pop("REDIS_URL", None)
            env["ESAROUTES_DATA_DIR"] = str(base / "var")
            _migrate(env)
            TEMPLATES[backend] = base / "var" / "esaroutes.sqlite3"
        return TEMPLATES[backend]


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _migrate(env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed: {done.stdout}{done.stderr}")


_cleanup: list[Path] = []


def remove_templates() -> None:
    for path in _cleanup:
        shutil.rmtree(path, ignore_errors=True)
    _cleanup.clear()
    TEMPLATES.clear()


@contextlib.contextmanager
def sinks(count: int = 2, **kw: Any) -> Iterator[Sinks]:
    s = Sinks(count, **kw)
    try:
        yield s
    finally:
        s.close()
