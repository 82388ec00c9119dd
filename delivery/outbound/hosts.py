"""Destination host health and the round-robin position, shared by every worker on every machine.

Host health lives in `HostStatus` rows (the database is shared by all workers). A host that failed (refused,
timed out, dropped, or rejected the greeting, EHLO or STARTTLS) is down for `engine.host_down_for()`: 60 s at
first, doubling while it keeps failing, at most an hour (``ESAROUTES_HOST_DOWN_*``). Its first success marks it
up at once; the caller then releases the backlog of the routes that use it (`delivery.spool.lease.kick_hosts`).

The round-robin position is one counter per route, bumped once per new connection: in Redis when ``REDIS_URL``
is set (an atomic INCR), else in the database's counter table (an UPDATE ... RETURNING, atomic on SQLite).
Losing it (a flushed Redis) only restarts the rotation.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Q

from delivery import engine, ids, outcome
from delivery.models import HostStatus, IdCounter

logger = logging.getLogger(__name__)

HostKey = tuple[str, int]


def down_hosts(keys: Collection[HostKey], now: datetime) -> set[HostKey]:
    """The hosts among `keys` that are marked down at `now`."""
    if not keys:
        return set()
    names = sorted({h for h, _ in keys})
    with connection.cursor() as cursor:  # read for every batch: a plain statement, no query built each time
        cursor.execute(
            f"SELECT host, port FROM delivery_hoststatus WHERE host IN ({', '.join(['%s'] * len(names))}) "
            "AND down_until > %s",
            [*names, connection.ops.adapt_datetimefield_value(now)],
        )
        return {(h, p) for h, p in cursor.fetchall() if (h, p) in keys}


def _down_schedule(failures: int) -> timedelta:
    return engine.host_down_for(
        failures,
        timedelta(seconds=settings.ESAROUTES_HOST_DOWN_INITIAL),
        timedelta(seconds=settings.ESAROUTES_HOST_DOWN_MAX),
    )


def split_healthy(events: Iterable[outcome.HostEvent]) -> tuple[list[outcome.HostEvent], list[outcome.HostEvent]]:
    """(the events of hosts that only succeeded here, the others): the first can wait for `count_healthy()`."""
    events = list(events)
    failed = {e.key for e in events if not e.ok}
    healthy: list[outcome.HostEvent] = []
    others: list[outcome.HostEvent] = []
    for event in events:
        (others if event.key in failed else healthy).append(event)
    return healthy, others


def count_healthy(events: Iterable[outcome.HostEvent], now: datetime) -> set[HostKey]:
    """Successes, added to their hosts' counters after the outcomes' transaction, in a short one of their own.

    In the recording transaction these UPDATEs held the rows of the busiest hosts locked until its commit, and
    every other worker's recording waited for it: one worker recording at a time. Here the lock lasts one
    statement, and on PostgreSQL the commit does not wait for the disk (counters; a crash can lose the last
    few). A host that was not healthy after all (another worker marked it down meanwhile) goes through
    `apply_events`, which marks it up; returns the hosts that came back.
    """
    merged: dict[HostKey, list[outcome.HostEvent]] = {}
    for event in events:
        merged.setdefault(event.key, []).append(event)
    if not merged:
        return set()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
        return apply_events([e for key in sorted(merged) for e in merged[key]], now)


def apply_events(events: Iterable[outcome.HostEvent], now: datetime) -> set[HostKey]:
    """Fold connection outcomes into HostStatus (call inside the recording transaction).

    Returns the hosts that came back: they were down (or failing) and a connection to them just succeeded, so
    the caller should release the backlog queued for their routes.
    """
    merged: dict[HostKey, list[outcome.HostEvent]] = {}
    for event in events:
        merged.setdefault(event.key, []).append(event)
    if not merged:
        return set()
    # The common case, a healthy host that stays healthy: add to its counters, no lock, no read.
    # Always in (host, port) order, as the slow path's SELECT ... FOR UPDATE: two workers recording at the
    # same time take the rows' locks in the same order, so they never deadlock.
    healthy = sorted(key for key, evs in merged.items() if all(e.ok for e in evs))
    if healthy:
        with connection.cursor() as cursor:
            for key in healthy:
                evs = merged[key]
                cursor.execute(
                    "UPDATE delivery_hoststatus SET delivered = delivered + %s, failed = failed + %s, "
                    "last_success_at = %s WHERE host = %s AND port = %s AND consecutive_failures = 0 "
                    "AND down_until IS NULL",
                    [
                        sum(e.delivered for e in evs),
                        sum(e.failed for e in evs),
                        connection.ops.adapt_datetimefield_value(now),
                        key[0],
                        key[1],
                    ],
                )
                if cursor.rowcount == 1:
                    del merged[key]
    if not merged:
        return set()
    existing = {
        (hs.host, hs.port): hs
        for hs in HostStatus.objects.filter(host__in={h for h, _ in merged})
        .order_by("host", "port")
        .select_for_update()
        if (hs.host, hs.port) in merged
    }
    missing = [HostStatus(host=h, port=p) for (h, p) in merged if (h, p) not in existing]
    if missing:
        HostStatus.objects.bulk_create(missing, ignore_conflicts=True)
        for hs in HostStatus.objects.filter(host__in={m.host for m in missing}).select_for_update():
            existing.setdefault((hs.host, hs.port), hs)
    came_back: set[HostKey] = set()
    for key, host_events in merged.items():
        hs = existing[key]
        for event in host_events:
            hs.delivered += event.delivered
            hs.failed += event.failed
            if event.ok:
                if hs.consecutive_failures or (hs.down_until and hs.down_until > now):
                    came_back.add(key)
                hs.consecutive_failures = 0
                hs.down_until = None
                hs.last_success_at = now
            else:
                hs.last_error = event.error[:2000]
                hs.last_error_at = now
                if event.marks_down:
                    hs.consecutive_failures += 1
                    hs.down_until = now + _down_schedule(hs.consecutive_failures)
                    came_back.discard(key)
    HostStatus.objects.bulk_update(
        existing.values(),
        ["delivered", "failed", "consecutive_failures", "down_until", "last_success_at", "last_error", "last_error_at"],
    )
    return came_back


def mark_up(host: str, port: int) -> bool:
    """Mark a host up now (the operator's "retry now"). True when it was down or failing."""
    with transaction.atomic():
        changed = (
            HostStatus.objects.filter(host=host, port=port)
            .filter(Q(down_until__isnull=False) | Q(consecutive_failures__gt=0))
            .update(down_until=None, consecutive_failures=0)
        )
    return bool(changed)


# --- the open connections gauge -----------------------------------------------------------------------------
# Each worker process publishes its open connections per host and recipient domain in the shared cache (Redis,
# or the file cache on the embedded default) with a short expiry, and lists itself in a registry there; the
# sweep adds them up into HostStatus.connections_out. A killed process's figures expire with its entry: the
# gauge heals by itself. A connection belongs to one domain (its destination control's: `outcome.Destination`
# .domain), "" for one that is not counted per domain (a redirect to an operator's relay).

GAUGE_TTL = 15.0
_REGISTRY = "esaroutes:connections"

#: (host, port, recipient domain): what one open connection is counted by; a (host, port) means domain "".
GaugeKey = tuple[str, int, str]


def publish_connections(token: str, counts: Mapping[GaugeKey, int] | Mapping[HostKey, int]) -> None:
    """One process's open connections. Two processes updating the registry at once may drop each other's entry;
    each one publishes again within 5 s, so the gauge is at worst briefly low."""
    key = f"{_REGISTRY}:{settings.ESAROUTES_HOSTNAME}:{token}"
    cache.set(key, {"|".join(map(str, (*k, "")[:3])): n for k, n in counts.items()}, timeout=GAUGE_TTL)
    now = time.time()
    registry = {k: exp for k, exp in (cache.get(_REGISTRY) or {}).items() if exp > now}
    registry[key] = now + GAUGE_TTL
    cache.set(_REGISTRY, registry, timeout=None)


def _gauges() -> Iterator[tuple[GaugeKey, int]]:
    """Every live worker process's open connections: ((host, port, domain), how many), unsummed."""
    now = time.time()
    registry = cache.get(_REGISTRY) or {}
    keys = [key for key, exp in registry.items() if exp > now]
    for gauge in cache.get_many(keys).values():
        for name, n in gauge.items():
            host, port, domain = (*name.split("|"), "")[:3]
            yield (host, int(port), domain), int(n)


def open_connections() -> dict[HostKey, int]:
    """Open outgoing connections per host, summed over every live worker process."""
    total: dict[HostKey, int] = {}
    for (host, port, _), n in _gauges():
        total[(host, port)] = total.get((host, port), 0) + n
    return total


def open_connections_by_domain() -> dict[str, int]:
    """Open outgoing connections per recipient domain (the one each was opened for), over every live process."""
    total: dict[str, int] = {}
    for (_, _, domain), n in _gauges():
        if domain:
            total[domain] = total.get(domain, 0) + n
    return total


def store_connection_gauges() -> None:
    """Write the summed gauge into HostStatus.connections_out (the sweep calls this every few seconds)."""
    counts = open_connections()
    rows = HostStatus.objects.filter(Q(connections_out__gt=0) | Q(host__in={h for h, _ in counts}))
    for hs in rows.only("id", "host", "port", "connections_out"):
        value = counts.get((hs.host, hs.port), 0)
        if value != hs.connections_out:
            HostStatus.objects.filter(pk=hs.pk).update(connections_out=value)


# --- round-robin --------------------------------------------------------------------------------------------


@functools.cache
def _redis(url: str) -> redis.Redis[bytes]:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def next_rr_offset(route_key: str) -> int:
    """Bump and return the round-robin counter of one route (per new connection)."""
    if settings.REDIS_URL:
        try:
            return int(_redis(settings.REDIS_URL).incr(f"esaroutes:rr:{route_key}")) - 1
        except redis.RedisError:
            logger.warning("round-robin counter: Redis unavailable, using the database", exc_info=True)
    return ids.bump(_db_counter_name(route_key)) - 1


def current_rr_offset(route_key: str | int = "") -> int:
    """Where the next connection of a route will start (for the route test page); 0 when unknown."""
    key = str(route_key)
    if settings.REDIS_URL:
        try:
            value = _redis(settings.REDIS_URL).get(f"esaroutes:rr:{key}")
            return int(value) if value is not None else 0
        except (redis.RedisError, ValueError):
            return 0
    row = IdCounter.objects.filter(name=_db_counter_name(key)).values_list("value", flat=True).first()
    return int(row or 0)


def _db_counter_name(route_key: str) -> str:
    """IdCounter names are at most 16 characters: long keys (MX domains) are hashed, stably."""
    name = f"rr:{route_key}"
    if len(name) <= 16:
        return name
    return f"rr#{zlib.crc32(route_key.encode()):08x}"
