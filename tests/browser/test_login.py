from __future__ import annotations

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def test_login_through_the_real_page_shows_the_dashboard(page, live_server, alice):
    page.goto(live_server.url + "/")
    assert "/login/" in page.url
    page.fill("#id_username", "alice")
    page.fill("#id_password", "wrong password")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").is_visible()
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + "/")
    assert page.locator("h1").inner_text() == "Dashboard"
    assert page.evaluate("typeof htmx") == "object"  # htmx loaded from our static files


def test_admin_is_mounted_and_styled(logged_in, live_server):
    logged_in.goto(live_server.url + "/admin/")
    assert "esaroutes administration" in logged_in.content()
    assert logged_in.evaluate("getComputedStyle(document.body).fontFamily") != ""
