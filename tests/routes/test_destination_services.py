"""routes.services' destination controls: validated at their fields, audited, the Default protected, the
route table version bumped and the snapshot carrying the entries."""

from __future__ import annotations

import dataclasses

import pytest
from django.core.exceptions import ValidationError

from routes import services, snapshot
from routes.models import AuditEntry, DefaultDestinationProtected, DestinationControl

pytestmark = pytest.mark.django_db


def make_destination(destination: str = "example.com", *, actor="test", **kw):
    return services.create_destination(data=services.DestinationData(destination=destination, **kw), actor=actor)


def test_the_default_entry_exists_after_migrate():
    default = DestinationControl.objects.get(destination=DestinationControl.DEFAULT)
    assert (default.max_connections, default.max_messages_per_connection) == (500, 50)
    assert (default.recipient_limit, default.limit_scope, default.ip_preference, default.tls) == (
        None,
        "domain",
        "ipv4-preferred",
        "preferred",
    )
    assert str(default) == "default" and default.is_default


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"max_connections": 0}, "max_connections", "from 1 to 1,000 (not 0)"),
        ({"max_connections": 1001}, "max_connections", "from 1 to 1,000 (not 1001)"),
        ({"max_messages_per_connection": 1001}, "max_messages_per_connection", "from 1 to 1,000"),
        ({"recipient_limit": 30}, "recipient_minutes", "counts over a number of minutes"),
        ({"recipient_limit": 30, "recipient_minutes": 61}, "recipient_minutes", "from 1 to 60 (not 61)"),
        ({"destination": "bad..name"}, "destination", '"bad..name" is not a valid domain'),
        ({"destination": "Default"}, "destination", "The Default entry already exists"),
        ({"tls": "maybe"}, "tls", '"maybe" is not a TLS setting'),
    ],
)
def test_create_refuses_each_bad_value_at_its_field_and_writes_nothing(data, field, message):
    version = services.current_version()
    with pytest.raises(services.DestinationInvalid) as info:
        services.create_destination(data=services.DestinationData(**{"destination": "example.com", **data}), actor="t")
    assert list(info.value.problems) == [field]
    assert message in info.value.problems[field][0]
    assert not DestinationControl.objects.exclude(destination="default").exists()
    assert not AuditEntry.objects.exists() and services.current_version() == version


def test_a_duplicate_is_refused_whatever_the_spelling():
    make_destination("bücher.example")
    with pytest.raises(services.DestinationInvalid) as info:
        make_destination("XN--BCHER-KVA.example.")
    assert info.value.problems == {
        "destination": ["bücher.example already has a destination control entry: edit that one."]
    }


def test_the_model_clean_runs_the_same_rules():
    control = DestinationControl(destination="Example.COM", max_connections=0, recipient_minutes=61)
    with pytest.raises(ValidationError) as info:
        control.full_clean()
    errors = info.value.message_dict
    assert "from 1 to 1,000 (not 0)" in errors["max_connections"][0]
    assert "from 1 to 60 (not 61)" in errors["recipient_minutes"][0]
    assert "how many recipients" in errors["recipient_limit"][0]
    assert control.destination == "example.com"
    default = DestinationControl.objects.get(destination="default")
    default.destination = "example.org"
    with pytest.raises(ValidationError) as info:
        default.full_clean()
    assert info.value.message_dict["destination"] == [
        "The Default entry keeps its name: add an entry for the destination instead."
    ]


def test_create_update_delete_are_audited_with_before_and_after_and_bump_the_version(alice):
    start = services.current_version()
    control = make_destination("example.com", actor=alice, max_connections=2)
    assert services.current_version() == start + 1
    services.update_destination(
        destination_id=control.pk,
        data=dataclasses.replace(
            services.DestinationData.of(control), recipient_limit=30, recipient_minutes=1, limit_scope="ip"
        ),
        actor="cli:bob",
    )
    assert services.current_version() == start + 2
    services.update_destination(
        destination_id=control.pk,
        data=dataclasses.replace(
            services.DestinationData.of(control), recipient_limit=30, recipient_minutes=1, limit_scope="ip"
        ),
        actor=alice,
    )  # the same again: no change, no entry, no bump
    assert services.current_version() == start + 2
    assert services.delete_destination(destination_id=control.pk, actor=alice) == "example.com"
    assert services.current_version() == start + 3
    entries = list(AuditEntry.objects.order_by("id"))
    assert [(e.action, e.object_type, e.object_repr, e.actor_name) for e in entries] == [
        ("create", "destination control", "example.com", "alice"),
        ("update", "destination control", "example.com", "cli:bob"),
        ("delete", "destination control", "example.com", "alice"),
    ]
    assert entries[0].after["max_connections"] == 2 and entries[0].before is None
    assert (entries[1].before["recipient_limit"], entries[1].after["recipient_limit"]) == (None, 30)
    assert entries[1].after["limit_scope"] == "ip"
    assert entries[2].before["destination"] == "example.com" and entries[2].after is None


def test_the_default_cannot_be_deleted_or_renamed():
    default = DestinationControl.objects.get(destination="default")
    with pytest.raises(DefaultDestinationProtected, match="cannot be deleted"):
        services.delete_destination(destination_id=default.pk, actor="test")
    with pytest.raises(DefaultDestinationProtected):
        default.delete()
    with pytest.raises(DefaultDestinationProtected):
        DestinationControl.objects.all().delete()
    with pytest.raises(services.DestinationInvalid) as info:
        services.update_destination(
            destination_id=default.pk,
            data=dataclasses.replace(services.DestinationData.of(default), destination="example.com"),
            actor="test",
        )
    assert "keeps its name" in info.value.problems["destination"][0]
    assert DestinationControl.objects.filter(destination="default").exists()
    assert not AuditEntry.objects.exists()


def test_the_snapshot_carries_the_destinations_and_follows_a_change():
    make_destination(".example.com", max_connections=3, tls="required")
    table = snapshot.build_table()
    assert table.destinations.lookup("a.example.com").max_connections == 3
    assert table.destinations.lookup("a.example.com").tls == "required"
    assert table.destinations.lookup("other.test").destination == "default"
    snapshot.invalidate()
    assert snapshot.current_table(max_age=0).destinations.lookup("a.example.com").max_connections == 3
    default = DestinationControl.objects.get(destination="default")
    services.update_destination(
        destination_id=default.pk,
        data=dataclasses.replace(services.DestinationData.of(default), max_connections=7),
        actor="test",
    )
    assert snapshot.current_table(max_age=0).destinations.lookup("other.test").max_connections == 7


def test_a_missing_default_row_still_gives_the_builtin_default():
    DestinationControl.objects.filter(destination="default")._raw_delete(DestinationControl.objects.db)
    assert snapshot.build_table().destinations.lookup("example.com").max_connections == 500
    assert services.default_destination().is_default


def test_the_audit_page_names_the_fields_of_a_destination_change():
    from routes import audit

    control = make_destination("example.com")
    services.update_destination(
        destination_id=control.pk,
        data=dataclasses.replace(services.DestinationData.of(control), max_connections=9),
        actor="test",
    )
    entry = AuditEntry.objects.get(action="update")
    assert [(c.field, c.before, c.after) for c in audit.changes(entry)] == [("Concurrent connections", "500", "9")]
    assert audit.action_label(entry) == "Update destination control"
