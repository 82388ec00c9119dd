"""One throttle for every way in: failed logins counted per client address and per username, refused for a while.

Who uses it
- The web: `esaroutes.login.ThrottledModelBackend` is the only authentication backend, so `/login/`, `/admin/login/`
  and anything later that calls `django.contrib.auth.authenticate()` (an API) share the `WEB` counters.
- SMTP AUTH: the listener's `Handler._auth` (delivery/listener/handler.py) runs `attempt(SMTP, ...)` in its worker pool.

Two scopes, not one: `WEB` counts Django users, `SMTP` counts `SmtpUser`s, two tables whose names may coincide for
different people. Sharing would let a mail client with a stale password lock an administrator out of the web UI
(or an AUTH storm lock the console the operator needs to watch it), so each scope has its own counters and limits.

The rule (`decide`, pure): a client address or a username with `max_failures` failures is refused, before any
password is checked, until `lockout` seconds after its last failure (each failure restarts its timer; refused
attempts are not counted, so a lock always ends). IPv6 addresses count per /64, what one client usually holds.
A success clears the username's counter; the address's counter is cleared on the web (a handful of operators:
their typos, then the right password) but not for SMTP, where clients authenticate for every message: a client
holding one valid mailbox password could otherwise reset its address between guesses at other users' passwords.

Counters live in the cache: Redis in production (every web server and listener process on every machine sees
them; `INCR` is atomic), the file cache on the embedded default (one machine; each change under a file lock).
Parallel guesses cannot slip past the limit: an attempt takes its place in the counters before its password is
checked (see `attempt`).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

PREFIX = "esaroutes:throttle:"


class Scope(enum.Enum):
    WEB = "web"
    SMTP = "smtp"


WEB = Scope.WEB
SMTP = Scope.SMTP


@dataclass(frozen=True)
class Policy:
    max_failures: int
    lockout: int  # seconds after the last failure
    clear_address_on_success: bool


def policy(scope: Scope) -> Policy:
    """The scope's limits, read from the settings at each call (so a changed setting applies at once)."""
    if scope is Scope.SMTP:
        return Policy(settings.ESAROUTES_SMTP_AUTH_MAX_FAILURES, settings.ESAROUTES_SMTP_AUTH_LOCKOUT, False)
    return Policy(settings.ESAROUTES_LOGIN_MAX_FAILURES, settings.ESAROUTES_LOGIN_LOCKOUT, True)


@dataclass(frozen=True)
class Counts:
    address: int
    username: int


@dataclass(frozen=True)
class Refusal:
    by: str  # "address" or "username": which counter is at its limit
    counts: Counts
    lockout: int

    @property
    def minutes(self) -> int:
        return max(1, -(-self.lockout // 60))


@dataclass(frozen=True)
class Outcome:
    ok: bool
    refusal: Refusal | None  # refused before the password was checked
    counts: Counts  # after this attempt
    locked_now: bool  # this failure brought a counter to its limit


# --- the decisions (pure) ----------------------------------------------------------------------------------------


def decide(counts: Counts, pol: Policy) -> Refusal | None:
    """Refuse when either counter has reached the limit; the address first (it names the client to block)."""
    if counts.address >= pol.max_failures:
        return Refusal("address", counts, pol.lockout)
    if counts.username >= pol.max_failures:
        return Refusal("username", counts, pol.lockout)
    return None


def address_key(address: str) -> str:
    """What an address counts as: the address itself for IPv4, its /64 for IPv6 (an IPv4-mapped IPv6 address is
    the IPv4 one); anything that is not an IP address (no request, a Unix socket) as itself."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]").split("%")[0])
    except ValueError:
        return address.strip() or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def username_key(username: str) -> str:
    """Case and surrounding blanks do not make another user; hashed, so a key never carries what a client typed."""
    return hashlib.sha256(username.strip().lower().encode("utf-8", "replace")).hexdigest()[:32]


def keys(scope: Scope, address: str, username: str) -> tuple[str, str]:
    return (
        f"{PREFIX}{scope.value}:addr:{address_key(address)}",
        f"{PREFIX}{scope.value}:user:{username_key(username)}",
    )


# --- the counters (cache) ----------------------------------------------------------------------------------------
# An attempt reserves its place first (+1 on both counters, the timers left alone) and decides on what it got
# back, so parallel attempts cannot all pass a check made before any of them failed: on Redis (atomic INCR) no
# more than `max_failures` passwords are checked per lock window however many clients guess at once. A refused
# attempt gives its place back; a failure keeps it and restarts the timers; a success gives it back or clears.
# Redis keeps a key's TTL through INCR; the other caches re-store a value with their default timeout, so there
# the value carries its own expiry: `(count, expires_at)`, stored with the time it has left, each change made under
# a lock (`_exclusive`).


_LOCK = threading.Lock()


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """The other caches have no atomic increment: one read-modify-write at a time, across threads and, through a
    file lock in the data directory, across the processes of the one machine the embedded default runs on."""
    with _LOCK, (Path(settings.DATA_DIR) / "throttle.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _redis() -> bool:
    return isinstance(caches["default"], RedisCache)


def _count(value: object) -> int:
    if isinstance(value, (tuple, list)):
        count, expires = value
        return int(count) if float(expires) > time.time() else 0
    return value if isinstance(value, int) else 0


def _add(key: str, delta: int, lockout: int, *, restart: bool) -> int:
    """Add `delta` to a counter and return it; `restart` starts its timer again (else a new key gets a full one)."""
    if _redis():
        if delta > 0 and cache.add(key, delta, timeout=lockout):
            return delta
        try:
            value = int(cache.incr(key, delta))
        except ValueError:  # gone (expired) meanwhile
            if delta > 0:
                cache.add(key, delta, timeout=lockout)
            return max(delta, 0)
        if restart:
            cache.touch(key, lockout)
        return value
    with _exclusive():
        now = time.time()
        found = cache.get(key)
        live = isinstance(found, (tuple, list)) and float(found[1]) > now
        value = max(0, (_count(found) if live else 0) + delta)
        if value == 0 and not live:
            return 0
        expires = float(found[1]) if live and not restart else now + lockout
        cache.set(key, (value, expires), timeout=max(1.0, expires - now))
    return value


def counts(scope: Scope, address: str, username: str) -> Counts:
    address_k, user_k = keys(scope, address, username)
    found = cache.get_many([address_k, user_k])
    return Counts(_count(found.get(address_k)), _count(found.get(user_k)))


def check(scope: Scope, address: str, username: str) -> Refusal | None:
    """The refusal for an attempt about to be made, or None (a look only: `attempt()` is what logins use)."""
    return decide(counts(scope, address, username), policy(scope))


def record_failure(scope: Scope, address: str, username: str) -> Counts:
    lockout = policy(scope).lockout
    address_k, user_k = keys(scope, address, username)
    return Counts(_add(address_k, 1, lockout, restart=True), _add(user_k, 1, lockout, restart=True))


def clear(scope: Scope, address: str, username: str) -> None:
    """Forget both counters (an operator unlocking a client, tests)."""
    cache.delete_many(list(keys(scope, address, username)))


def attempt(scope: Scope, address: str, username: str, password_ok: Callable[[], bool]) -> Outcome:
    """One login: refused unchecked while locked, else `password_ok()` is called and the outcome counted."""
    pol = policy(scope)
    keys_ = address_k, user_k = keys(scope, address, username)
    reserved = Counts(_add(address_k, 1, pol.lockout, restart=False), _add(user_k, 1, pol.lockout, restart=False))
    before = Counts(reserved.address - 1, reserved.username - 1)
    refusal = decide(before, pol)
    if refusal is not None:
        _add(address_k, -1, pol.lockout, restart=False)
        _add(user_k, -1, pol.lockout, restart=False)
        return Outcome(ok=False, refusal=refusal, counts=before, locked_now=False)
    if password_ok():
        if pol.clear_address_on_success:
            cache.delete_many([address_k, user_k])
        else:
            cache.delete(user_k)
            _add(address_k, -1, pol.lockout, restart=False)
        return Outcome(ok=True, refusal=None, counts=before, locked_now=False)
    after = Counts(*(_add(k, 0, pol.lockout, restart=True) or _add(k, 1, pol.lockout, restart=True) for k in keys_))
    return Outcome(ok=False, refusal=None, counts=after, locked_now=decide(after, pol) is not None)
