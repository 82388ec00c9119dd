"""The route table as the delivery side reads it: a per-process cache, rebuilt when the table version changes.

`current_table()` costs nothing most of the time: it trusts its cached `RouteTable` for `ESAROUTES_ROUTE_REFRESH`
seconds (default 2), then reads the one-row `RouteTableVersion`; only when the version moved does it rebuild,
with two queries (`values_list`, no model instances) whatever the size of the table. Every write goes through
`routes.services`, which bumps the version in its own transaction, so a change reaches every worker within
`ESAROUTES_ROUTE_REFRESH` seconds plus one rebuild, without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Model

from routes import destinations, domains, matching
from routes.models import DestinationControl, DestinationHost, Route, RouteTableVersion

_lock = threading.Lock()
_table: matching.RouteTable | None = None
_key: tuple[int, object] | None = None  # (version, changed_at): also right after a database restore
_checked_at = 0.0


def current_table(*, max_age: float | None = None) -> matching.RouteTable:
    """The route table, at most `max_age` (default `ESAROUTES_ROUTE_REFRESH`) seconds behind the database."""
    global _table, _key, _checked_at
    refresh = settings.ESAROUTES_ROUTE_REFRESH if max_age is None else max_age
    table = _table
    now = time.monotonic()
    if table is not None and now - _checked_at < refresh:
        return table
    with _lock:
        if _table is not None and time.monotonic() - _checked_at < refresh:
            return _table
        key = _version_key()
        if _table is None or _key != key:
            _table = build_table(key[0])
            _key = key
        _checked_at = time.monotonic()
        return _table


_ROUTE_COLUMNS = (
    "id",
    "domain",
    "special",
    "auth_profile_id",
    "bounce_profile_id",
    "tls",
    "defer_on_4xx",
    "fallback_relay",
    "sender",
    "source_address",
    "ehlo_name",
)


def build_table(version: int | None = None) -> matching.RouteTable:
    """A fresh table from the database: one query for the routes, one for their hosts, one for the destination
    controls.

    Plain cursor rows rather than `values_list`: at 40,000 routes and 100,000 hosts the ORM's per-value
    converters (booleans on SQLite) cost more than everything else together.
    """
    if version is None:
        version = _version()
    hosts: dict[int, list[domains.HostSpec]] = {}
    spec = domains.HostSpec
    for route_id, host, port, priority, a_only, weight in _rows(
        DestinationHost, ("route_id", "host", "port", "priority", "a_only", "weight"), ("route_id", "position", "id")
    ):
        hosts.setdefault(route_id, []).append(spec(host, port, priority, bool(a_only), weight))
    entries = [
        matching.RouteEntry(
            id=pk,
            domain=domain,
            hosts=tuple(hosts.get(pk, ())),
            special=special,
            auth_profile_id=auth_profile_id,
            bounce_profile_id=bounce_profile_id,
            tls=tls,
            defer_on_4xx=bool(defer_on_4xx),
            fallback_relay=fallback_relay or "",
            sender=sender,
            source_address=source_address or "",
            ehlo_name=ehlo_name or "",
        )
        for (
            pk,
            domain,
            special,
            auth_profile_id,
            bounce_profile_id,
            tls,
            defer_on_4xx,
            fallback_relay,
            sender,
            source_address,
            ehlo_name,
        ) in _rows(Route, _ROUTE_COLUMNS, ())
    ]
    return matching.RouteTable(entries, version=version, destinations=destination_table())


_LIMIT_COLUMNS = destinations.COLUMNS


def destination_table() -> destinations.DestinationTable:
    """The destination controls as a `DestinationTable`, in one query."""
    return destinations.DestinationTable(
        destinations.DestinationLimits(*row) for row in _rows(DestinationControl, _LIMIT_COLUMNS, ())
    )


def _rows(model: type[Model], columns: Sequence[str], order: Sequence[str]) -> list[tuple[Any, ...]]:
    """SELECT columns FROM model's table [ORDER BY order]: raw tuples, no per-value conversion."""
    quote = connection.ops.quote_name
    sql = f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(model._meta.db_table)}"
    if order:
        sql += f" ORDER BY {', '.join(quote(c) for c in order)}"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


def invalidate() -> None:
    """Forget the cached table (tests; a process that just wrote and must read its own change at once)."""
    global _table, _key, _checked_at
    with _lock:
        _table = None
        _key = None
        _checked_at = 0.0


def _version_key() -> tuple[int, object]:
    row = RouteTableVersion.objects.filter(pk=1).values_list("version", "changed_at").first()
    return (row[0], row[1]) if row else (0, None)


def _version() -> int:
    return RouteTableVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0
