"""The destination controls page in Chromium: add an entry (a bad value flagged at its field first), edit it,
edit the Default, delete with confirmation; the Default offers no delete."""

from __future__ import annotations

import re

import pytest

from routes import services
from routes.models import AuditEntry, DestinationControl

pytestmark = pytest.mark.django_db(transaction=True)


def test_add_then_edit_a_destination(logged_in, live_server):
    page = logged_in
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    services.default_destination()
    page.goto(live_server.url + "/routes/")
    page.click("nav >> text=Destination controls")
    page.wait_for_url(re.compile(r".*/routes/destinations/$"))
    assert page.locator("#destination-table tbody.default-route").get_by_text("Default").is_visible()
    page.click("text=Add destination…")
    page.wait_for_url(re.compile(r".*/routes/destinations/add/$"))
    page.fill("#id_destination", "bad..name")
    page.fill("#id_max_connections", "1001")
    page.fill("#id_recipient_limit", "30")
    page.click("#destination-form button[type=submit]")
    page.locator("#destination-errors").wait_for()
    assert "is not a valid domain" in page.inner_text("#destination-errors")
    assert "from 1 to 1,000 (not 1001)" in page.inner_text("#max_connections-errors")
    assert "counts over a number of minutes" in page.inner_text("#recipient_minutes-errors")
    assert page.input_value("#id_destination") == "bad..name"  # what was typed stays
    page.fill("#id_destination", "Bücher.example")
    page.fill("#id_max_connections", "2")
    page.fill("#id_recipient_minutes", "1")
    page.check("input[name=limit_scope][value=ip]")
    page.select_option("#id_tls", "required")
    page.click("#destination-form button[type=submit]")
    page.wait_for_url(live_server.url + "/routes/destinations/")
    assert "Destination bücher.example added." in page.content()
    control = DestinationControl.objects.get(destination="xn--bcher-kva.example")
    assert (control.max_connections, control.recipient_limit, control.recipient_minutes) == (2, 30, 1)
    assert (control.limit_scope, control.tls) == ("ip", "required")

    page.click(f"#destination-{control.pk} >> text=Edit")
    page.wait_for_url(re.compile(rf".*/routes/destinations/{control.pk}/$"))
    page.fill("#id_recipient_minutes", "61")
    page.click("#destination-form button[type=submit]")
    page.locator("#recipient_minutes-errors").wait_for()
    assert "from 1 to 60 (not 61)" in page.inner_text("#recipient_minutes-errors")
    page.fill("#id_recipient_minutes", "5")
    page.fill("#id_max_messages_per_connection", "10")
    page.click("#destination-form button[type=submit]")
    page.wait_for_url(live_server.url + "/routes/destinations/")
    control.refresh_from_db()
    assert (control.recipient_minutes, control.max_messages_per_connection) == (5, 10)
    update = AuditEntry.objects.filter(action="update", object_type="destination control").get()
    assert (update.before["recipient_minutes"], update.after["recipient_minutes"]) == (1, 5)
    assert update.actor_name == "alice"
    assert [e for e in errors if "status of 422" not in e] == []  # 422: the invalid form's answer, as intended


def test_edit_the_default_and_delete_with_confirmation(logged_in, live_server):
    page = logged_in
    default = services.default_destination()
    other = services.create_destination(data=services.DestinationData(destination="example.com"), actor="test")
    page.goto(live_server.url + "/routes/destinations/")
    assert page.locator(f"#destination-{default.pk}").get_by_text("Delete…").count() == 0
    page.click(f"#destination-{default.pk} >> text=Edit")
    assert page.locator("#id_destination").count() == 0  # the Default keeps its name
    page.fill("#id_max_connections", "100")
    page.click("#destination-form button[type=submit]")
    page.wait_for_url(live_server.url + "/routes/destinations/")
    assert DestinationControl.objects.get(pk=default.pk).max_connections == 100

    page.click(f"#destination-{other.pk} >> text=Delete…")
    page.wait_for_url(re.compile(rf".*/routes/destinations/{other.pk}/delete/$"))
    assert page.locator("button.danger", has_text="Delete").is_visible()
    page.click("button.danger")
    page.wait_for_url(live_server.url + "/routes/destinations/")
    assert "Destination example.com deleted." in page.content()
    assert not DestinationControl.objects.filter(pk=other.pk).exists()

    page.goto(live_server.url + f"/routes/destinations/{default.pk}/delete/")
    assert "it cannot be deleted" in page.content()
    assert DestinationControl.objects.filter(pk=default.pk).exists()


def test_the_domain_page_shows_the_slots_in_use_per_destination_ip(logged_in, live_server):
    from delivery import slots
    from tests.support.messages import make_message

    slots.flush()
    make_message(recipients=("a@dest.test",))
    services.create_destination(
        data=services.DestinationData(destination="dest.test", max_connections=2, limit_scope="ip"), actor="test"
    )
    assert slots.acquire("dest.test|127.0.0.2", "w:1", 2) and slots.acquire("dest.test|::1", "w:2", 2)
    try:
        page = logged_in
        page.goto(live_server.url + "/hosts/domain/dest.test/")
        row = page.locator("#destination-control tr", has_text="Connections").first
        assert row.inner_text().split("\t")[-1].startswith("2 in use now, of at most 2 per destination IP")
        assert page.inner_text("#connections-by-ip") == "· 127.0.0.2: 1, ::1: 1"
    finally:
        slots.flush()
