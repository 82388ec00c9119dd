"""The dashboard in Chromium: it updates by itself (htmx polling) when a message is delivered."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.operator_helpers import console_errors
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_dashboard_updates_by_itself_after_a_delivery(logged_in, live_server):
    page = logged_in
    errors = console_errors(page)
    page.goto(live_server.url + "/")
    delivered = page.locator('tr[data-counter="delivered"] td[data-window="total"]')
    expect(delivered).to_have_text("0")
    page.evaluate("window.__marker = 'no reload'")
    m = make_message(recipients=("user@dest.test",), subject="Polling works")
    attempt(m, host="mx1.dest.test")
    expect(delivered).to_have_text("1", timeout=10_000)
    expect(page.locator('#destinations tr[data-domain="dest.test"] td[data-col="delivered"]')).to_have_text("1")
    expect(page.locator("#dashboard-lines")).to_contain_text(f"Message finished MID {m.pk}")
    expect(page.locator("figure.chart rect.delivered")).to_have_count(1)
    assert page.evaluate("window.__marker") == "no reload"
    # each count links to tracking, pre-filtered
    page.click('#destinations tr[data-domain="dest.test"] td[data-col="delivered"] a')
    page.wait_for_url(re.compile(r".*/tracking/\?domain=dest.test&outcome=delivered.*"))
    expect(page.locator(f'#tracking-table tr[data-mid="{m.pk}"]')).to_be_visible()
    assert errors == []
