"""Shared counting state of the destination controls: connection slots and the recipient window.

Every worker process on every machine counts against the same figures, per counting key
(`routes.destinations.counting_key`: the recipient domain, or `domain|ip` with a per-IP scope):

* a **connection slot** is held by one open connection, named by its holder (`holder()`: the machine, the
  runner that owns the connection, its DCID) with a lease of SLOT_TTL seconds that the runner refreshes while
  the connection lives (`refresh`, every few seconds from its reaper). A killed process refreshes nothing: its
  slots run out within SLOT_TTL seconds and count no more. `acquire` is atomic: it drops the expired holders,
  counts the live ones and adds the new one only when `engine.connections_allowed` says there is room;
* the **recipient window** is a list of (when, how many) charges per key; `reserve` takes at most what
  `engine.recipients_allowed` allows in the last M minutes, atomically, and `window_frees_at` says when
  the next recipient may go (`engine.window_frees_at`). A charge is stamped again when its RCPTs are answered
  (`settle`, which also gives back the recipients the peer refused or never saw), and while they are on their
  way (`hold`): it leaves the window M minutes after the peer counted its recipients, never sooner;
* a **wanted** mark per key (`want`), left by a runner refused a slot and expiring by itself after WANT_TTL
  seconds: every runner's reaper closes its idle pooled connections of a wanted key at once (`wanted`), so a
  slot held by a connection sending nothing goes to the one with mail waiting;
* a **waiting** list per key (`wait`): the MIDs whose recipients were held back for a slot of it; the runner
  that gives a slot of the key back takes them (`take_waiting`) and has them made due at once;
* an **episode** flag per key and kind, so that the `Maximum outbound connections N reached` and `throttled
  by recipient limit` lines are written once when a limit starts holding mail back, not once per recipient.

With ``REDIS_URL`` set, the state lives in Redis (sorted sets, each change one Lua script); on the embedded
default, in the database (`ConnectionSlot`, `RecipientCharge`, `ThrottleEpisode`), in one transaction per change
(SQLite serialises writers; on PostgreSQL an advisory lock per key does). Losing it (a flushed Redis) costs
at most one window's worth of extra recipients and connections that count again as soon as they are refreshed.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from delivery import engine
from delivery.models import ConnectionSlot, RecipientCharge, ThrottleEpisode

logger = logging.getLogger(__name__)

#: Seconds a connection slot counts without a refresh: how soon a dead process's slots come back.
SLOT_TTL = 10.0
#: Charges older than the longest window (60 minutes) are dropped.
WINDOW_KEEP = timedelta(minutes=60)

#: Seconds a wanted mark lasts unless a slot of its key is taken first (it is renewed at each refusal).
WANT_TTL = 10.0

CONNECTIONS = "connections"  # episode kinds
RECIPIENTS = "recipients"


def holder(runner: str, dcid: int) -> str:
    """The name of one connection's slot: which machine, which runner (process), which connection."""
    return f"{settings.ESAROUTES_HOSTNAME}:{runner}:{dcid}"


def _redis() -> redis.Redis[bytes] | None:
    return _client(settings.REDIS_URL) if settings.REDIS_URL else None


@functools.cache
def _client(url: str) -> redis.Redis[bytes]:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def _slots_key(key: str) -> str:
    return f"esaroutes:slots:{key}"


def _rcpts_key(key: str) -> str:
    return f"esaroutes:rcpts:{key}"


def _wanted_key(key: str) -> str:
    return f"esaroutes:wanted:{key}"


def _waiting_key(key: str) -> str:
    return f"esaroutes:waiting:{key}"


#: On the database, a wanted mark is a ConnectionSlot row under this prefix (a counting key never starts so).
_WANTED_PREFIX = "wanted:"
#: ... and a waiting MID one under this prefix, its holder the MID.
_WAITING_PREFIX = "waiting:"
#: Seconds a waiting MID is remembered (its recipients' SLOT_RETRY makes them due anyway).
WAITING_TTL = 3600


def _episode_key(key: str, kind: str) -> str:
    return f"esaroutes:episode:{kind}:{key}"


def _locked(key: str) -> None:
    """On PostgreSQL, serialise the changes of one key until the transaction ends (SQLite serialises writers)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(key.encode()) - 2**31])


# --- connection slots ---------------------------------------------------------------------------------------

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return redis.call('ZCARD', KEYS[1])
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return redis.call('ZCARD', KEYS[1])
end
return 0
"""


def acquire(key: str, name: str, limit: int, *, now: datetime | None = None) -> int:
    """Take a connection slot of `key` for holder `name`, if fewer than `limit` live holders have one. Returns
    how many slots of `key` are held with it, 0 when it was refused."""
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        stamp = now.timestamp()
        ttl = int(SLOT_TTL) + 5
        return int(client.eval(_ACQUIRE, 1, _slots_key(key), stamp, stamp + SLOT_TTL, limit, name, ttl))  # type: ignore[no-untyped-call]
    with transaction.atomic():
        _locked(key)
        ConnectionSlot.objects.filter(key=key, expires_at__lte=now).delete()
        until = now + timedelta(seconds=SLOT_TTL)
        held = ConnectionSlot.objects.filter(key=key).count()
        if ConnectionSlot.objects.filter(key=key, holder=name).update(expires_at=until):
            return held
        if engine.connections_allowed(limit, held) < 1:
            return 0
        ConnectionSlot.objects.create(key=key, holder=name, expires_at=until)
        return held + 1


def release(key: str, name: str) -> None:
    """Give a connection slot back (its connection closed)."""
    client = _redis()
    if client is not None:
        client.zrem(_slots_key(key), name)
        return
    ConnectionSlot.objects.filter(key=key, holder=name).delete()


def refresh(held: Iterable[tuple[str, str]], *, now: datetime | None = None) -> None:
    """Renew the leases of the slots (key, holder) of the connections still open (the runner's heartbeat)."""
    held = list(held)
    if not held:
        return
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        until = now.timestamp() + SLOT_TTL
        with client.pipeline(transaction=False) as pipe:
            for key, name in held:
                pipe.zadd(_slots_key(key), {name: until}, xx=True)
                pipe.expire(_slots_key(key), int(SLOT_TTL) + 5)
            pipe.execute()
        return
    until_at = now + timedelta(seconds=SLOT_TTL)
    for key, name in held:
        ConnectionSlot.objects.filter(key=key, holder=name).update(expires_at=until_at)


def in_use(key: str, *, now: datetime | None = None) -> int:
    """Connection slots of `key` held now, by every live worker."""
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        return int(client.zcount(_slots_key(key), f"({now.timestamp()}", "+inf"))
    return ConnectionSlot.objects.filter(key=key, expires_at__gt=now).count()


def in_use_by_address(key: str, *, now: datetime | None = None) -> dict[str, int]:
    """The connection slots held now per destination IP under the scope "per destination IP": those of the
    keys `key|ip` (`routes.destinations.counting_key`), by address; an address with none held is left out."""
    now = now or timezone.now()
    prefix = f"{key}|"
    client = _redis()
    if client is not None:
        names = sorted(client.scan_iter(match=_slots_key(_glob(prefix)) + "*"))
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(name, f"({now.timestamp()}", "+inf")
            counts = pipe.execute()
        found = {name.decode().removeprefix(_slots_key(prefix)): int(n) for name, n in zip(names, counts, strict=True)}
    else:
        rows = ConnectionSlot.objects.filter(key__startswith=prefix, expires_at__gt=now)
        found = {}
        for row_key in rows.values_list("key", flat=True):
            address = row_key.removeprefix(prefix)
            found[address] = found.get(address, 0) + 1
    return {address: n for address, n in sorted(found.items()) if n}


def _glob(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def want(key: str, *, now: datetime | None = None) -> None:
    """Mark that a runner waits for a slot of `key` (for WANT_TTL seconds): idle connections of it should close."""
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        client.set(_wanted_key(key), str(now.timestamp()), ex=int(WANT_TTL))
        return
    ConnectionSlot.objects.update_or_create(
        key=_WANTED_PREFIX + key, holder="", defaults={"expires_at": now + timedelta(seconds=WANT_TTL)}
    )


def unwant(key: str) -> None:
    """A slot of `key` was taken: nobody waits for one any more (a waiter still refused marks it again)."""
    client = _redis()
    if client is not None:
        client.delete(_wanted_key(key))
        return
    ConnectionSlot.objects.filter(key=_WANTED_PREFIX + key).delete()


def wanted(keys: Iterable[str], *, now: datetime | None = None) -> set[str]:
    """Those of `keys` some runner waits for a slot of now."""
    keys = sorted(set(keys))
    if not keys:
        return set()
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        found = client.mget([_wanted_key(k) for k in keys])
        return {k for k, v in zip(keys, found, strict=True) if v is not None}
    rows = ConnectionSlot.objects.filter(key__in=[_WANTED_PREFIX + k for k in keys], expires_at__gt=now)
    return {k.removeprefix(_WANTED_PREFIX) for k in rows.values_list("key", flat=True)}


def wait(key: str, mids: Iterable[int], *, now: datetime | None = None) -> None:
    """Remember that recipients of `mids` wait for a connection slot of `key` (`take_waiting` wakes them)."""
    mids = sorted(set(mids))
    if not mids:
        return
    client = _redis()
    if client is not None:
        with client.pipeline(transaction=True) as pipe:
            pipe.sadd(_waiting_key(key), *mids)
            pipe.expire(_waiting_key(key), WAITING_TTL)
            pipe.execute()
        return
    now = now or timezone.now()
    until = now + timedelta(seconds=WAITING_TTL)
    rows = [ConnectionSlot(key=_WAITING_PREFIX + key, holder=str(mid), expires_at=until) for mid in mids]
    ConnectionSlot.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["key", "holder"], update_fields=["expires_at"]
    )


def take_waiting(key: str, *, now: datetime | None = None) -> list[int]:
    """The MIDs waiting for a slot of `key` (a slot of it was just given back), forgotten as they are taken."""
    client = _redis()
    if client is not None:
        with client.pipeline(transaction=True) as pipe:
            pipe.smembers(_waiting_key(key))
            pipe.delete(_waiting_key(key))
            members, _ = pipe.execute()
        return sorted(int(m) for m in members)
    now = now or timezone.now()
    with transaction.atomic():
        rows = ConnectionSlot.objects.select_for_update().filter(key=_WAITING_PREFIX + key)
        found = [(pk, holder, at) for pk, holder, at in rows.values_list("pk", "holder", "expires_at")]
        ConnectionSlot.objects.filter(pk__in=[pk for pk, _, _ in found]).delete()
    return sorted(int(holder) for _, holder, at in found if at > now)


# --- the recipient window -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Charge:
    """Recipients counted against the window of `key` by `reserve` (`ref` names the charge in the store).

    The peer counts a recipient when its RCPT arrives, which is after the reserve: so a charge is *pending*
    until its transaction's RCPTs are answered, and its stamp moves with it, so it never leaves the window
    before its last RCPT's M minutes have passed at the peer. While pending, the runner's heartbeat re-stamps
    it every few seconds (`hold`); when the replies are in, `settle` stamps it with that moment and keeps only
    the recipients the peer took (those refused, or never sent, are given back). A killed worker re-stamps
    nothing: its pending charges leave the window M minutes after its last heartbeat."""

    key: str
    ref: str
    count: int


_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[6])
local count = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')) do
  count = count + tonumber(string.match(member, ':(%d+)$'))
end
local allowed = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) - count)
if allowed > 0 then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5] .. ':' .. allowed)
  redis.call('EXPIRE', KEYS[1], 3660)
  return allowed
end
return 0
"""

# A charge that is still there (not flushed) is stamped anew and keeps ARGV[3] of its ARGV[2] recipients.
_SETTLE = """
if redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2]) == 1 and tonumber(ARGV[3]) > 0 then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1] .. ':' .. ARGV[3])
  redis.call('EXPIRE', KEYS[1], 3660)
end
return 0
"""


def reserve(key: str, wanted: int, *, limit: int, minutes: int, now: datetime | None = None) -> Charge:
    """Count up to `wanted` recipients against the window of `key` (at most `limit` per `minutes`); the charge
    says how many were granted (0 when the window is full). It is pending: `settle` it when its RCPTs are
    answered, `hold` it meanwhile."""
    if wanted < 1:
        return Charge(key, "", 0)
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        stamp = now.timestamp()
        since = stamp - minutes * 60
        ref = uuid.uuid4().hex[:16]
        keep = stamp - WINDOW_KEEP.total_seconds()
        granted = int(client.eval(_RESERVE, 1, _rcpts_key(key), stamp, since, limit, wanted, ref, keep))  # type: ignore[no-untyped-call]
        return Charge(key, ref if granted else "", granted)
    with transaction.atomic():
        _locked(key)
        RecipientCharge.objects.filter(key=key, at__lte=now - WINDOW_KEEP).delete()
        granted = engine.recipients_allowed(limit, _db_in_window(key, minutes, now), wanted)
        if not granted:
            return Charge(key, "", 0)
        row = RecipientCharge.objects.create(key=key, at=now, count=granted)
        return Charge(key, str(row.pk), granted)


def settle(charge: Charge, kept: int, *, now: datetime | None = None) -> None:
    """The charge's RCPTs are answered (at `now`): it counts `kept` recipients from `now` on (0: gone)."""
    if not charge.count:
        return
    kept = max(0, min(kept, charge.count))
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        client.eval(_SETTLE, 1, _rcpts_key(charge.key), charge.ref, charge.count, kept, now.timestamp())  # type: ignore[no-untyped-call]
        return
    rows = RecipientCharge.objects.filter(pk=int(charge.ref))
    if kept:
        rows.update(at=now, count=kept)
    else:
        rows.delete()


def hold(pending: Iterable[Charge], *, now: datetime | None = None) -> None:
    """Re-stamp charges whose RCPTs are still on their way (the runner's heartbeat, with its slots')."""
    pending = [c for c in pending if c.count]
    if not pending:
        return
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        with client.pipeline(transaction=False) as pipe:
            for c in pending:
                pipe.zadd(_rcpts_key(c.key), {f"{c.ref}:{c.count}": now.timestamp()}, xx=True)
            pipe.execute()
        return
    RecipientCharge.objects.filter(pk__in=[int(c.ref) for c in pending]).update(at=now)


def _db_in_window(key: str, minutes: int, now: datetime) -> int:
    rows = RecipientCharge.objects.filter(key=key, at__gt=now - timedelta(minutes=minutes))
    return sum(rows.values_list("count", flat=True))


def charges(key: str, minutes: int, *, now: datetime | None = None) -> list[tuple[datetime, int]]:
    """The window's charges of `key`: (when, how many recipients), oldest first."""
    now = now or timezone.now()
    client = _redis()
    if client is not None:
        since = now.timestamp() - minutes * 60
        out: list[tuple[datetime, int]] = []
        for member, score in client.zrangebyscore(_rcpts_key(key), f"({since}", "+inf", withscores=True):
            out.append((datetime.fromtimestamp(float(score), UTC), int(member.rsplit(b":", 1)[1])))
        return out
    rows = RecipientCharge.objects.filter(key=key, at__gt=now - timedelta(minutes=minutes)).order_by("at")
    return list(rows.values_list("at", "count"))


def recipients_by_address(key: str, minutes: int, *, now: datetime | None = None) -> dict[str, int]:
    """Recipients counted in the last `minutes` minutes per destination IP (the keys `key|ip`), by address."""
    now = now or timezone.now()
    prefix = f"{key}|"
    client = _redis()
    found: dict[str, int] = {}
    if client is not None:
        for name in client.scan_iter(match=_rcpts_key(_glob(prefix)) + "*"):
            address = name.decode().removeprefix(_rcpts_key(prefix))
            found[address] = recipients_in_window(prefix + address, minutes, now=now)
    else:
        rows = RecipientCharge.objects.filter(key__startswith=prefix, at__gt=now - timedelta(minutes=minutes))
        for row_key, count in rows.values_list("key", "count"):
            address = row_key.removeprefix(prefix)
            found[address] = found.get(address, 0) + count
    return {address: n for address, n in sorted(found.items()) if n}


def recipients_in_window(key: str, minutes: int, *, now: datetime | None = None) -> int:
    """Recipients counted against `key` in the last `minutes` minutes, by every worker."""
    return sum(n for _, n in charges(key, minutes, now=now))


def window_frees_at(key: str, *, limit: int, minutes: int, now: datetime | None = None) -> datetime:
    """When the next recipient of `key` may go (now, if it may go now)."""
    now = now or timezone.now()
    return engine.window_frees_at(charges(key, minutes, now=now), limit=limit, minutes=minutes, now=now)


# --- episodes: one log line when a limit starts holding mail back -------------------------------------------


def start_episode(key: str, kind: str) -> bool:
    """Mark that a limit of `kind` holds `key` back; True when it did not already (the line is due)."""
    client = _redis()
    if client is not None:
        return bool(client.set(_episode_key(key, kind), str(time.time()), nx=True, ex=3600))
    _, created = ThrottleEpisode.objects.get_or_create(key=key, kind=kind)
    return created


def end_episode(key: str, kind: str) -> bool:
    """The limit let `key`'s mail go again; True when an episode was on (a resume line may be due)."""
    client = _redis()
    if client is not None:
        return bool(client.delete(_episode_key(key, kind)))
    deleted, _ = ThrottleEpisode.objects.filter(key=key, kind=kind).delete()
    return bool(deleted)


def flush() -> None:
    """Forget every slot, wanted mark, waiting MID, charge and episode (tests; an operator's reset)."""
    client = _redis()
    if client is not None:
        kinds = ("slots", "rcpts", "episode", "wanted", "waiting")
        for pattern in (f"esaroutes:{kind}:*" for kind in kinds):
            names = list(client.scan_iter(pattern))
            if names:
                client.delete(*names)
    ConnectionSlot.objects.all().delete()
    RecipientCharge.objects.all().delete()
    ThrottleEpisode.objects.all().delete()
