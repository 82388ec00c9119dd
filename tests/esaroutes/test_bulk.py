"""esaroutes.bulk: the one bulk insert (COPY / unnest on PostgreSQL, multi-row VALUES on SQLite)."""

from __future__ import annotations

import pytest
from django import db
from django.db import connection, transaction
from django.utils import timezone

from esaroutes import bulk
from routes.models import DestinationHost, Route

pytestmark = pytest.mark.django_db


def _now() -> object:
    return connection.ops.adapt_datetimefield_value(timezone.now())


def test_returning_gives_the_ids_in_row_order():
    insert = bulk.BulkInsert(
        Route, ("domain", "special", "tls", "defer_on_4xx", "created_at", "updated_at"), returning=True
    )
    now = _now()
    domains = [f"d{i}.test" for i in range(300)]
    ids = insert.run([(d, "", Route.TLS.OPPORTUNISTIC, False, now, now) for d in domains])
    assert dict(Route.objects.values_list("pk", "domain")) == dict(zip(ids, domains, strict=True))
    assert insert.run([]) == []


def test_columns_not_given_get_the_field_defaults_or_the_fixed_value():
    now = _now()
    [route_id] = bulk.BulkInsert(
        Route, ("domain", "created_at", "updated_at"), fixed={"tls": Route.TLS.REQUIRED}, returning=True
    ).run([("d.test", now, now)])
    assert (
        bulk.BulkInsert(DestinationHost, ("route_id", "host")).run([(route_id, "a.test"), (route_id, "b.test")]) == []
    )
    route = Route.objects.get()
    assert (route.special, route.tls, route.defer_on_4xx, route.auth_profile_id) == ("", "required", False, None)
    hosts = list(DestinationHost.objects.order_by("host").values_list("host", "a_only", "port", "priority", "position"))
    assert hosts == [("a.test", False, 25, 0, 0), ("b.test", False, 25, 0, 0)]


def test_texts_that_need_quoting_are_parameters_not_sql():
    now = _now()
    tricky = "x'); DROP TABLE routes_route; --"
    bulk.BulkInsert(Route, ("domain", "special", "created_at", "updated_at"), fixed={"tls": tricky[:16]}).run(
        [(tricky, "", now, now)]
    )
    assert Route.objects.get().domain == tricky


def test_inserts_together_are_all_or_nothing():
    now = _now()
    [route_id] = bulk.BulkInsert(Route, ("domain", "created_at", "updated_at"), returning=True).run(
        [("r.test", now, now)]
    )
    routes = bulk.BulkInsert(Route, ("domain", "created_at", "updated_at"))
    hosts = bulk.BulkInsert(DestinationHost, ("route_id", "host"), fixed={"port": 2525})
    bulk.insert_together(
        (routes, [("a.test", now, now), ("b.test", now, now)]), (hosts, []), (hosts, [(route_id, "h")])
    )
    assert sorted(Route.objects.values_list("domain", flat=True)) == ["a.test", "b.test", "r.test"]
    assert list(DestinationHost.objects.values_list("route_id", "host", "port")) == [(route_id, "h", 2525)]
    with pytest.raises(db.IntegrityError), transaction.atomic():
        bulk.insert_together((routes, [("c.test", now, now)]), (routes, [(None, now, now)]))
    assert not Route.objects.filter(domain="c.test").exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="ids from the sequence: PostgreSQL only")
def test_new_ids_come_from_the_sequence_in_order():
    now = _now()
    routes = bulk.BulkInsert(Route, ("id", "domain", "created_at", "updated_at"))
    ids = routes.new_ids(3)
    assert ids == sorted(ids) and len(set(ids)) == 3
    bulk.insert_together((routes, [(i, f"d{i}.test", now, now) for i in ids]))
    [after] = bulk.BulkInsert(Route, ("domain", "created_at", "updated_at"), returning=True).run([("z.test", now, now)])
    assert dict(Route.objects.values_list("pk", "domain")) == {**{i: f"d{i}.test" for i in ids}, after: "z.test"}
    assert after > max(ids)
