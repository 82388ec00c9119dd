"""GET /api/v1/audit/: the audit log, newest first, keyset by id, with the audit page's filters and answers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from routes import audit
from routes.models import AuditEntry
from tests.api.conftest import is_problem

URL = "/api/v1/audit/"


@pytest.fixture
def api(api_client, bob):
    """Bob's client, made first: creating its token is an audit entry too, older than the entries below."""
    return api_client(bob, read_only=True)


@pytest.fixture
def entries(api):
    now = timezone.now()
    made = [
        ("alice", "create", "route", "example.com"),
        ("bob", "update", "route", "xn--bcher-kva.example"),
        ("cli:carol", "import", "route table", "42 routes"),
        ("bob", "action", "Queue", "Bounce 3 recipients"),
        ("alice", "delete", "RelayNetwork", "127.0.0.0/8"),
    ]
    return [
        AuditEntry.objects.create(
            at=now + timedelta(milliseconds=i), actor_name=who, action=action, object_type=kind, object_repr=what
        )
        for i, (who, action, kind, what) in enumerate(made)
    ]


def _page_ids(client, query: dict[str, str]) -> list[int]:
    response = client.get("/audit/", query)
    assert response.status_code == 200
    return [e.pk for e in response.context["entries"]]


def _api_ids(client, query: dict[str, str]) -> list[int]:
    response = client.get(URL, query)
    assert response.status_code == 200, response.content[:300]
    return [e["id"] for e in response.json()["results"]]


def test_the_api_answers_what_the_audit_page_finds(client, api, bob, entries):
    client.force_login(bob)
    for query in (
        {},
        {"q": "bob"},
        {"q": "bücher"},  # a Unicode domain finds its IDNA form, as on the page
        {"action": "update"},
        {"object_type": "route"},  # a route's changes and the whole table's
        {"object_type": "RelayNetwork"},
        {"action": "nothing-such"},
    ):
        assert _api_ids(api, query) == _page_ids(client, query), query
    assert _api_ids(api, {"object_type": "route"}) == [entries[2].pk, entries[1].pk, entries[0].pk]


def test_an_entry_says_who_did_what_with_before_and_after(api):
    entry = audit.record_audit("cli:bob", "update", "route", "example.com", before={"tls": "off"}, after={"tls": "on"})
    row = api.get(URL).json()["results"][0]
    assert row == {
        "id": entry.pk,
        "at": row["at"],
        "actor": "cli:bob",
        "action": "update",
        "object_type": "route",
        "object_repr": "example.com",
        "before": {"tls": "off"},
        "after": {"tls": "on"},
    }


def test_a_change_made_with_a_token_is_listed_with_the_tokens_name(api_client, alice):
    client = api_client(alice)
    created = client.post("/api/v1/routes/", {"domain": "audited.test", "destination": ["127.0.0.1:9"]}, format="json")
    assert created.status_code == 201, created.content
    (row,) = client.get(URL, {"q": "audited.test"}).json()["results"]
    assert row["actor"].startswith("api:alice/") and row["action"] == "create"


def test_the_log_pages_by_id_newest_first(api, entries):
    first = api.get(URL, {"limit": 2}).json()
    assert [e["id"] for e in first["results"]] == [entries[4].pk, entries[3].pk]
    second = api.get(first["next"]).json()
    assert [e["id"] for e in second["results"]] == [entries[2].pk, entries[1].pk]
    last = api.get(second["next"].replace("limit=2", "limit=1")).json()
    assert [e["id"] for e in last["results"]] == [entries[0].pk]
    token = api.get(last["next"]).json()  # the oldest: the token's creation
    assert [e["object_type"] for e in token["results"]] == ["API token"] and token["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"q": "x" * 301}, "q"),
        ({"action": "x" * 17}, "action"),
        ({"before": str(2**63)}, "before"),
        ({"before": "²"}, "before"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_a_bad_filter_is_a_problem_at_its_field(api_client, bob, query, field):
    is_problem(api_client(bob).get(URL, query), 400, field)


def test_the_audit_log_is_for_the_roles_that_see_the_audit_page(api_client, alice, bob, carol, dave, client):
    for user in (alice, bob, carol):
        assert api_client(user, read_only=True).get(URL).status_code == 200
    is_problem(api_client(dave).get(URL), 403)  # the help desk does not see the audit page either
    client.force_login(dave)
    assert client.get("/audit/").status_code == 403
    assert client.logout() is None
    assert client.get(URL).status_code in (401, 403)
