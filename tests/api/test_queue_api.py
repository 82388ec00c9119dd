"""/api/v1/queue/: destinations, recipients (keyset), and the actions over delivery.spool.actions."""

from __future__ import annotations

from django.utils import timezone

from delivery.models import DeliverySuspension, Recipient
from routes.models import AuditEntry
from tests.api.conftest import is_problem
from tests.delivery.conftest import queue_message

ACTIONS = "/api/v1/queue/actions/"


def test_destinations_are_the_queue_pages_rows_with_the_suspension(api_client, carol):
    queue_message("a@dest.test", "b@dest.test")
    queue_message("c@other.test")
    DeliverySuspension.objects.create(domain="other.test", suspended_at=timezone.now(), suspended_by="test")
    rows = {r["domain"]: r for r in api_client(carol).get("/api/v1/queue/destinations/").json()}
    assert rows["dest.test"]["active"] == 2 and rows["dest.test"]["suspended"] is False
    assert rows["other.test"]["active"] == 1 and rows["other.test"]["suspended"] is True


def test_recipients_page_by_id_and_narrow_by_domain_and_sender(api_client, carol):
    queue_message("a@dest.test", "b@dest.test")
    queue_message("c@other.test", sender="x@origin.test")
    client = api_client(carol)
    first = client.get("/api/v1/queue/recipients/", {"limit": 2}).json()
    assert len(first["results"]) == 2 and first["next"]
    rest = client.get(first["next"]).json()["results"]
    assert [r["address"] for r in rest] == ["c@other.test"]
    assert [
        r["address"] for r in client.get("/api/v1/queue/recipients/", {"domain": "OTHER.test"}).json()["results"]
    ] == ["c@other.test"]
    by_sender = client.get("/api/v1/queue/recipients/", {"sender": "x@origin.test"}).json()["results"]
    assert [r["address"] for r in by_sender] == ["c@other.test"]
    is_problem(client.get("/api/v1/queue/recipients/", {"domain": "a..b"}), 400, "domain")


def test_a_dry_run_answers_what_would_be_bounced_and_touches_nothing(api_client, bob):
    mid = queue_message("a@dest.test", "b@dest.test")
    queue_message("c@other.test")
    client = api_client(bob)
    audits = AuditEntry.objects.count()
    body = client.post(ACTIONS, {"action": "bounce", "mids": [mid], "dry_run": True}, format="json").json()
    assert body["dry_run"] is True and body["recipients"] == 2 and body["messages"] == 1
    assert body["mids"] == [mid] and len(body["ids"]) == 2
    assert Recipient.objects.filter(state__in=Recipient.ACTIVE).count() == 3
    assert AuditEntry.objects.count() == audits
    done = client.post(ACTIONS, {"action": "bounce", "mids": [mid]}, format="json").json()
    assert done["recipients"] == 2 and done["dry_run"] is False
    assert set(Recipient.objects.filter(message_id=mid).values_list("state", flat=True)) == {"bounced"}
    assert AuditEntry.objects.filter(object_repr__startswith="Bounce").exists()


def test_hold_release_delete_and_deliver_now_by_domain(api_client, bob):
    queue_message("a@dest.test")
    queue_message("c@other.test")
    client = api_client(bob)
    assert client.post(ACTIONS, {"action": "hold", "domain": "dest.test"}, format="json").json()["recipients"] == 1
    assert Recipient.objects.get(domain="dest.test").held
    assert client.post(ACTIONS, {"action": "release", "all": True}, format="json").json()["recipients"] == 1
    assert not Recipient.objects.get(domain="dest.test").held
    kicked = client.post(ACTIONS, {"action": "deliver-now", "domain": "dest.test"}, format="json").json()
    assert kicked["messages"] == 1
    assert client.post(ACTIONS, {"action": "delete", "domain": "other.test"}, format="json").json()["recipients"] == 1
    assert Recipient.objects.get(domain="other.test").state == "deleted"


def test_suspend_resume_and_redirect(api_client, bob):
    queue_message("a@dest.test")
    client = api_client(bob)
    body = client.post(ACTIONS, {"action": "suspend", "domain": "dest.test"}, format="json").json()
    assert body["domains"] == ["dest.test"] and DeliverySuspension.objects.filter(domain="dest.test").exists()
    assert client.post(ACTIONS, {"action": "resume", "domain": "dest.test"}, format="json").json()["domains"] == [
        "dest.test"
    ]
    body = client.post(ACTIONS, {"action": "redirect", "all": True, "relay": "127.0.0.1:2525"}, format="json").json()
    assert body["recipients"] == 1
    assert Recipient.objects.get().redirect_host == "127.0.0.1"


def test_refusals(api_client, bob, carol):
    queue_message("a@dest.test")
    is_problem(api_client(carol).post(ACTIONS, {"action": "bounce", "all": True}, format="json"), 403)
    is_problem(api_client(bob, read_only=True).post(ACTIONS, {"action": "bounce", "all": True}, format="json"), 403)
    client = api_client(bob)
    is_problem(client.post(ACTIONS, {"action": "explode", "all": True}, format="json"), 400, "action")
    is_problem(client.post(ACTIONS, {"action": "bounce"}, format="json"), 400, None)
    is_problem(client.post(ACTIONS, {"action": "bounce", "domain": "a..b"}, format="json"), 400, "domain")
    is_problem(client.post(ACTIONS, {"action": "bounce", "mids": ["x"]}, format="json"), 400, "mids.0")
    # a MID past the id column's range is the client's error, not the database's (schemathesis found the 500)
    is_problem(client.post(ACTIONS, {"action": "delete", "mids": [1, 2**80]}, format="json"), 400, "mids.1")
    is_problem(client.post(ACTIONS, {"action": "suspend"}, format="json"), 400, "domain")
    is_problem(client.post(ACTIONS, {"action": "redirect", "all": True}, format="json"), 400, "relay")
    is_problem(client.post(ACTIONS, {"action": "redirect", "all": True, "relay": "a b:x"}, format="json"), 400, "relay")
    assert Recipient.objects.get().state == "queued"
