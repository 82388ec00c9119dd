from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery.models import DeliveryAttempt
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db
Outcome = DeliveryAttempt.Outcome


def mids(response) -> set[int]:
    return {int(m) for m in re.findall(r'<tr data-mid="(\d+)"', response.content.decode())}


@pytest.fixture
def mail():
    now = timezone.now()
    delivered = make_message(
        sender="ann@corp.test", recipients=("bo@dest.test",), subject="Quarterly report", message_id="<q1@corp.test>"
    )
    attempt(delivered, host="mx1.dest.test", code=451, reply="4.3.0 busy", outcome=Outcome.NEXT_HOST)
    attempt(delivered, host="mx2.dest.test")
    bounced = make_message(sender="cy@corp.test", recipients=("nobody@other.test",), subject="Invoice")
    attempt(bounced, host="mx.other.test", code=550, reply="5.1.1 unknown user", outcome=Outcome.BOUNCED)
    queued = make_message(
        sender="", recipients=("late@dest.test",), subject="Delivery Status Notification", bounce_of=bounced
    )
    attempt(queued, host="mx1.dest.test", code=421, reply="4.7.0 later", outcome=Outcome.DELAYED)
    old = make_message(
        sender="ann@corp.test",
        recipients=("bo@dest.test",),
        subject="Quarterly report (old)",
        at=now - timedelta(days=30),
    )
    return {"delivered": delivered.pk, "bounced": bounced.pk, "queued": queued.pk, "old": old.pk}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("recipient=bo@dest", {"delivered"}),
        ("recipient=bo@dest.test&recipient_how=is", {"delivered"}),
        ("recipient=late&recipient_how=begins", {"queued"}),
        ("sender=ann@&sender_how=begins", {"delivered"}),
        ("sender_how=empty", {"queued"}),
        ("subject=invoice", {"bounced"}),
        ("message_id=q1@corp.test", {"delivered"}),
        ("message_id=<q1@corp.test>", {"delivered"}),
        ("outcome=delivered", {"delivered"}),
        ("outcome=hard_bounced", {"bounced"}),
        ("outcome=queued", {"queued"}),
        ("outcome=soft_bounced", {"delivered", "queued"}),
        ("outcome=delivered&outcome=hard_bounced", {"delivered", "bounced"}),
        ("domain=other.test", {"bounced"}),
        ("sender=ann&received=all", {"delivered", "old"}),
        ("sender=ann&received=day", {"delivered"}),
    ],
)
def test_search(as_user, mail, query, expected):
    response = as_user("dave").get("/tracking/?" + query)
    assert response.status_code == 200
    assert mids(response) == {mail[k] for k in expected}


def test_search_by_mid_ignores_the_default_time_window(as_user, mail):
    assert mids(as_user("dave").get(f"/tracking/?mid={mail['old']}")) == {mail["old"]}


def test_custom_range(as_user, mail):
    since = (timezone.now() - timedelta(days=31)).strftime("%Y-%m-%dT%H:%M")
    until = (timezone.now() - timedelta(days=29)).strftime("%Y-%m-%dT%H:%M")
    response = as_user("dave").get(f"/tracking/?received=custom&since={since}&until={until}")
    assert mids(response) == {mail["old"]}


def test_results_paginate(as_user):
    for i in range(55):
        make_message(subject=f"bulk {i}")
    client = as_user("carol")
    first = client.get("/tracking/?subject=bulk")
    assert len(mids(first)) == 50 and b"Page 1 of 2" in first.content
    second = client.get("/tracking/?subject=bulk&page=2")
    assert len(mids(second)) == 5 and not mids(first) & mids(second)


def test_htmx_search_returns_the_results_partial(as_user, mail):
    response = as_user("dave").get("/tracking/?recipient=bo", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="tracking-results">') and "<html" not in body


def test_message_page_tells_the_failover_story(as_user, mail):
    body = as_user("dave").get(f"/tracking/{mail['delivered']}/").content.decode()
    assert "mx1.dest.test" in body and "4.3.0 busy" in body and "Failed over to the next host" in body
    assert "mx2.dest.test" in body and "2.0.0 Ok: queued" in body
    assert "Message done DCID" in body and "Subject: Quarterly report" in body  # log lines and headers


def test_message_page_lists_generated_bounces_and_links_back(as_user, mail):
    client = as_user("dave")
    assert f'href="/tracking/{mail["queued"]}/"' in client.get(f"/tracking/{mail['bounced']}/").content.decode()
    assert f'href="/tracking/{mail["bounced"]}/"' in client.get(f"/tracking/{mail['queued']}/").content.decode()


def test_bad_search_is_400(as_user):
    assert as_user("dave").get("/tracking/?mid=x").status_code == 400
    assert as_user("dave").get("/tracking/?outcome=spam").status_code == 400


def test_unknown_message_is_404(as_user):
    assert as_user("dave").get("/tracking/999999/").status_code == 404


def test_html_subject_is_text(as_user):
    m = make_message(subject="<script>alert(1)</script>")
    client = as_user("alice")
    for path in ("/tracking/?subject=script", f"/tracking/{m.pk}/", "/log/", "/"):
        body = client.get(path).content.decode()
        assert "<script>alert(1)</script>" not in body, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path


def test_tracking_opens_on_the_most_recent_messages_newest_first(as_user, mail):
    response = as_user("carol").get("/tracking/")
    body = response.content.decode()
    shown = [int(m) for m in re.findall(r'<tr data-mid="(\d+)"', body)]
    assert shown == sorted([mail["delivered"], mail["bounced"], mail["queued"]], reverse=True)  # the last week
    assert "The most recent messages, newest first: 3 received in the last week." in body


def test_empty_filter_parameters_leave_the_url(as_user, mail):
    client = as_user("carol")
    plain = client.get("/tracking/?sender=&sender_how=contains&recipient=&subject=invoice&mid=")
    assert plain.status_code == 302 and plain.url == "/tracking/?sender_how=contains&subject=invoice"
    htmx = client.get(
        "/tracking/?sender=&subject=invoice&mid=",
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL="http://testserver/tracking/",
    )
    assert htmx.status_code == 200 and htmx["HX-Push-Url"] == "/tracking/?subject=invoice"
    assert mids(htmx) == {mail["bounced"]}
    assert "sender=&" not in htmx.content.decode() and "mid=&" not in htmx.content.decode()
    assert client.get("/tracking/?subject=invoice").status_code == 200  # nothing empty: served as is


def test_unicode_domains_are_searched_and_shown_in_unicode(as_user):
    m = make_message(sender="a@xn--bcher-kva.example", recipients=("u@xn--mller-kva.example",))
    client = as_user("carol")
    body = client.get("/tracking/", {"domain": "müller.example"}).content.decode()
    assert mids_of(body) == {m.pk}
    assert "u@müller.example" in body and "a@bücher.example" in body and "xn--" not in body
    page = client.get(f"/tracking/{m.pk}/").content.decode()
    assert "u@müller.example" in page and "a@bücher.example" in page


def mids_of(body: str) -> set[int]:
    return {int(m) for m in re.findall(r'<tr data-mid="(\d+)"', body)}


def test_dates_typed_are_searched_whatever_received_says_and_say_their_zone(as_user, mail):
    since = (timezone.now() - timedelta(days=40)).strftime("%Y-%m-%d %H:%M")
    until = (timezone.now() - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M")
    response = as_user("dave").get(f"/tracking/?received=hour&since={since}&until={until}")
    assert mids(response) == {mail["old"]}
    body = as_user("dave").get("/tracking/").content.decode()
    assert 'aria-describedby="date-help"' in body and "UTC, as YYYY-MM-DD HH:MM" in body
    assert ">to (UTC)</label>" in body
    log = as_user("alice").get("/log/").content.decode()
    assert 'aria-describedby="date-help"' in log and "UTC, as YYYY-MM-DD HH:MM" in log
