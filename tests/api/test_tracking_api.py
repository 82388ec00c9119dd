"""GET /api/v1/messages/{mid}/ and .../raw: the tracking page's message, as JSON, and its raw form (admins)."""

from __future__ import annotations

from tests.api.conftest import is_problem
from tests.delivery.conftest import queue_message


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
