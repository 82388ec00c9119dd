from __future__ import annotations

import pytest

from routes import auth_profiles, domains, importexport, services, snapshot
from routes.models import AuditEntry, Route
from tests.routes.helpers import make_route

pytestmark = pytest.mark.django_db


def test_create_validates_through_domains_and_writes_nothing_when_invalid():
    with pytest.raises(services.RouteInvalid) as info:
        make_route("ALL", "USEDNS")
    assert "USEDNS cannot be the destination" in info.value.problems.route[0]
    with pytest.raises(services.RouteInvalid) as info:
        services.route_create(
            data=services.RouteData(
                domain="example.com",
                destination=[domains.HostSpec("mx.example.com", 25), domains.HostSpec("mx.example.com", 2525)],
            ),
            actor="test",
        )
    assert info.value.problems.hosts == {
        1: [f"The host mx.example.com is already using the standard port. {domains.ONE_PORT_PER_HOST}"]
    }
    assert not Route.objects.exists() and not AuditEntry.objects.exists()
    assert services.current_version() == 0


def test_every_change_is_audited_and_bumps_the_version(alice):
    route = make_route("example.com", "mx1.example.com", actor=alice)
    assert services.current_version() == 1
    services.route_update(
        route_id=route.pk,
        data=services.RouteData(domain="example.com", destination=domains.parse_hosts("mx2.example.com/pri=5")),
        actor="cli:bob",
    )
    services.routes_delete(route_ids=[route.pk], actor=alice)
    services.routes_import(incoming={"a.example": domains.Special.DEVNULL}, mode="replace", actor=alice)
    services.routes_clear(actor=alice)
    entries = list(AuditEntry.objects.order_by("id"))
    assert [(e.action, e.actor_name) for e in entries] == [
        ("create", "alice"),
        ("update", "cli:bob"),
        ("delete", "alice"),
        ("import", "alice"),
        ("clear", "alice"),
    ]
    assert entries[1].before["destination"] == "mx1.example.com"
    assert entries[1].after["destination"] == "mx2.example.com/pri=5"
    assert entries[2].after is None and entries[4].before == {"a.example": "/dev/null"}
    assert services.current_version() == 5


def test_an_update_that_changes_nothing_is_not_audited():
    route = make_route("example.com", "mx1.example.com")
    services.route_update(
        route_id=route.pk,
        data=services.RouteData(domain="EXAMPLE.com", destination=domains.parse_hosts("mx1.example.com")),
        actor="test",
    )
    assert AuditEntry.objects.count() == 1


def test_import_replace_keeps_the_settings_of_changed_routes_and_merge_removes_nothing():
    profile = auth_profiles.save(profile_id=None, name="p", username="u", password="pw-123", actor="t")
    make_route("a.example", "old.example.net", auth_profile_id=profile.pk, tls="required")
    make_route("b.example", "mx.b.example")
    merged = services.routes_import(
        incoming={"a.example": (domains.HostSpec("new.example.net"),), "c.example": domains.Special.USEDNS},
        mode="merge",
        actor="t",
    )
    assert (merged.added, merged.changed, merged.removed) == (("c.example",), ("a.example",), ())
    a = Route.objects.get(domain="a.example")
    assert a.auth_profile == profile and a.tls == "required"
    replaced = services.routes_import(incoming={"c.example": domains.Special.USEDNS}, mode="replace", actor="t")
    assert sorted(replaced.removed) == ["a.example", "b.example"] and replaced.unchanged == 1
    assert services.table_text() == {"c.example": "USEDNS"}


def test_import_round_trip_through_the_text_format():
    text = "example.com mx1.example.com/pri=10, [10.0.0.9]:2525\n.example.com USEDNS\nALL smart.example.net:587\n"
    parsed = importexport.parse(text)
    services.routes_import(incoming=parsed.routes(), mode="replace", actor="t")
    again = importexport.parse(services.export_text())
    assert again.ok and again.routes() == parsed.routes()


def test_snapshot_follows_the_version_within_the_refresh(settings):
    settings.ESAROUTES_ROUTE_REFRESH = 0
    snapshot.invalidate()
    assert snapshot.current_table().lookup("u@example.com") is None
    make_route("example.com", "mx1.example.com:2525/pri=5")
    entry = snapshot.current_table().lookup("u@EXAMPLE.com")
    assert entry is not None and entry.hosts == (domains.HostSpec("mx1.example.com", 2525, 5),)
    settings.ESAROUTES_ROUTE_REFRESH = 3600
    table = snapshot.current_table()
    make_route(".example.com", "USEDNS")
    assert snapshot.current_table() is table  # trusted for ESAROUTES_ROUTE_REFRESH seconds
    assert snapshot.current_table(max_age=0).lookup("x.example.com").special == "usedns"


def test_snapshot_builds_with_three_queries(django_assert_num_queries):
    for i in range(30):
        make_route(f"d{i}.example", f"a{i}.example.net, b{i}.example.net/pri=10")
    with django_assert_num_queries(4):  # version, routes, hosts, destination controls
        table = snapshot.build_table()
    assert len(table) == 30 and table.lookup("x@d7.example").hosts[1].priority == 10


def test_a_large_import_takes_the_bulk_path_and_round_trips():
    text = "".join(
        f"d{i}.example mx{i}.example.net/pri={i % 3}, [10.0.{i // 250}.{i % 250 + 1}]:2525\n" for i in range(1200)
    )
    parsed = importexport.parse(text)
    summary = services.routes_import(incoming=parsed.routes(), mode="replace", actor="t")
    assert len(summary.added) == 1200
    assert importexport.parse(services.export_text()).routes() == parsed.routes()
    route = Route.objects.get(domain="d7.example")
    assert (route.tls, route.defer_on_4xx, route.auth_profile_id) == ("opportunistic", False, None)
    assert route.created_at is not None and route.hosts.count() == 2


def test_a_domain_has_one_route_per_sender_pattern(alice):
    make_route("example.com", "mx1.example.com")
    app = make_route("example.com", "mx-app.example.com", sender="App.Example")
    assert app.sender == "app.example"
    with pytest.raises(services.RouteInvalid, match=r"The value example\.com for the sender app\.example is already"):
        make_route("example.com", "other.example.com", sender="app.example")
    with pytest.raises(services.SenderInvalid, match="nothing before the @"):
        make_route("example.com", "other.example.com", sender="@app.example")
    entry = AuditEntry.objects.filter(object_repr="example.com sender=app.example").get()
    assert entry.after["sender"] == "app.example"
    table = snapshot.build_table()
    assert table.lookup("u@example.com", "x@app.example").id == app.pk
    assert table.lookup("u@example.com", "x@other.example").id != app.pk


def test_an_import_keeps_sender_routes_apart_and_round_trips():
    make_route("example.com", "mx1.example.com")
    make_route("example.com", "old.example.com", sender="<>", tls="required")
    text = "example.com mx1.example.com\nexample.com sender=<> new.example.com\nexample.com sender=app.example a.ex\n"
    summary = services.routes_import(incoming=importexport.parse(text).routes(), mode="replace", actor="t")
    assert summary.added == ("example.com sender=app.example",)
    assert summary.changed == ("example.com sender=<>",) and summary.unchanged == 1
    assert Route.objects.get(domain="example.com", sender="<>").tls == "required"  # the changed row is kept
    assert importexport.parse(services.export_text()).routes() == importexport.parse(text).routes()
    services.routes_import(
        incoming=importexport.parse("example.com mx1.example.com\n").routes(), mode="replace", actor="t"
    )
    assert list(Route.objects.values_list("sender", flat=True)) == [""]
