"""Message tracking in Chromium: find a message by recipient and read its failover story."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from delivery.models import DeliveryAttempt
from tests.browser.operator_helpers import console_errors
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_find_by_recipient_and_see_the_failover_story(logged_in, live_server):
    page = logged_in
    errors = console_errors(page)
    m = make_message(recipients=("bo@dest.test",), subject="Failover")
    make_message(recipients=("someone@else.test",), subject="Noise")
    attempt(
        m, host="mx1.dest.test", code=None, reply="ConnectionRefusedError", outcome=DeliveryAttempt.Outcome.NEXT_HOST
    )
    attempt(m, host="mx2.dest.test", code=451, reply="4.3.0 try later", outcome=DeliveryAttempt.Outcome.NEXT_HOST)
    attempt(m, host="mx3.dest.test")
    page.goto(live_server.url + "/tracking/")
    page.fill("#id_recipient", "bo@dest")
    page.click(".tracking-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/tracking/\?.*recipient=bo%40dest.*"))
    rows = page.locator("#tracking-table tbody tr[data-mid]")
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link", name="Show details").click()
    page.wait_for_url(re.compile(rf".*/tracking/{m.pk}/$"))
    attempts = page.locator("#attempts tbody tr")
    expect(attempts).to_have_count(3)
    expect(attempts.nth(0)).to_contain_text("mx1.dest.test")
    expect(attempts.nth(0)).to_contain_text("Failed over to the next host")
    expect(attempts.nth(1)).to_contain_text("451 4.3.0 try later")
    expect(attempts.nth(2)).to_contain_text("mx3.dest.test")
    expect(attempts.nth(2)).to_contain_text("Delivered")
    expect(page.locator("#recipients")).to_contain_text("Delivered")
    expect(page.locator("#message-lines")).to_contain_text(f"Message finished MID {m.pk}")
    expect(page.locator("#headers")).to_contain_text("Subject: Failover")
    assert errors == []
