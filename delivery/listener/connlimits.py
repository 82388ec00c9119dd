"""The SMTP connection limits of the installation: `ESAROUTES_SMTP_MAX_CONNECTIONS` / `_PER_CLIENT` counted over
every listener process, not each process alone.

- `decide()` is the decision (pure): over the total, over the client's share, or admitted.
- A counter admits (`take`) and lets go of (`release`) one connection from a client address. Each keeps this
  process's admitted connections (`total`, `clients`): what it publishes, and what it decides on alone.
- `RedisCounter` (`REDIS_URL` set): every listener process on every machine counts in Redis. Each process has a
  hash of its own counts and an entry in a sorted set scored with its expiry (Redis's clock: the machines' clocks
  do not matter), renewed every second by a heartbeat; a hash of totals is their sum. One Lua script checks and
  takes a slot, so two processes cannot both take the last one; another gives slots back. Each script first
  removes the processes whose entry expired (killed ones: their slots come back within `TTL` seconds) and
  subtracts their counts from the totals. The heartbeat also rewrites the process's own counts from its truth,
  which heals a release lost in a Redis outage, a flushed Redis, or an entry that expired while the process was
  stalled; a process's Redis calls are serialised (one lock) so that rewrite sees exactly what Redis has seen.
  Redis unreachable: each process counts its own connections alone (one warning), and publishes them once Redis
  answers again.
- `SharedCounter` (the embedded default, several processes of one `manage.py smtpd`): a table in shared memory
  the first process makes before it forks, one row of slots per process, a slot holding the hash of a client
  address. A POSIX record lock on the table's file serialises check-and-take; each process holds a lock on a byte
  of its own for its whole life, so a killed process is known by that lock being free (the kernel drops a dead
  process's locks), and its row is cleared before anyone is refused.
- `LocalCounter`: one process alone (a single listener process, listeners in tests and benchmarks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.connection import parse_url

logger = logging.getLogger(__name__)

TTL = 5.0  # seconds a listener process's counts live in Redis without a heartbeat
HEARTBEAT = 1.0  # seconds between heartbeats (each also rewrites the process's counts)
REDIS_TIMEOUT = 2.0  # seconds a Redis call may take before the process counts alone
#: Releases wait this long before they go to Redis, together: a connection from the same client that comes
#: meanwhile takes the slot over without a call to Redis at all (a client sending one message per connection
#: reconnects within a millisecond). Meanwhile the slot counts as taken for the other processes: a connection
#: refused that could have been admitted, for this long at most, never one admitted over the limits.
RELEASE_DELAY = 0.005
TOTAL = "*"  # the field of the total in the count hashes (never a client address)


class Verdict(enum.Enum):
    ADMIT = "admit"
    OVER_TOTAL = "over the total"
    OVER_CLIENT = "over the client's share"


@dataclass(frozen=True, slots=True)
class Limits:
    total: int
    per_client: int


def decide(total: int, mine: int, limits: Limits) -> Verdict:
    """A new connection, when `total` connections are open in the installation and `mine` of them come from its
    client's address. The total first: a client under its share is still refused when everything is taken."""
    if total >= limits.total:
        return Verdict.OVER_TOTAL
    if mine >= limits.per_client:
        return Verdict.OVER_CLIENT
    return Verdict.ADMIT


class Counter:
    """This process's admitted connections; subclasses share them with the other processes."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        self.clients: dict[str, int] = {}

    async def start(self) -> None:
        """Called on the listener's event loop before it accepts."""

    async def stop(self) -> None:
        """Called on the listener's event loop once its sessions are gone."""

    async def take(self, ip: str) -> bool:
        """Admit one connection from `ip` (True) or not; an admitted one is `release`d exactly once."""
        return self._take_alone(ip)

    def release(self, ip: str) -> None:
        self._count(ip, -1)

    def _take_alone(self, ip: str) -> bool:
        if decide(self.total, self.clients.get(ip, 0), self.limits) is not Verdict.ADMIT:
            return False
        self._count(ip, 1)
        return True

    def _count(self, ip: str, n: int) -> None:
        self.total += n
        left = self.clients.get(ip, 0) + n
        if left > 0:
            self.clients[ip] = left
        else:
            self.clients.pop(ip, None)


class LocalCounter(Counter):
    """One listener process counting alone."""


def for_settings(limits: Limits, key: str, redis_url: str) -> Counter:
    """The counter of a listener process started on its own (not forked by `manage.py smtpd` with a table)."""
    return RedisCounter(limits, redis_url, key) if redis_url else LocalCounter(limits)


# --- Redis: every process on every machine ---------------------------------------------------------------------

# KEYS: the registry (sorted set: process id -> expiry), the totals hash. ARGV: the prefix of the processes'
# hashes, this process's id, the TTL, then what the script needs.
_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local registry, totals, prefix, me, ttl = KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3])
local mine = prefix .. me
local function add(key, field, n)
  if redis.call('HINCRBY', key, field, n) == 0 then redis.call('HDEL', key, field) end
end
local function forget(id)
  local counts = redis.call('HGETALL', prefix .. id)
  for i = 1, #counts, 2 do add(totals, counts[i], -tonumber(counts[i + 1])) end
  redis.call('DEL', prefix .. id)
  redis.call('ZREM', registry, id)
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
for _, id in ipairs(redis.call('ZRANGEBYSCORE', registry, '-inf', now)) do forget(id) end
"""
_REGISTER = "redis.call('ZADD', registry, now + ttl, me)\n"
# ARGV[4]: the client, ARGV[5], ARGV[6]: the limits. Returns 0 (taken), 1 (over the total), 2 (over the client's).
_TAKE = (
    _PRELUDE
    + _REGISTER
    + """
local ip = ARGV[4]
if tonumber(redis.call('HGET', totals, '*') or '0') >= tonumber(ARGV[5]) then return 1 end
if tonumber(redis.call('HGET', totals, ip) or '0') >= tonumber(ARGV[6]) then return 2 end
add(totals, '*', 1) add(totals, ip, 1) add(mine, '*', 1) add(mine, ip, 1)
return 0
"""
)
# ARGV[4...]: one client per connection let go of.
_RELEASE = (
    _PRELUDE
    + _REGISTER
    + """
for i = 4, #ARGV do
  add(totals, '*', -1) add(totals, ARGV[i], -1) add(mine, '*', -1) add(mine, ARGV[i], -1)
end
return 0
"""
)
# ARGV[4...]: field, count pairs: this process's counts as it knows them, replacing what Redis has. A hash whose
# process is not in the registry is not in the totals either (a flushed registry): dropped, not subtracted.
_SYNC = (
    _PRELUDE
    + """
if redis.call('ZSCORE', registry, me) then forget(me) else redis.call('DEL', mine) end
"""
    + _REGISTER
    + """
for i = 4, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  if n ~= 0 then
    redis.call('HSET', mine, ARGV[i], n)
    add(totals, ARGV[i], n)
  end
end
return 0
"""
)
_LEAVE = _PRELUDE + "forget(me)\nreturn 0\n"

_SCRIPTS = {"take": _TAKE, "release": _RELEASE, "sync": _SYNC, "leave": _LEAVE}


class ReplyError(Exception):
    """An error reply from Redis (`-ERR ...`, `-NOSCRIPT ...`)."""


_REDIS_ERRORS = (ReplyError, OSError, TimeoutError, redis.RedisError)
_INCOMPLETE = object()


def _encode(args: tuple[str | int | float | bytes, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _parse(buffer: bytearray) -> tuple[Any, int]:
    """One RESP2 reply (integer, status, error, bulk string) from the buffer's start, and its length; or
    `_INCOMPLETE`. The scripts here never answer anything else."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return _INCOMPLETE, 0
    kind, line = buffer[:1], bytes(buffer[1:end])
    if kind == b":":
        return int(line), end + 2
    if kind == b"+":
        return line.decode(), end + 2
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, end + 2
        if len(buffer) < end + 4 + size:
            return _INCOMPLETE, 0
        return bytes(buffer[end + 2 : end + 2 + size]), end + 4 + size
    raise ConnectionError(f"unexpected reply from Redis: {bytes(buffer[:40])!r}")


class _Connection(asyncio.Protocol):
    """One Redis connection, commands pipelined in order: redis-py's asyncio client costs several times the CPU
    per call, and a listener makes a call per connection (two with the release). Redis runs the commands of one
    connection in the order they were sent, which the counter relies on."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: collections.deque[tuple[asyncio.Future[Any] | None, float]] = collections.deque()
        self.error: BaseException | None = None  # set once lost, or after an error reply nobody waited for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport: uvloop's is one without being a subclass of asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("Redis closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            try:
                value, size = _parse(self.buffer)
            except (ValueError, ConnectionError) as exc:
                self.abort(ConnectionError(str(exc)))
                return
            if value is _INCOMPLETE:
                return
            del self.buffer[:size]
            if not self.waiting:
                self.abort(ConnectionError("a reply from Redis that nothing asked for"))
                return
            future, _ = self.waiting.popleft()
            if future is None:
                if isinstance(value, ReplyError):
                    self.error = value
            elif not future.done():
                if isinstance(value, ReplyError):
                    future.set_exception(value)
                else:
                    future.set_result(value)

    def send(self, *args: str | int | float | bytes) -> asyncio.Future[Any]:
        if self.error is not None or self.transport is None:
            raise ConnectionError(f"Redis connection unusable: {self.error}")
        self.transport.write(_encode(args))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((future, time.monotonic()))
        return future

    def send_only(self, *args: str | int | float | bytes) -> None:
        """A command whose reply nobody awaits (an error reply still marks the connection unusable)."""
        if self.error is None and self.transport is not None:
            self.transport.write(_encode(args))
            self.waiting.append((None, time.monotonic()))

    def oldest(self) -> float:
        """Seconds the oldest unanswered command has waited."""
        return time.monotonic() - self.waiting[0][1] if self.waiting else 0.0

    def abort(self, exc: BaseException) -> None:
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        while self.waiting:
            future, _ = self.waiting.popleft()
            if future is not None and not future.done():
                future.set_exception(exc)


async def _connect(url: str) -> _Connection:
    params = parse_url(url)
    loop = asyncio.get_running_loop()
    conn: _Connection
    if "path" in params:
        _, conn = await loop.create_unix_connection(_Connection, params["path"])
    else:
        context = None
        if url.startswith("rediss://"):
            context = ssl.create_default_context()
            if params.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        _, conn = await loop.create_connection(
            _Connection, params.get("host", "localhost"), params.get("port", 6379), ssl=context
        )
    try:
        if params.get("password"):
            auth = [params["username"], params["password"]] if params.get("username") else [params["password"]]
            await conn.send("AUTH", *auth)
        if params.get("db"):
            await conn.send("SELECT", params["db"])
    except BaseException:
        conn.abort(ConnectionError("closed"))
        raise
    return conn


class RedisCounter(Counter):
    """The counts of every listener process of the installation, in Redis (see the module's docstring).

    One connection, commands in order: a take's script is sent and awaited; releases are counted here at once
    and sent `RELEASE_DELAY` later without waiting (several in one call), unless a take from the same client
    takes the slot over first. The heartbeat's rewrite waits until
    no take is unanswered, and sends the releases still waiting first, so what it writes is exactly what Redis
    has of this process at that point of the connection's order.
    """

    def __init__(self, limits: Limits, url: str, key: str, *, ttl: float = TTL, heartbeat: float = HEARTBEAT) -> None:
        super().__init__(limits)
        self.url = url
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._head: tuple[str, ...] = (f"{key}:processes", f"{key}:totals", f"{key}:process:", self.id)
        self._conn: _Connection | None = None
        self._shas: dict[str, bytes] = {}
        self._up = True
        self._taking = 0
        self._settled = asyncio.Event()  # set while no take is unanswered
        self._settled.set()
        self._releasing: list[str] = []
        self._beating: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        """Whether Redis answers (else this process counts alone)."""
        return self._up and self._conn is not None

    async def start(self) -> None:
        await self.sync()
        self._beating = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        conn = self._conn
        if conn is not None and conn.error is None:
            self._send_releases()
            with contextlib.suppress(*_REDIS_ERRORS):
                await asyncio.wait_for(self._call(conn, "leave"), REDIS_TIMEOUT)
            conn.abort(ConnectionError("stopped"))
        self._conn = None

    async def take(self, ip: str) -> bool:
        conn = self._conn
        if conn is not None and conn.error is None:
            if ip in self._releasing:  # a connection from this client just ended: its slot, still held, passes on
                self._releasing.remove(ip)
                self._count(ip, 1)
                return True
            self._taking += 1
            self._settled.clear()
            try:
                verdict = await self._call(conn, "take", ip, self.limits.total, self.limits.per_client)
            except _REDIS_ERRORS as exc:
                self._down(exc)
            else:
                if verdict == 0:
                    self._count(ip, 1)
                return bool(verdict == 0)
            finally:
                self._taking -= 1
                if not self._taking:
                    self._settled.set()
        return self._take_alone(ip)

    def release(self, ip: str) -> None:
        self._count(ip, -1)
        if self._conn is not None and self._conn.error is None:
            if not self._releasing:
                asyncio.get_running_loop().call_later(RELEASE_DELAY, self._send_releases)
            self._releasing.append(ip)

    async def sync(self) -> None:
        """Replace this process's counts in Redis with what it knows (each heartbeat); (re)connect first."""
        try:
            await asyncio.wait_for(self._sync(), REDIS_TIMEOUT)
        except _REDIS_ERRORS as exc:
            self._down(exc)
            return
        if not self._up:
            self._up = True
            logger.info("SMTP connection limits: Redis answers again, counting over every listener process")

    async def _sync(self) -> None:
        conn = self._conn
        if conn is None or conn.error is not None:
            self._conn = None
            conn = await _connect(self.url)
            for name, text in _SCRIPTS.items():
                self._shas[name] = await conn.send("SCRIPT", "LOAD", text)
            self._conn = conn
        # No take unanswered (their outcome is not known here yet), checked again after every wake-up: a take
        # can start between the event being set and this coroutine running, and a rewrite sent behind it would
        # drop its slot from the totals until the next heartbeat (one connection too many admitted meanwhile).
        while not self._settled.is_set():
            await self._settled.wait()
        self._send_releases()
        fields: list[str | int] = [TOTAL, self.total]
        for ip, n in self.clients.items():
            fields += [ip, n]
        await self._call(conn, "sync", *fields)

    def _send_releases(self) -> None:
        batch, self._releasing = self._releasing, []
        if batch and self._conn is not None:
            self._conn.send_only("EVALSHA", self._shas["release"], 2, *self._head, self.ttl, *batch)

    def _call(self, conn: _Connection, name: str, *args: str | int) -> asyncio.Future[Any]:
        return conn.send("EVALSHA", self._shas[name], 2, *self._head, self.ttl, *args)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            conn = self._conn
            if conn is not None and conn.oldest() > REDIS_TIMEOUT:  # Redis stalled: count alone, reconnect
                self._down(TimeoutError(f"no reply from Redis in {REDIS_TIMEOUT:g} s"))
            elif conn is not None and conn.error is not None:
                self._down(conn.error)
            await self.sync()

    def _down(self, exc: BaseException) -> None:
        if self._conn is not None:
            self._conn.abort(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            self._conn = None
        self._releasing = []  # counted here already; the next rewrite tells Redis
        if self._up:
            self._up = False
            logger.warning(
                "SMTP connection limits: Redis unavailable (%s); each listener process counts its own connections "
                "until it answers again",
                str(exc) or type(exc).__name__,
            )


# --- shared memory: the processes of one `manage.py smtpd` (embedded default) ----------------------------------


def _slot_key(ip: str) -> int:
    """A client address as a table slot holds it: 64 bits of its hash, never 0 (a free slot)."""
    return int.from_bytes(hashlib.blake2b(ip.encode(), digest_size=8).digest(), "little") or 1


class SharedCounter(Counter):
    """A table in shared memory made before `manage.py smtpd` forks; `attach(index)` in each process."""

    def __init__(self, processes: int, limits: Limits) -> None:
        super().__init__(limits)
        self.processes = processes
        self.width = limits.total  # a process never holds more than the total
        size = processes * self.width * 8
        if hasattr(os, "memfd_create"):
            self._fd = os.memfd_create("esaroutes-smtp-connections")
        else:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115  (open for the life of the process)
            self._fd = self._file.fileno()
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)  # MAP_SHARED: the forked processes see one table
        self._table = memoryview(self._map).cast("Q")
        self.index = -1
        self._free: list[int] = []
        self._held: dict[str, list[int]] = {}

    def attach(self, index: int) -> None:
        """Make this process the table's row `index` (0 .. processes - 1), once, after the fork."""
        # Held until the process exits: the kernel drops it then, which is how the others know it died.
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 1 + index)
        self.index = index
        first = index * self.width
        self._free = list(range(first + self.width - 1, first - 1, -1))

    async def take(self, ip: str) -> bool:
        assert self.index >= 0, "SharedCounter.attach() first"
        key = _slot_key(ip)
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 0)
        try:
            verdict = self._decide(key)
            if verdict is not Verdict.ADMIT and self._clear_dead():
                verdict = self._decide(key)
            if verdict is not Verdict.ADMIT or not self._free:
                return False
            slot = self._free.pop()
            self._table[slot] = key
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)
        self._held.setdefault(ip, []).append(slot)
        self._count(ip, 1)
        return True

    def release(self, ip: str) -> None:
        slots = self._held[ip]
        slot = slots.pop()
        if not slots:
            del self._held[ip]
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 0)
        try:
            self._table[slot] = 0
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)
        self._free.append(slot)
        self._count(ip, -1)

    def _decide(self, key: int) -> Verdict:
        values = self._table.tolist()
        return decide(len(values) - values.count(0), values.count(key), self.limits)

    def _clear_dead(self) -> bool:
        """Clear the rows of processes that died (their life lock is free); True when one held slots."""
        cleared = False
        for other in range(self.processes):
            if other == self.index:
                continue
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1 + other)
            except OSError:
                continue  # alive
            first = other * self.width
            if any(self._table[first : first + self.width]):
                self._map[first * 8 : (first + self.width) * 8] = bytes(self.width * 8)
                cleared = True
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 1 + other)
        return cleared
