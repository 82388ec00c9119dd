"""The routes pages in Chromium: the htmx host rows, field errors, editing, import preview, export, delete."""

from __future__ import annotations

import re

import pytest

from routes import services
from routes.models import Route
from tests.routes.helpers import make_route

pytestmark = pytest.mark.django_db(transaction=True)


def _console_errors(page):
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return errors


def test_create_a_route_with_three_hosts_adding_rows_with_htmx(logged_in, live_server):
    page = logged_in
    errors = _console_errors(page)
    page.goto(live_server.url + "/routes/")
    page.click("text=Add route…")
    page.wait_for_url(re.compile(r".*/routes/add/$"))
    page.evaluate("window.__marker = 'same page'")  # gone if "Add row" reloaded the page
    page.fill("#id_domain", "bücher.example")
    page.fill("#id_hosts-0-priority", "10")
    page.fill("#id_hosts-0-destination", "mx1.example.com")
    page.click("#add-row")
    page.wait_for_selector("#id_hosts-1-destination")
    page.click("#add-row")
    page.wait_for_selector("#id_hosts-2-destination")
    assert page.input_value("#id_hosts-TOTAL_FORMS") == "3"
    assert page.evaluate("window.__marker") == "same page"
    page.fill("#id_hosts-1-priority", "10")
    page.fill("#id_hosts-1-destination", "mx2.example.com")
    page.fill("#id_hosts-1-port", "2525")
    page.fill("#id_hosts-2-priority", "20")
    page.fill("#id_hosts-2-destination", "[relay.example.net]")
    page.click("#route-form button[type=submit]")
    page.wait_for_url(live_server.url + "/routes/")
    assert "Route bücher.example added." in page.content()
    assert page.locator("#route-table").get_by_text("bücher.example").is_visible()
    route = Route.objects.get()
    assert route.domain == "xn--bcher-kva.example"
    assert services.route_state(route)["destination"] == (
        "mx1.example.com/pri=10, mx2.example.com:2525/pri=10, [relay.example.net]/pri=20"
    )
    assert errors == []


def test_one_submit_flags_all_four_bad_fields_at_their_fields(logged_in, live_server):
    page = logged_in
    page.goto(live_server.url + "/routes/add/")
    page.fill("#id_hosts-0-priority", "-1")
    page.fill("#id_hosts-0-destination", "bad_host..name!")
    page.fill("#id_hosts-0-port", "70000")
    page.click("#route-form button[type=submit]")
    page.wait_for_selector("#id_domain[aria-invalid=true]")
    for field in ("#id_hosts-0-priority", "#id_hosts-0-destination", "#id_hosts-0-port"):
        assert page.get_attribute(field, "aria-invalid") == "true"
    errors = page.locator("#route-form .errorlist li").all_inner_texts()
    assert "This field is required." in errors and "Priority must be from 0 to 65535" in errors
    assert "Port must be from 1 to 65535" in errors
    assert any(e.startswith('"bad_host..name!": not a valid host name') for e in errors)
    assert page.input_value("#id_hosts-0-destination") == "bad_host..name!"
    assert not Route.objects.exists()


def test_the_route_tester_refuses_text_that_is_not_an_address_at_the_field(logged_in, live_server):
    page = logged_in
    page.goto(live_server.url + "/routes/test/")
    page.fill("#id_address", "not-an-address")
    page.click("#test-form button[type=submit]")
    page.wait_for_selector("#id_address[aria-invalid=true]")
    assert "is not an email address" in page.inner_text("#address-errors")
    page.fill("#id_address", "user@example.com")
    page.click("#test-form button[type=submit]")
    page.wait_for_selector("#address-errors", state="detached")
    assert "No route matches" in page.inner_text("#test-result")


def test_a_bad_port_shows_at_the_field_and_keeps_what_was_typed(logged_in, live_server):
    page = logged_in
    page.goto(live_server.url + "/routes/add/")
    page.fill("#id_domain", "example.com")
    page.fill("#id_hosts-0-destination", "mx1.example.com")
    page.fill("#id_hosts-0-port", "99999")
    page.click("#route-form button[type=submit]")
    error = page.locator("#id_hosts-0-port ~ ul.errorlist")
    error.wait_for()
    assert "Port must be from 1 to 65535" in error.inner_text()
    assert page.get_attribute("#id_hosts-0-port", "aria-invalid") == "true"
    assert page.input_value("#id_hosts-0-port") == "99999"
    assert page.input_value("#id_hosts-0-destination") == "mx1.example.com"
    assert page.input_value("#id_domain") == "example.com"
    assert "/routes/add/" in page.url
    assert not Route.objects.exists()


def test_edit_a_priority(logged_in, live_server):
    route = make_route("example.com", "mx1.example.com/pri=10, mx2.example.com/pri=20")
    page = logged_in
    page.goto(live_server.url + "/routes/")
    page.click("#route-table >> text=example.com")
    page.wait_for_url(live_server.url + f"/routes/{route.pk}/")
    assert page.input_value("#id_hosts-1-priority") == "20"
    page.fill("#id_hosts-1-priority", "5")
    page.click("#route-form button[type=submit]")
    page.wait_for_url(live_server.url + "/routes/")
    route.refresh_from_db()
    assert services.route_state(route)["destination"] == "mx1.example.com/pri=10, mx2.example.com/pri=5"


def test_search_as_you_type(logged_in, live_server):
    make_route("alpha.example", "mx.alpha.example")
    make_route("beta.example", "relay.gamma.test")
    page = logged_in
    page.goto(live_server.url + "/routes/")
    page.fill("#id_q", "gamma")
    page.wait_for_url(re.compile(r".*q=gamma.*"))
    table = page.locator("#route-table")
    table.get_by_text("1 route matching").wait_for()
    assert "beta.example" in table.inner_text() and "alpha.example" not in table.inner_text()


def test_import_with_a_preview_then_export(logged_in, live_server, tmp_path):
    make_route("gone.example", "mx.gone.example")
    source = tmp_path / "routes.txt"
    source.write_text("example.com mx1.example.com/pri=10, mx2.example.com/pri=20\n.example.com USEDNS\n")
    page = logged_in
    page.goto(live_server.url + "/routes/import/")
    page.set_input_files("#id_file", str(source))
    page.click("button:has-text('Preview')")
    preview = page.locator("#import-preview")
    preview.get_by_text("2 to add").wait_for()
    assert "1 to remove" in preview.inner_text() and "gone.example" in preview.inner_text()
    assert Route.objects.filter(domain="gone.example").exists()  # nothing changed yet
    page.click("#confirm-import")
    page.wait_for_url(live_server.url + "/routes/")
    assert "Imported (replace): 2 added, 0 changed, 1 removed" in page.content()
    assert services.table_text() == {
        "example.com": "mx1.example.com/pri=10, mx2.example.com/pri=20",
        ".example.com": "USEDNS",
    }
    with page.expect_download() as info:
        page.click("text=Export routes")
    exported = tmp_path / "export.txt"
    info.value.save_as(exported)
    lines = [line for line in exported.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["example.com   mx1.example.com/pri=10, mx2.example.com/pri=20", ".example.com  USEDNS"]


def test_a_bad_import_lists_the_lines_and_changes_nothing(logged_in, live_server, tmp_path):
    source = tmp_path / "bad.txt"
    source.write_text("ok.example mx.ok.example\nbad_domain mx.example.com\n")
    page = logged_in
    page.goto(live_server.url + "/routes/import/")
    page.set_input_files("#id_file", str(source))
    page.click("button:has-text('Preview')")
    page.locator("#import-preview").get_by_text("line 2:").wait_for()
    assert not Route.objects.exists()


def test_delete_routes_with_confirmation(logged_in, live_server):
    a = make_route("a.example")
    b = make_route("b.example")
    make_route("c.example")
    page = logged_in
    page.goto(live_server.url + "/routes/")
    page.check(f"input[name=ids][value='{a.pk}']")
    page.check(f"input[name=ids][value='{b.pk}']")
    page.click("text=Delete selected…")
    page.get_by_text("Delete 2 routes?").wait_for()
    assert Route.objects.count() == 3
    page.click("button:has-text('Delete')")
    page.wait_for_url(live_server.url + "/routes/")
    assert "Deleted 2 routes." in page.content()
    assert list(Route.objects.values_list("domain", flat=True)) == ["c.example"]
