"""Queue actions in Chromium: bounce a queued message from the queue page (confirmed) and watch it leave the
list; a read-only operator sees no action."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from delivery.models import HostStatus, Recipient
from tests.browser.operator_helpers import console_errors, login
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_bounce_a_queued_message_from_the_queue_page(logged_in, live_server):
    page = logged_in
    errors = console_errors(page)
    keep = make_message(recipients=("stay@other.test",), subject="keep me")
    gone = make_message(recipients=("x@dest.test",), subject="bounce me")
    Recipient.objects.update(next_attempt_at=timezone.now() + timedelta(hours=1))
    page.goto(live_server.url + "/queue/")
    rows = page.locator("#queue-recipients tbody tr")
    expect(rows).to_have_count(2)
    page.get_by_label(f"Select MID {gone.pk} RID 0").check()
    page.click("#bounce-selected")
    expect(page.locator("#confirm-title")).to_have_text("Bounce 1 recipient of 1 message?")
    expect(page.locator("#confirm-recipients")).to_contain_text("x@dest.test")
    page.click("#confirm-action")
    page.wait_for_url(re.compile(r".*/queue/$"))
    expect(page.locator(".messages")).to_contain_text("1 recipient bounced.")
    expect(page.locator(f'#queue-recipients tr[data-mid="{gone.pk}"]')).to_have_count(0)
    expect(page.locator(f'#queue-recipients tr[data-mid="{keep.pk}"]')).to_have_count(1)
    assert Recipient.objects.get(message=gone).state == Recipient.State.BOUNCED
    assert errors == []


def test_retry_now_on_the_hosts_page(logged_in, live_server):
    page = logged_in
    errors = console_errors(page)
    m = make_message(recipients=("a@dest.test",))
    attempt(m, host="mx1.dest.test", code=421, reply="4.3.2 closing", outcome="delayed")
    HostStatus.objects.update(down_until=timezone.now() + timedelta(minutes=5))
    page.goto(live_server.url + "/hosts/")
    row = page.locator('tr[data-host="mx1.dest.test:25"]')
    expect(row).to_contain_text("down")
    row.get_by_role("button", name="Retry now").click()
    expect(row).to_contain_text("marked up")
    expect(row.locator(".up")).to_have_text("up")
    assert HostStatus.objects.get(host="mx1.dest.test").down_until is None
    assert errors == []


def test_read_only_operator_sees_no_queue_action(page, live_server, carol):
    m = make_message(recipients=("x@dest.test",))
    login(page, live_server, "carol")
    page.goto(live_server.url + "/queue/")
    expect(page.locator("#queue-recipients")).to_contain_text("x@dest.test")
    expect(page.get_by_role("button")).to_have_text(["Log out"])
    page.goto(live_server.url + f"/tracking/{m.pk}/")
    expect(page.locator("#message-actions")).to_have_count(0)
