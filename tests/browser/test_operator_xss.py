"""A Subject of <script>alert(1)</script> is shown as text on every page, and never runs."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.operator_helpers import console_errors
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db(transaction=True)

EVIL = "<script>alert(1)</script>"


def test_html_in_a_subject_is_text_everywhere(logged_in, live_server):
    page = logged_in
    errors = console_errors(page)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    m = make_message(subject=EVIL, recipients=("x@dest.test",), message_id="<a<b>@x>")
    attempt(m, host="mx1.dest.test", code=451, reply="<b>busy</b>", outcome="delayed")
    pages = {
        "/": "#dashboard-lines",
        "/log/": "#log-lines",
        f"/tracking/?subject={EVIL}": "#tracking-table",
        f"/tracking/{m.pk}/": "#message-subject",
        "/queue/": "#queue-recipients",
    }
    for path, region in pages.items():
        page.goto(live_server.url + path)
        if path != "/queue/":
            expect(page.locator(region)).to_contain_text("<script>alert(1)</script>")
        else:
            expect(page.locator(region)).to_contain_text("<b>busy</b>")
        assert page.locator(f"{region} script").count() == 0, path
        assert page.locator(f"{region} b").count() == 0, path
    page.goto(live_server.url + f"/tracking/{m.pk}/")
    expect(page.locator("#headers")).to_contain_text("Subject: <script>alert(1)</script>")
    assert dialogs == []
    assert errors == []
