"""Queue actions and "retry now" on the pages: each role, the confirmation step, CSRF, the log and audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from delivery.models import HostStatus, MailLogLine, Message, Recipient
from routes.models import AuditEntry
from tests.conftest import PASSWORD
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db

ALLOWED = ("alice", "bob")  # Administrator, Operator
REFUSED = ("carol", "dave")  # Read-only operator, Help desk


@pytest.fixture
def queued():
    later = timezone.now() + timedelta(hours=1)
    m1 = make_message(recipients=("a@dest.test", "b@dest.test"), at=timezone.now() - timedelta(minutes=3))
    attempt(m1, host="mx1.dest.test", code=451, reply="4.3.0 busy", outcome="delayed", rids=(0,))
    m2 = make_message(sender="bob@example.org", recipients=("c@other.test",))
    Recipient.objects.update(next_attempt_at=later)
    return m1, m2


def active(**filters):
    return Recipient.objects.filter(state__in=Recipient.ACTIVE, message__bounce_of__isnull=True, **filters).count()


def queue_audits():
    return list(
        AuditEntry.objects.filter(object_type="queue").order_by("id").values_list("actor_name", "object_repr", "after")
    )


def state_snapshot():
    return sorted(Recipient.objects.values_list("pk", "state", "next_attempt_at"))


# --- the confirmation step --------------------------------------------------------------------------------------


def test_first_post_asks_and_changes_nothing(as_user, queued):
    _m1, _ = queued
    before = state_snapshot()
    response = as_user("bob").post("/queue/bounce/", {"scope": "domain", "domain": "Dest.Test", "next": "/queue/"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "Bounce 2 recipients of 1 message?" in body
    assert 'name="confirm" value="1"' in body and 'name="domain" value="dest.test"' in body
    assert "a@dest.test" in body and "451 4.3.0 busy" in body
    assert state_snapshot() == before and queue_audits() == []


def test_confirmed_bounce_of_a_domain_bounces_logs_and_audits(as_user, queued, bob):
    m1, _ = queued
    client = as_user("bob")
    data = {"scope": "domain", "domain": "dest.test", "next": "/queue/", "confirm": "1"}
    response = client.post("/queue/bounce/", data, follow=True)
    assert response.redirect_chain == [("/queue/", 302)]
    assert "2 recipients bounced." in response.content.decode()
    assert active(domain="dest.test") == 0 and active(domain="other.test") == 1
    assert (
        MailLogLine.objects.filter(text__startswith=f"Bounced: DCID 0 MID {m1.pk} From: <alice@example.test>").count()
        == 2
    )
    assert Message.objects.filter(bounce_of=m1).count() == 1  # the DSN
    entry = AuditEntry.objects.get(object_type="queue")
    assert (entry.actor, entry.object_repr, entry.after) == (
        bob,
        "Bounce 2 recipients",
        {"recipients": 2, "mids": [m1.pk]},
    )


def test_delete_chosen_recipients(as_user, queued):
    m1, _m2 = queued
    r = Recipient.objects.get(message=m1, rid=1)
    response = as_user("alice").post(
        "/queue/delete/", {"scope": "recipients", "recipient": [r.pk], "confirm": "1"}, follow=True
    )
    assert "1 recipient deleted." in response.content.decode()
    assert Recipient.objects.get(pk=r.pk).state == Recipient.State.DELETED
    assert active() == 2
    assert MailLogLine.objects.filter(text=f"Deleted: MID {m1.pk} to [1]").exists()
    assert queue_audits() == [("alice", "Delete 1 recipient", {"recipients": 1, "mids": [m1.pk]})]


def test_deliver_now_one_message_from_its_page(as_user, queued):
    m1, m2 = queued
    client = as_user("bob")
    page = client.get(f"/tracking/{m1.pk}/").content.decode()
    assert 'id="message-actions"' in page and "2 queued recipients" in page
    confirm = client.post("/queue/deliver-now/", {"scope": "message", "mid": m1.pk, "next": f"/tracking/{m1.pk}/"})
    assert "Deliver 1 message now?" in confirm.content.decode()
    response = client.post(
        "/queue/deliver-now/",
        {"scope": "message", "mid": m1.pk, "next": f"/tracking/{m1.pk}/", "confirm": "1"},
        follow=True,
    )
    assert response.redirect_chain == [(f"/tracking/{m1.pk}/", 302)]
    assert "Rescheduled 1 message for immediate delivery." in response.content.decode()
    now = timezone.now()
    assert all(r.next_attempt_at <= now for r in Recipient.objects.filter(message=m1))
    assert Recipient.objects.get(message=m2).next_attempt_at > now
    assert MailLogLine.objects.filter(text=f"Kicking destination MID {m1.pk}").exists()
    assert queue_audits() == [("bob", f"Deliver now MID {m1.pk}", {"messages": 1, "mids": [m1.pk]})]


def test_deliver_now_all_and_one_domain(as_user, queued):
    m1, m2 = queued
    client = as_user("alice")
    client.post("/queue/deliver-now/", {"scope": "domain", "domain": "other.test", "confirm": "1"})
    client.post("/queue/deliver-now/", {"scope": "all", "confirm": "1"})
    assert queue_audits() == [
        ("alice", "Deliver now other.test", {"messages": 1, "mids": [m2.pk]}),
        ("alice", "Deliver now all domains", {"messages": 2, "mids": sorted([m1.pk, m2.pk])}),
    ]
    assert all(r.next_attempt_at <= timezone.now() for r in Recipient.objects.all())


def test_an_outside_next_url_is_ignored(as_user, queued):
    response = as_user("bob").post(
        "/queue/deliver-now/", {"scope": "all", "confirm": "1", "next": "https://evil.example/"}
    )
    assert response.status_code == 302 and response.url == "/queue/"


def test_nothing_left_to_act_on(as_user, queued):
    client = as_user("bob")
    body = client.post("/queue/bounce/", {"scope": "domain", "domain": "gone.test"}).content.decode()
    assert "Nothing to bounce" in body and 'id="confirm-form"' not in body
    response = client.post("/queue/bounce/", {"scope": "domain", "domain": "gone.test", "confirm": "1"}, follow=True)
    assert "No messages bounced." in response.content.decode()


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"scope": "sideways"},
        {"scope": "message"},
        {"scope": "message", "mid": "x"},
        {"scope": "domain", "domain": "a..b"},
        {"scope": "recipients"},
        {"scope": "recipients", "recipient": ["-1"]},
    ],
)
def test_nonsense_is_a_400(as_user, queued, data):
    before = state_snapshot()
    assert as_user("bob").post("/queue/bounce/", {**data, "confirm": "1"}).status_code == 400
    assert state_snapshot() == before


# --- who may ----------------------------------------------------------------------------------------------------

ACTIONS = [
    ("/queue/deliver-now/", {"scope": "all"}),
    ("/queue/bounce/", {"scope": "domain", "domain": "dest.test"}),
    ("/queue/delete/", {"scope": "domain", "domain": "dest.test"}),
]


@pytest.mark.parametrize(("path", "data"), ACTIONS)
@pytest.mark.parametrize("who", REFUSED)
def test_read_only_and_help_desk_are_refused(as_user, queued, path, data, who):
    before = state_snapshot()
    client = as_user(who)
    assert client.post(path, data).status_code == 403
    assert client.post(path, {**data, "confirm": "1"}).status_code == 403
    assert state_snapshot() == before and queue_audits() == []


@pytest.mark.parametrize(("path", "data"), ACTIONS)
@pytest.mark.parametrize("who", ALLOWED)
def test_administrator_and_operator_may(as_user, queued, path, data, who):
    client = as_user(who)
    assert client.post(path, data).status_code == 200  # the confirmation
    assert client.post(path, {**data, "confirm": "1"}).status_code == 302
    assert len(queue_audits()) == 1 and queue_audits()[0][0] == who


@pytest.mark.parametrize(("path", "data"), ACTIONS)
def test_get_is_refused(as_user, queued, path, data):
    before = state_snapshot()
    assert as_user("alice").get(path, {**data, "confirm": "1"}).status_code == 405
    assert state_snapshot() == before and queue_audits() == []


@pytest.mark.parametrize(("path", "data"), ACTIONS)
def test_anonymous_is_sent_to_login(client, queued, path, data):
    response = client.post(path, {**data, "confirm": "1"})
    assert response.status_code == 302 and response.url.startswith("/login/")
    assert queue_audits() == []


@pytest.mark.parametrize(("path", "data"), ACTIONS)
def test_csrf_is_enforced(queued, bob, path, data):
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="bob", password=PASSWORD)
    before = state_snapshot()
    assert client.post(path, {**data, "confirm": "1"}).status_code == 403
    assert state_snapshot() == before and queue_audits() == []
    token = client.get("/queue/").cookies["csrftoken"].value
    assert client.post(path, {**data, "confirm": "1", "csrfmiddlewaretoken": token}).status_code == 302


def test_buttons_only_for_those_who_may(as_user, queued):
    m1, _ = queued
    for who in ALLOWED:
        client = as_user(who)
        body = client.get("/queue/").content.decode()
        assert 'id="deliver-all"' in body and "Bounce…" in body and 'id="queue-selection"' in body
        assert 'id="message-actions"' in client.get(f"/tracking/{m1.pk}/").content.decode()
    body = as_user("carol").get("/queue/").content.decode()
    assert "Deliver" not in body and "Bounce" not in body and "Delete" not in body and "checkbox" not in body
    assert 'id="message-actions"' not in as_user("carol").get(f"/tracking/{m1.pk}/").content.decode()
    assert 'id="message-actions"' not in as_user("dave").get(f"/tracking/{m1.pk}/").content.decode()


def test_no_message_actions_when_nothing_is_queued(as_user):
    done = make_message()
    attempt(done, host="mx1.dest.test")
    assert 'id="message-actions"' not in as_user("alice").get(f"/tracking/{done.pk}/").content.decode()


# --- hosts: retry now -------------------------------------------------------------------------------------------


@pytest.fixture
def down_host(queued):
    _m1, _ = queued
    HostStatus.objects.filter(host="mx1.dest.test").update(
        down_until=timezone.now() + timedelta(minutes=5), consecutive_failures=2
    )
    return HostStatus.objects.get(host="mx1.dest.test")


@pytest.mark.parametrize("who", ALLOWED)
def test_retry_now_marks_the_host_up_and_sends_its_backlog(as_user, down_host, who):
    client = as_user(who)
    assert "Retry now" in client.get("/hosts/").content.decode()
    response = client.post(f"/hosts/{down_host.pk}/retry/", follow=True)
    assert response.redirect_chain == [("/hosts/", 302)]
    assert "mx1.dest.test:25 marked up; 1 queued message sent now." in response.content.decode()
    down_host.refresh_from_db()
    assert down_host.down_until is None and down_host.consecutive_failures == 0
    a = Recipient.objects.get(address="a@dest.test")  # it last failed on mx1: due now
    assert a.next_attempt_at <= timezone.now()
    assert queue_audits() == [(who, "Mark host up mx1.dest.test:25", {"messages": 1, "mids": [a.message_id]})]


def test_retry_now_with_htmx_returns_the_row(as_user, down_host):
    response = as_user("bob").post(f"/hosts/{down_host.pk}/retry/", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.lstrip().startswith(f'<tr id="host-{down_host.pk}"')
    assert '<span class="up">up</span>' in body and "marked up" in body and "Retry now" not in body


@pytest.mark.parametrize("who", REFUSED)
def test_retry_now_refused(as_user, down_host, who):
    client = as_user(who)
    assert client.post(f"/hosts/{down_host.pk}/retry/").status_code == 403
    down_host.refresh_from_db()
    assert down_host.down_until is not None and queue_audits() == []


def test_retry_now_get_csrf_and_unknown_host(as_user, down_host, bob):
    assert as_user("alice").get(f"/hosts/{down_host.pk}/retry/").status_code == 405
    assert as_user("alice").post("/hosts/999999/retry/").status_code == 404
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="bob", password=PASSWORD)
    assert client.post(f"/hosts/{down_host.pk}/retry/").status_code == 403
    down_host.refresh_from_db()
    assert down_host.down_until is not None and queue_audits() == []


def test_retry_button_only_on_failing_hosts(as_user, down_host):
    HostStatus.objects.create(host="mx.fine.test")
    body = as_user("bob").get("/hosts/").content.decode()
    assert body.count("Retry now") == 1


def test_domain_page_lists_the_routes_hosts(as_user, queued):
    from routes import snapshot
    from tests.routes.helpers import make_route

    make_route("dest.test", "mx1.dest.test/pri=10, mx2.dest.test/pri=20")
    snapshot.invalidate()
    try:
        body = as_user("carol").get("/hosts/domain/dest.test/").content.decode()
    finally:
        snapshot.invalidate()
    assert 'id="route-hosts"' in body and "mx2.dest.test:25" in body and "never tried" in body
    assert "5XX Hard Bounces       0" in body


def test_route_test_page_starts_where_the_routes_round_robin_is(as_user):
    """The route test page shows the order the next connection of that route will use (its counter, by id)."""
    from delivery.outbound import hosts
    from routes import snapshot
    from tests.routes.helpers import make_route

    route = make_route("rr.test", "mx1.rr.test/pri=10, mx2.rr.test/pri=10")
    snapshot.invalidate()
    client = as_user("bob")

    def first_host() -> str:
        body = client.get("/routes/test/", {"address": "x@rr.test"}).content.decode()
        return "mx1" if body.index("mx1.rr.test") < body.index("mx2.rr.test") else "mx2"

    try:
        start = hosts.current_rr_offset(route.pk)
        assert first_host() == ("mx1", "mx2")[start % 2]
        hosts.next_rr_offset(str(route.pk))  # one connection of this route
        assert first_host() == ("mx1", "mx2")[(start + 1) % 2]
    finally:
        snapshot.invalidate()
