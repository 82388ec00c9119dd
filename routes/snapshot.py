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

from django.conf import settings

from routes import domains, matching
from routes.models import DestinationHost, Route, RouteTableVersion

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


def build_table(version: int | None = None) -> matching.RouteTable:
    """A fresh table from the database: one query for the routes, one for their hosts."""
    if version is None:
        version = _version()
    hosts: dict[int, list[domains.HostSpec]] = {}
    rows = DestinationHost.objects.order_by("route_id", "position", "id").values_list(
        "route_id", "host", "port", "priority", "a_only"
    )
    for route_id, host, port, priority, a_only in rows.iterator(chunk_size=5000):
        hosts.setdefault(route_id, []).append(domains.HostSpec(host, port, priority, a_only))
    entries = [
        matching.RouteEntry(
            id=pk,
            domain=domain,
            hosts=tuple(hosts.get(pk, ())),
            special=special,
            auth_profile_id=auth_profile_id,
            bounce_profile_id=bounce_profile_id,
            tls=tls,
            defer_on_4xx=defer_on_4xx,
        )
        for pk, domain, special, auth_profile_id, bounce_profile_id, tls, defer_on_4xx in Route.objects.values_list(
            "pk", "domain", "special", "auth_profile_id", "bounce_profile_id", "tls", "defer_on_4xx"
        ).iterator(chunk_size=5000)
    ]
    return matching.RouteTable(entries, version=version)


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
