"""GET /api/v1/hosts/ and /api/v1/domains/{domain}/: the hosts page's and the domain page's figures, as JSON,
checked against the pages themselves for the same data."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from delivery.models import DeliveryAttempt, HostStatus, Recipient
from delivery.outbound import hosts
from delivery.spool import actions
from routes import snapshot
from routes.models import Route
from tests.api.conftest import is_problem
from tests.support.messages import attempt, make_message


def page_cells(body: str, key: str) -> dict[str, str]:
    """The `data-col` cells of the page's row `<tr data-host="{key}">`, as text."""
    m = re.search(rf'<tr[^>]*data-host="{re.escape(key)}"[^>]*>(.*?)</tr>', body, re.DOTALL)
    assert m, f"no row {key} in the page"
    return {
        name: html.unescape(re.sub(r"<[^>]+>", "", value)).strip()
        for name, value in re.findall(r'data-col="(\w+)"[^>]*>(.*?)</td>', m.group(1), re.DOTALL)
    }


@pytest.fixture
def live_gauge():
    yield lambda counts: hosts.publish_connections("test-api-live", counts)
    hosts.publish_connections("test-api-live", {})


def test_each_host_has_the_numbers_the_hosts_page_shows(client, api_client, carol, live_gauge):
    now = timezone.now()
    m = make_message(recipients=("a@dest.test", "b@dest.test", "c@dest.test"))
    attempt(m, host="mx1.dest.test", code=451, reply="4.3.0 busy", outcome=DeliveryAttempt.Outcome.NEXT_HOST, rids=(0,))
    attempt(m, host="mx2.dest.test", rids=(0, 2))
    HostStatus.objects.filter(host="mx1.dest.test").update(
        down_until=now + timedelta(minutes=5), consecutive_failures=2, last_error="451 4.3.0 busy", failed=4
    )
    HostStatus.objects.filter(host="mx2.dest.test").update(delivered=7, connections_out=5)  # stale column
    live_gauge({("mx2.dest.test", 25): 2})
    client.force_login(carol)
    page = client.get("/hosts/").content.decode()
    body = api_client(carol, read_only=True).get("/api/v1/hosts/").json()
    assert body["next"] is None
    by_host = {f"{h['host']}:{h['port']}": h for h in body["results"]}
    assert set(by_host) == {"mx1.dest.test:25", "mx2.dest.test:25"}
    for key, row in by_host.items():
        cells = page_cells(page, key)
        assert cells == {
            "failures": str(row["consecutive_failures"]),
            "connections_out": str(row["connections_out"]),
            "delivered": str(row["delivered"]),
            "failed": str(row["failed"]),
        }
    assert by_host["mx2.dest.test:25"]["connections_out"] == 2  # live, not the stored 5
    assert by_host["mx1.dest.test:25"]["down"] is True and by_host["mx2.dest.test:25"]["down"] is False
    assert by_host["mx1.dest.test:25"]["last_error"] == "451 4.3.0 busy"


def test_the_hosts_filters_are_the_pages(client, api_client, carol):
    now = timezone.now()
    HostStatus.objects.create(host="mx.up.test", port=25, delivered=5)
    HostStatus.objects.create(host="mx.down.test", port=2525, down_until=now + timedelta(minutes=5), last_error="421")
    api = api_client(carol)
    client.force_login(carol)
    for query, expected in (("down=1", {"mx.down.test"}), ("q=up.test", {"mx.up.test"}), ("q=421", {"mx.down.test"})):
        assert {h["host"] for h in api.get(f"/api/v1/hosts/?{query}").json()["results"]} == expected
        page = client.get(f"/hosts/?{query}").content.decode()
        assert set(re.findall(r'data-host="([^:"]+):', page)) == expected
    is_problem(api.get("/api/v1/hosts/?down=maybe"), 400, "down")
    is_problem(api.get("/api/v1/hosts/?q=" + "x" * 256), 400, "q")


def test_the_hosts_page_by_keyset(api_client, carol):
    ids = [HostStatus.objects.create(host=f"mx{i}.test").pk for i in range(3)]
    first = api_client(carol).get("/api/v1/hosts/?limit=2").json()
    assert [h["id"] for h in first["results"]] == ids[:2]
    assert [h["id"] for h in api_client(carol).get(first["next"]).json()["results"]] == ids[2:]


def test_hosts_are_for_the_roles_that_see_the_hosts_page(api_client, alice, bob, carol, dave):
    for user in (alice, bob, carol):
        assert api_client(user, read_only=True).get("/api/v1/hosts/").status_code == 200
    is_problem(api_client(dave).get("/api/v1/hosts/"), 403)
    is_problem(APIClient().get("/api/v1/hosts/"), 401)


# --- GET /api/v1/domains/{domain}/ -----------------------------------------------------------------------------

PAGE_FIGURES = {
    "Soft Bounced Events": "soft_bounced",
    "Completed Recipients": "completed",
    "Hard Bounced Recipients": "hard_bounced",
    "DNS Hard Bounces": "hard_dns",
    "5XX Hard Bounces": "hard_5xx",
    "Expired Hard Bounces": "hard_expired",
    "Other Hard Bounces": "hard_other",
    "Delivered Recipients": "delivered",
    "Deleted Recipients": "deleted",
    "Dropped Recipients": "dropped",
    "Active Recipients": "active",
    "Unattempted Recipients": "unattempted",
    "Attempted Recipients": "attempted",
    "Current Outbound Connections": "connections_out",
}


def test_a_domain_has_the_numbers_the_domain_page_shows(client, api_client, bob, live_gauge):
    route = Route.objects.create(domain="dest.test")
    route.hosts.create(host="mx1.dest.test", port=25, priority=0, position=0)
    route.hosts.create(host="mx2.dest.test", port=25, priority=5, position=1)
    snapshot.invalidate()  # written here without the service: the cached route table must be read again
    m = make_message(recipients=("a@dest.test", "b@dest.test", "c@dest.test", "d@dest.test"))
    attempt(m, host="mx1.dest.test", code=451, reply="4.3.0 busy", outcome=DeliveryAttempt.Outcome.NEXT_HOST, rids=(0,))
    attempt(m, host="mx2.dest.test", rids=(0,))
    attempt(m, host="mx2.dest.test", code=550, reply="5.1.1 no such user", outcome="bounced", rids=(1,))
    Recipient.objects.filter(message=m, rid=3).update(state=Recipient.State.DELETED)
    live_gauge({("mx2.dest.test", 25): 1})
    client.force_login(bob)
    page = client.get("/hosts/domain/dest.test/").content.decode()
    body = api_client(bob, read_only=True).get("/api/v1/domains/dest.test/").json()
    shown = dict(re.findall(r"^\s*([A-Z0-9][A-Za-z0-9 ]+?)\s{2,}(\d+)\s*$", page, re.M))
    assert {PAGE_FIGURES[label]: int(n) for label, n in shown.items() if label in PAGE_FIGURES} == {
        key: body[key] for key in PAGE_FIGURES.values()
    }
    assert (body["soft_bounced"], body["hard_bounced"], body["delivered"], body["deleted"]) == (1, 1, 1, 1)
    assert body["up"] is True and body["suspension"] is None
    assert body["last_5xx"]["code"] == 550 and body["last_5xx"]["response"] in page
    for h in body["hosts"]:
        assert page_cells(page, f"{h['host']}:{h['port']}") == {
            "connections_out": str(h["connections_out"]),
            "delivered": str(h["delivered"]),
            "failed": str(h["failed"]),
        }
    assert body["route"]["kind"] == "route" and body["route"]["route_domain"] == "dest.test"
    assert [(c["order"], c["host"]) for c in body["route"]["hosts"]] == [(1, "mx1.dest.test"), (2, "mx2.dest.test")]
    destination = body["destination"]
    assert destination["matched"] == "Default" and destination["connections"] == 0
    assert destination["max_connections"] > 0


def test_the_domain_page_and_its_api_show_the_slots_of_each_destination_ip(client, api_client, bob):
    from delivery import slots
    from routes import services

    slots.flush()
    make_message(recipients=("a@dest.test",))
    services.create_destination(
        data=services.DestinationData(destination="dest.test", max_connections=4, limit_scope="ip"), actor="test"
    )
    assert slots.acquire("dest.test|127.0.0.2", "w:1", 4) and slots.acquire("dest.test|127.0.0.3", "w:2", 4)
    assert slots.acquire("dest.test|127.0.0.3", "w:3", 4)
    client.force_login(bob)
    page = client.get("/hosts/domain/dest.test/").content.decode()
    table = page[page.index('id="destination-control"') :]
    assert "3 in use now, of at most 4 per destination IP" in table and "127.0.0.2: 1, 127.0.0.3: 2" in table
    destination = api_client(bob, read_only=True).get("/api/v1/domains/dest.test/").json()["destination"]
    assert destination["connections"] == 3
    assert destination["connections_by_ip"] == {"127.0.0.2": 1, "127.0.0.3": 2}
    assert destination["limit_scope"] == "ip"
    slots.flush()


def test_a_suspended_domain_says_so(api_client, bob):
    make_message(recipients=("a@dest.test",))
    actions.suspend_delivery(["dest.test"], actor=bob)
    suspension = api_client(bob).get("/api/v1/domains/DEST.test/").json()["suspension"]
    assert suspension["domain"] == "dest.test" and suspension["suspended_by"]


def test_an_unknown_domain_is_404_as_on_the_page_and_nonsense_400(client, api_client, bob):
    client.force_login(bob)
    assert client.get("/hosts/domain/never.test/").status_code == 404
    assert "No record of host" in is_problem(api_client(bob).get("/api/v1/domains/never.test/"), 404)["detail"]
    is_problem(api_client(bob).get("/api/v1/domains/not a domain!/"), 400, "domain")
    is_problem(api_client(bob).get("/api/v1/domains/a..b/"), 400, "domain")


def test_the_domain_is_for_the_roles_that_see_the_domain_page(api_client, alice, bob, carol, dave):
    make_message(recipients=("a@dest.test",))
    for user in (alice, bob, carol):
        assert api_client(user, read_only=True).get("/api/v1/domains/dest.test/").status_code == 200
    is_problem(api_client(dave).get("/api/v1/domains/dest.test/"), 403)
    is_problem(APIClient().get("/api/v1/domains/dest.test/"), 401)


def test_a_unicode_domain_is_found_by_its_idna_name(api_client, bob):
    make_message(recipients=("a@xn--bcher-kva.test",))  # the queue stores IDNA
    client = api_client(bob)
    for typed in ("bücher.test", "BÜCHER.test", "xn--bcher-kva.test"):
        response = client.get(f"/api/v1/domains/{typed}/")
        assert response.status_code == 200, typed
        assert response.json()["domain"] == "xn--bcher-kva.test"
    is_problem(client.get("/api/v1/domains/a_b!.test/"), 400, "domain")
