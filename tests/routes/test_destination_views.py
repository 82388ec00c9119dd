"""The destination controls page and admin: each bad value at its field (422), the Default listed first and never
deleted, every change through the audited services."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from routes import services
from routes.models import AuditEntry, DestinationControl

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_alice(client, alice):
    client.force_login(alice)
    return client


def post(**overrides: Any) -> dict[str, Any]:
    data = {
        "destination": "example.com",
        "max_connections": "500",
        "max_messages_per_connection": "50",
        "recipient_limit": "",
        "recipient_minutes": "",
        "limit_scope": "domain",
        "ip_preference": "ipv4-preferred",
        "tls": "preferred",
        "bounce_profile": "",
    }
    data.update(overrides)
    return data


def test_the_list_shows_the_default_first(client_alice):
    services.create_destination(data=services.DestinationData(destination="aaa.example"), actor="test")
    page = client_alice.get(reverse("routes:destination-list")).content.decode()
    assert page.index(">Default<") < page.index("aaa.example")
    assert "Destination controls" in page


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"max_connections": "0"}, "max_connections", "from 1 to 1,000 (not 0)"),
        ({"max_connections": "1001"}, "max_connections", "from 1 to 1,000 (not 1001)"),
        ({"max_connections": "many"}, "max_connections", "Enter a whole number."),
        ({"recipient_limit": "30"}, "recipient_minutes", "counts over a number of minutes"),
        ({"recipient_limit": "30", "recipient_minutes": "61"}, "recipient_minutes", "from 1 to 60 (not 61)"),
        ({"destination": "bad..name"}, "destination", '"bad..name" is not a valid domain'),
        ({"destination": "default"}, "destination", "The Default entry already exists"),
        ({"tls": "on"}, "tls", "Select a valid choice."),
    ],
)
def test_each_bad_value_is_shown_at_its_field(client_alice, overrides, field, message):
    response = client_alice.post(reverse("routes:destination-add"), post(**overrides), headers={"HX-Request": "true"})
    assert response.status_code == 422
    form = response.context["form"]
    assert message in " ".join(form.errors[field])
    assert set(form.errors) == {field}
    assert not AuditEntry.objects.exists()


def test_one_submit_flags_every_bad_field(client_alice):
    response = client_alice.post(
        reverse("routes:destination-add"),
        post(destination="bad..name", max_connections="0", recipient_minutes="61", max_messages_per_connection="x"),
    )
    assert response.status_code == 422
    assert set(response.context["form"].errors) == {
        "destination",
        "max_connections",
        "recipient_minutes",
        "recipient_limit",
        "max_messages_per_connection",
    }


def test_a_duplicate_is_refused_at_the_destination(client_alice):
    services.create_destination(data=services.DestinationData(destination="example.com"), actor="test")
    response = client_alice.post(reverse("routes:destination-add"), post(destination="EXAMPLE.com"))
    assert response.status_code == 422
    assert (
        response.context["form"].errors["destination"]
        == ["Example.com already has a destination control entry: edit that one."]
        or "already has a destination control entry" in response.context["form"].errors["destination"][0]
    )


def test_add_edit_delete_are_audited(client_alice):
    response = client_alice.post(reverse("routes:destination-add"), post(destination="Bücher.example"))
    assert response.status_code == 302
    control = DestinationControl.objects.get(destination="xn--bcher-kva.example")
    url = reverse("routes:destination-edit", args=[control.pk])
    assert "bücher.example" in client_alice.get(url).content.decode()
    response = client_alice.post(url, post(destination="bücher.example", recipient_limit="30", recipient_minutes="1"))
    assert response.status_code == 302
    delete = reverse("routes:destination-delete", args=[control.pk])
    assert 'button type="submit" class="danger"' in client_alice.get(delete).content.decode()
    assert client_alice.post(delete).status_code == 302
    assert [(e.action, e.actor_name) for e in AuditEntry.objects.order_by("id")] == [
        ("create", "alice"),
        ("update", "alice"),
        ("delete", "alice"),
    ]


def test_the_default_is_edited_without_its_name_and_never_deleted(client_alice):
    default = services.default_destination()
    url = reverse("routes:destination-edit", args=[default.pk])
    response = client_alice.post(url, post(destination="hijack.example", max_connections="100"))
    assert response.status_code == 302
    default.refresh_from_db()
    assert (default.destination, default.max_connections) == ("default", 100)
    response = client_alice.post(reverse("routes:destination-delete", args=[default.pk]), follow=True)
    assert "it cannot be deleted" in response.content.decode()
    assert DestinationControl.objects.filter(pk=default.pk).exists()


def test_the_admin_validates_through_the_model_and_never_deletes_the_default(client_alice):
    add = reverse("admin:routes_destinationcontrol_add")
    response = client_alice.post(add, post(destination="bad..name", max_connections="0"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "is not a valid domain" in errors["destination"][0]
    assert "(not 0)" in errors["max_connections"][0]
    response = client_alice.post(add, post(destination="Example.com", max_connections="3"))
    assert response.status_code == 302
    control = DestinationControl.objects.get(destination="example.com")
    assert AuditEntry.objects.get().object_type == "destination control"
    default = services.default_destination()
    response = client_alice.get(reverse("admin:routes_destinationcontrol_delete", args=[default.pk]))
    assert response.status_code == 403
    changelist = reverse("admin:routes_destinationcontrol_changelist")
    selected = {"action": "delete_selected", "_selected_action": [default.pk, control.pk], "post": "yes"}
    assert client_alice.post(changelist, selected).status_code == 403  # a selection with the Default: refused
    assert DestinationControl.objects.count() == 2
    selected["_selected_action"] = [control.pk]
    assert client_alice.post(changelist, selected).status_code == 302
    assert list(DestinationControl.objects.values_list("destination", flat=True)) == ["default"]
    assert AuditEntry.objects.filter(action="delete", object_repr="example.com").exists()
