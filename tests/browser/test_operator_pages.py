"""Hosts, domain status and audit pages in Chromium: htmx filters keep the URL, a help desk user sees only
tracking and the mail log."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from delivery.models import HostStatus
from routes.models import AuditEntry
from tests.browser.operator_helpers import console_errors, login
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_hosts_filter_and_domain_status(logged_in, live_server):
    page = logged_in
    errors = console_errors(page)
    m = make_message(recipients=("a@dest.test",))
    attempt(m, host="mx1.dest.test")
    HostStatus.objects.create(host="mx.down.test", down_until=timezone.now() + timedelta(minutes=5), last_error="421")
    page.goto(live_server.url + "/hosts/")
    expect(page.locator("#host-table tbody tr")).to_have_count(2)
    page.check("#id_down")
    page.wait_for_url(re.compile(r".*/hosts/\?.*down=1.*"))
    expect(page.locator("#host-table tbody tr")).to_have_count(1)
    expect(page.locator("#host-table")).to_contain_text("mx.down.test:25")
    page.goto(live_server.url + "/hosts/domain/dest.test/")
    expect(page.locator("#hoststatus")).to_contain_text("Delivered Recipients     1")
    assert errors == []


def test_audit_page_searches(logged_in, live_server, alice):
    page = logged_in
    now = timezone.now()
    AuditEntry.objects.create(
        at=now, actor=alice, actor_name="alice", action="create", object_type="route", object_repr="example.com"
    )
    AuditEntry.objects.create(at=now, actor_name="cli", action="delete", object_type="route", object_repr="other.org")
    page.goto(live_server.url + "/audit/")
    expect(page.locator("#audit-table tbody tr")).to_have_count(2)
    page.fill("#id_q", "example")
    page.wait_for_url(re.compile(r".*/audit/\?.*q=example.*"))
    expect(page.locator("#audit-table tbody tr")).to_have_count(1)


def test_help_desk_sees_tracking_and_log_only(page, live_server, dave):
    login(page, live_server, "dave")
    page.wait_for_url(re.compile(r".*/tracking/$"))
    nav = page.locator("nav[aria-label=Main]")
    # the API tokens page is everyone's own: a token may do what its user's role may, here read the log
    expect(nav.get_by_role("link")).to_have_text(["Mail log", "Tracking", "API tokens"])
    response = page.goto(live_server.url + "/queue/")
    assert response is not None and response.status == 403
