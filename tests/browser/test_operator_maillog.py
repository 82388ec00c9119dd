"""The mail log page in Chromium: it follows new lines live and filters by MID (the URL keeps the filter)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.operator_helpers import console_errors, login
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_log_follows_new_lines_and_filters_by_mid(page, live_server, dave):
    errors = console_errors(page)
    first = make_message(subject="first one")
    login(page, live_server, "dave")  # help desk: the mail log is theirs too
    page.goto(live_server.url + "/log/")
    lines = page.locator("#log-lines .line[data-id]")
    expect(page.locator("#log-lines")).to_contain_text(f"Start MID {first.pk}")
    before = lines.count()
    page.evaluate("window.__marker = 'no reload'")
    second = make_message(subject="second one")
    attempt(second, host="mx1.dest.test")
    expect(page.locator("#log-lines")).to_contain_text(f"Message finished MID {second.pk}", timeout=10_000)
    assert lines.count() > before
    ids = [int(i) for i in lines.evaluate_all("els => els.map(e => e.dataset.id)")]
    assert ids == sorted(ids) and len(ids) == len(set(ids))  # appended in order, never twice
    assert page.evaluate("window.__marker") == "no reload"

    page.fill("#id_mid", str(second.pk))
    page.click(".log-filters button[type=submit]")
    page.wait_for_url(re.compile(rf".*/log/\?.*mid={second.pk}.*"))
    expect(page.locator("#log-lines")).not_to_contain_text(f"Start MID {first.pk}")
    texts = lines.all_inner_texts()
    assert texts and all(f"MID {second.pk}" in t for t in texts)
    # the MID in a line is a link to its story
    page.locator("#log-lines .line a.id-link", has_text=str(second.pk)).first.click()
    page.wait_for_url(re.compile(rf".*/tracking/{second.pk}/$"))
    expect(page.locator("#message-subject")).to_have_text("second one")
    # the back button brings the filtered log back
    page.go_back()
    page.wait_for_url(re.compile(rf".*mid={second.pk}.*"))
    expect(page.locator("#id_mid")).to_have_value(str(second.pk))
    assert errors == []
