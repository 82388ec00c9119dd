"""GET /api/v1/messages/{mid}/ and .../raw: the tracking page's message, as JSON, and its raw form (admins)."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from delivery.models import Recipient
from tests.api.conftest import is_problem
from tests.delivery.conftest import queue_message
from tests.support.messages import make_message


def test_a_message_has_its_envelope_recipients_and_log_lines(api_client, dave):
    mid = queue_message("a@dest.test", "b@dest.test")
    body = api_client(dave).get(f"/api/v1/messages/{mid}/").json()
    assert body["mid"] == mid and body["sender"] == "sender@origin.test"
    assert [r["address"] for r in body["recipients"]] == ["a@dest.test", "b@dest.test"]
    assert body["lines"] and all(f"MID {mid}" in line["text"] for line in body["lines"] if "MID" in line["text"])
    is_problem(api_client(dave).get("/api/v1/messages/999999/"), 404)


def test_the_raw_message_is_for_administrators_only(api_client, alice, bob):
    mid = queue_message("a@dest.test")
    response = api_client(alice).get(f"/api/v1/messages/{mid}/raw")
    assert response.status_code == 200 and response["Content-Type"] == "message/rfc822"
    assert b"Subject: hello" in response.content
    is_problem(api_client(bob).get(f"/api/v1/messages/{mid}/raw"), 403)


# --- GET /api/v1/messages/: the tracking page's search ---------------------------------------------------------


def _page_mids(client, query: str) -> list[int]:
    response = client.get(f"/tracking/?{query}")
    assert response.status_code == 200
    return [row["message"].pk for row in response.context["rows"]]


def _api_mids(client, query: str) -> list[int]:
    response = client.get(f"/api/v1/messages/?{query}")
    assert response.status_code == 200, response.content[:300]
    return [row["mid"] for row in response.json()["results"]]


def test_the_search_answers_what_the_tracking_page_finds(client, api_client, dave):
    old = make_message(sender="old@origin.test", at=timezone.now() - timedelta(days=10))
    one = make_message(sender="one@origin.test", recipients=("a@dest.test",), subject="Invoice 7")
    two = make_message(sender="two@origin.test", recipients=("b@other.test", "c@dest.test"), subject="Hello")
    bounced = make_message(sender="two@origin.test", recipients=("d@dest.test",))
    Recipient.objects.filter(message=bounced).update(state=Recipient.State.BOUNCED)
    client.force_login(dave)
    api = api_client(dave, read_only=True)
    for query in (
        "",
        "received=all",
        "sender=two%40origin",
        "sender=one&sender_how=begins",
        "recipient=c%40dest.test&recipient_how=is",
        "domain=dest.test",
        "subject=invoice",
        "outcome=hard_bounced",
        "outcome=queued&outcome=hard_bounced",
        f"mid={old.pk}",
    ):
        assert _api_mids(api, query) == _page_mids(client, query), query
    assert _api_mids(api, "") == [bounced.pk, two.pk, one.pk]  # newest first; the last week by default
    assert _api_mids(api, f"mid={old.pk}") == [old.pk]  # a MID is searched at any time, as on the page
    row = api.get(f"/api/v1/messages/?mid={two.pk}").json()["results"][0]
    assert row["sender"] == "two@origin.test" and row["subject"] == "Hello"
    states = [(r["address"], r["state"]) for r in row["recipients"]]
    assert states == [("b@other.test", "queued"), ("c@dest.test", "queued")]


def test_the_search_pages_by_mid_newest_first(api_client, dave):
    mids = [make_message().pk for _ in range(5)]
    api = api_client(dave)
    first = api.get("/api/v1/messages/?limit=2").json()
    assert [r["mid"] for r in first["results"]] == mids[:-3:-1]
    second = api.get(first["next"]).json()
    assert [r["mid"] for r in second["results"]] == mids[-3:-5:-1]
    third = api.get(second["next"]).json()
    assert [r["mid"] for r in third["results"]] == [mids[0]] and third["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("mid=x", "mid"),
        (f"mid={2**63}", "mid"),
        ("since=yesterday", "since"),
        ("outcome=lost", "outcome"),
        ("sender_how=sounds-like", "sender_how"),
        ("received=fortnight", "received"),
        ("sender=" + "a" * 321, "sender"),
        ("before=-1", "before"),
    ],
)
def test_a_bad_filter_is_a_problem_at_its_field(api_client, dave, client, query, field):
    is_problem(api_client(dave).get(f"/api/v1/messages/?{query}"), 400, field)
    if field != "before":  # the page refuses the same filter
        client.force_login(dave)
        assert client.get(f"/tracking/?{query}").status_code == 400


def test_every_role_may_search_but_not_anonymously(api_client, alice, bob, carol, dave):
    make_message()
    for user in (alice, bob, carol, dave):
        assert api_client(user, read_only=True).get("/api/v1/messages/").status_code == 200
    is_problem(APIClient().get("/api/v1/messages/"), 401)


def test_a_date_with_any_offset_is_searched_in_utc(api_client, dave):
    """PostgreSQL refuses offsets past 15:59: the form converts the dates to UTC first (the fuzzer found it)."""
    mid = make_message().pk
    since = (timezone.now() - timedelta(hours=1)).astimezone(timezone.get_fixed_timezone(-(18 * 60 + 36)))
    query = {"since": since.isoformat(), "until": "5602-05-16T10:47:44Z"}
    assert _api_mids(api_client(dave), urlencode(query)) == [mid]
    is_problem(api_client(dave).get("/api/v1/messages/?until=9999-12-31T23:00:00-05:00"), 400, "until")
