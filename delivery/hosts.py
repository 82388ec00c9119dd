"""Destination host health and the round-robin position, shared by every worker on every machine.

Host health lives in `HostStatus` rows (the database is shared by all workers). A host that failed (refused,
timed out, dropped, or rejected the greeting, EHLO or STARTTLS) is down for `engine.host_down_for()`: 60 s at
first, doubling while it keeps failing, at most an hour (``ESAROUTES_HOST_DOWN_*``). Its first success marks it
up at once; the caller then releases the backlog of the routes that use it (`delivery.queue.kick_host`).

The round-robin position is one counter per route, bumped once per new connection: in Redis when ``REDIS_URL``
is set (an atomic INCR), else in the database's counter table (an UPDATE ... RETURNING, atomic on SQLite).
Losing it (a flushed Redis) only restarts the rotation.
"""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q

from delivery import engine
from delivery.models import HostStatus, IdCounter

logger = logging.getLogger("delivery.hosts")

HostKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class HostEvent:
    """What one connection taught us about a host: applied in the transaction that records the outcomes."""

    host: str
    port: int
    ok: bool  # the connection opened (and a message went through, when any was sent)
    error: str = ""  # for a failure: the `details` of the Connection Error line
    marks_down: bool = True  # a failure that says something about the host (see engine.marks_host_down)
    delivered: int = 0  # recipients delivered on this connection
    failed: int = 0  # recipients that failed on this connection (next host, delayed, bounced)

    @property
    def key(self) -> HostKey:
        return (self.host, self.port)


def down_hosts(keys: Collection[HostKey], now: datetime) -> set[HostKey]:
    """The hosts among `keys` that are marked down at `now`."""
    if not keys:
        return set()
    names = {h for h, _ in keys}
    rows = HostStatus.objects.filter(host__in=names, down_until__gt=now).values_list("host", "port")
    return {(h, p) for h, p in rows if (h, p) in keys}


def _down_schedule(failures: int) -> timedelta:
    return engine.host_down_for(
        failures,
        timedelta(seconds=settings.ESAROUTES_HOST_DOWN_INITIAL),
        timedelta(seconds=settings.ESAROUTES_HOST_DOWN_MAX),
    )


def apply_events(events: Iterable[HostEvent], now: datetime) -> set[HostKey]:
    """Fold connection outcomes into HostStatus (call inside the recording transaction).

    Returns the hosts that came back: they were down (or failing) and a connection to them just succeeded, so
    the caller should release the backlog queued for their routes.
    """
    merged: dict[HostKey, list[HostEvent]] = {}
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


def adjust_connections(keys: Iterable[HostKey], delta: int) -> None:
    """Open-connection gauge shown on the hosts page (best effort: a killed worker leaves it high until
    `reset_connections` runs at worker start)."""
    for host, port in keys:
        HostStatus.objects.filter(host=host, port=port).update(connections_out=F("connections_out") + delta)


def reset_connections() -> None:
    HostStatus.objects.filter(~Q(connections_out=0)).update(connections_out=0)


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
    name = _db_counter_name(route_key)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO delivery_idcounter (name, value) VALUES (%s, 1) ON CONFLICT (name) "
            "DO UPDATE SET value = delivery_idcounter.value + 1 RETURNING value",
            [name],
        )
        row = cursor.fetchone()
    return int(row[0]) - 1 if row else 0


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
