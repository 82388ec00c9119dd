"""One throttle for every way in: failed logins counted per client address and per username, refused for a while.

Who uses it
- The web: `esaroutes.login.ThrottledModelBackend` is the only authentication backend, so `/login/`, `/admin/login/`
  and anything later that calls `django.contrib.auth.authenticate()` (an API) share the `WEB` counters.
- SMTP AUTH: the listener's `Handler._auth` (delivery/listener.py) runs `attempt(SMTP, ...)` in its worker pool.

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
them; `INCR` is atomic), the file cache on the embedded default (one machine; concurrent failures may lose a count).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

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


def counts(scope: Scope, address: str, username: str) -> Counts:
    address_k, user_k = keys(scope, address, username)
    found = cache.get_many([address_k, user_k])
    return Counts(int(found.get(address_k) or 0), int(found.get(user_k) or 0))


def check(scope: Scope, address: str, username: str) -> Refusal | None:
    """The refusal for an attempt about to be made, or None: call it before checking the password."""
    return decide(counts(scope, address, username), policy(scope))


def _bump(key: str, lockout: int) -> int:
    if cache.add(key, 1, timeout=lockout):
        return 1
    try:
        value = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=lockout)
        return 1
    cache.touch(key, lockout)  # the timer restarts (and the file cache's incr() set its default timeout)
    return int(value)


def record_failure(scope: Scope, address: str, username: str) -> Counts:
    lockout = policy(scope).lockout
    address_k, user_k = keys(scope, address, username)
    return Counts(_bump(address_k, lockout), _bump(user_k, lockout))


def record_success(scope: Scope, address: str, username: str) -> None:
    address_k, user_k = keys(scope, address, username)
    cache.delete_many([address_k, user_k] if policy(scope).clear_address_on_success else [user_k])


def clear(scope: Scope, address: str, username: str) -> None:
    """Forget both counters (an operator unlocking a client, tests)."""
    cache.delete_many(list(keys(scope, address, username)))


def attempt(scope: Scope, address: str, username: str, password_ok: Callable[[], bool]) -> Outcome:
    """One login: refused unchecked while locked, else `password_ok()` is called and the outcome counted."""
    pol = policy(scope)
    before = counts(scope, address, username)
    refusal = decide(before, pol)
    if refusal is not None:
        return Outcome(ok=False, refusal=refusal, counts=before, locked_now=False)
    if password_ok():
        record_success(scope, address, username)
        return Outcome(ok=True, refusal=None, counts=before, locked_now=False)
    after = record_failure(scope, address, username)
    return Outcome(ok=False, refusal=None, counts=after, locked_now=decide(after, pol) is not None)
