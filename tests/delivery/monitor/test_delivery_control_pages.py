"""Suspend, resume, hold and redirect on the pages and in the admin: each role, what every page shows, the audit."""

from __future__ import annotations

import io

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.management import call_command
from django.utils import timezone

from delivery.models import DeliverySuspension, Message, Recipient
from delivery.monitor import selectors
from routes.models import AuditEntry

pytestmark = pytest.mark.django_db


def suspended():
    return list(DeliverySuspension.objects.values_list("domain", "suspended_by"))


def queue_audits():
    return list(AuditEntry.objects.filter(object_type="queue").order_by("id").values_list("actor_name", "object_repr"))


def test_suspend_shows_everywhere_and_resume_sends_the_backlog(as_user, queued):
    m1, _ = queued
    client = as_user("bob")
    response = client.post("/queue/suspend/", {"domain": "Dest.Test", "next": "/queue/"}, follow=True)
    assert response.redirect_chain[-1][0] == "/queue/"
    body = response.content.decode()
    assert "Delivery to dest.test suspended: its mail is queued until you resume it." in body
    assert suspended() == [("dest.test", "bob")]
    # the queue: the suspensions table with Resume, the domain row and its recipients say suspended
    assert 'id="queue-suspensions"' in body and 'data-suspended="dest.test"' in body
    row = body.split('<tr data-domain="dest.test">')[1].split("</tr>")[0]
    assert "suspended" in row and ">Resume<" in row and ">Suspend<" not in row
    other = body.split('<tr data-domain="other.test">')[1].split("</tr>")[0]
    assert ">Suspend<" in other and "suspended" not in other
    # the dashboard's destinations, the domain status page, hoststatus and /metrics
    dashboard = client.get("/").content.decode()
    assert "suspended" in dashboard.split('<tr data-domain="dest.test">')[1].split("</tr>")[0]
    detail = client.get("/hosts/domain/dest.test/").content.decode()
    assert "Deliveries suspended" in detail and "Deliveries:           suspended" in detail
    assert 'id="resume-delivery"' in detail
    out = io.StringIO()
    call_command("hoststatus", "dest.test", stdout=out)
    assert "Deliveries:           suspended since " in out.getvalue() and " by bob" in out.getvalue()
    metrics = client.get("/metrics").content.decode()
    assert 'esaroutes_delivery_suspended{domain="dest.test"} 1.0' in metrics
    # again: nothing changes
    again = client.post("/queue/suspend/", {"domain": "dest.test"}, follow=True).content.decode()
    assert "Delivery to dest.test was already suspended." in again

    response = client.post("/queue/resume/", {"domain": "dest.test", "next": "/hosts/domain/dest.test/"}, follow=True)
    assert "Delivery to dest.test resumed: its queued mail is sent now." in response.content.decode()
    assert suspended() == []
    now = timezone.now()
    assert all(r.next_attempt_at <= now for r in Recipient.objects.filter(message=m1))
    assert Message.objects.get(pk=m1.pk).next_attempt_at <= now
    assert 'id="suspend-delivery"' in response.content.decode()
    assert queue_audits() == [("bob", "Suspend delivery to dest.test"), ("bob", "Resume delivery to dest.test")]


def test_suspend_all_from_the_queue_page(as_user, queued):
    client = as_user("alice")
    body = client.get("/queue/").content.decode()
    assert 'id="suspend-all"' in body
    body = client.post("/queue/suspend/", {"domain": "ALL", "next": "/queue/"}, follow=True).content.decode()
    assert "Delivery to every domain (ALL) suspended" in body and 'id="suspend-all"' not in body
    assert all(d["suspended"] for d in selectors.queue_domains())
    assert "ALL domains" in client.get("/hosts/domain/other.test/").content.decode()
    body = client.post("/queue/resume/", {"domain": "other.test"}, follow=True).content.decode()
    assert "other.test was not resumed: delivery to every domain (ALL) is suspended." in body
    client.post("/queue/resume/", {"domain": "all"})
    assert suspended() == []


def test_read_only_roles_see_no_button_and_cannot_post(as_user, queued):
    DeliverySuspension.objects.create(domain="dest.test", suspended_at=timezone.now(), suspended_by="bob")
    for name in ("carol", "dave"):
        client = as_user(name)
        assert client.post("/queue/resume/", {"domain": "dest.test"}).status_code == 403
        assert client.post("/queue/suspend/", {"domain": "other.test"}).status_code == 403
    body = as_user("carol").get("/queue/").content.decode()
    assert 'data-suspended="dest.test"' in body and ">Resume<" not in body and ">Suspend<" not in body
    assert 'id="resume-delivery"' not in as_user("carol").get("/hosts/domain/dest.test/").content.decode()
    assert suspended() == [("dest.test", "bob")] and queue_audits() == []


@pytest.mark.parametrize("data", [{}, {"domain": ""}, {"domain": "[10.0.0.1]"}])
def test_a_bad_domain_is_a_400_and_changes_nothing(as_user, data):
    response = as_user("bob").post("/queue/suspend/", data)
    assert response.status_code == 400 and "Nothing was done" in response.content.decode()
    assert suspended() == []


def test_admin_suspends_the_recipients_domains_and_resumes(admin_client, queued):
    m1, m2 = queued
    pks = list(Recipient.objects.filter(message__in=[m1, m2]).values_list("pk", flat=True))
    data = {"action": "suspend_domains", ACTION_CHECKBOX_NAME: [str(pk) for pk in pks], "index": "0"}
    body = admin_client.post("/admin/delivery/recipient/", data, follow=True).content.decode()
    assert "Delivery suspended: dest.test, other.test." in body
    assert [d for d, _ in suspended()] == ["dest.test", "other.test"]
    listing = admin_client.get("/admin/delivery/deliverysuspension/").content.decode()
    assert "dest.test" in listing and "resume" in listing
    one = DeliverySuspension.objects.get(domain="dest.test")
    data = {"action": "resume", ACTION_CHECKBOX_NAME: [str(one.pk)], "index": "0"}
    body = admin_client.post("/admin/delivery/deliverysuspension/", data, follow=True).content.decode()
    assert "Delivery resumed: dest.test." in body
    assert [d for d, _ in suspended()] == ["other.test"]


def test_operator_staff_has_the_suspension_admin(client, bob, carol):
    from tests.conftest import PASSWORD

    DeliverySuspension.objects.create(domain="dest.test", suspended_at=timezone.now(), suspended_by="bob")
    for user, allowed in ((bob, True), (carol, False)):
        user.is_staff = True
        user.save()
        assert client.login(username=user.username, password=PASSWORD)
        page = client.get("/admin/delivery/deliverysuspension/")
        assert page.status_code == 200  # both may see the suspensions
        assert ('value="resume"' in page.content.decode()) is allowed


def test_held_recipients_show_held_on_the_queue_and_tracking(as_user, queued):
    from delivery.spool import actions

    m1, _ = queued
    actions.hold_recipients(actions.select_recipients(mids=[m1.pk]), actor="cli:root")
    body = as_user("carol").get("/queue/").content.decode()
    row = body.split(f'data-mid="{m1.pk}"')[1].split("</tr>")[0]
    assert '<span class="state state-suspended">held</span>' in row
    detail = as_user("carol").get(f"/tracking/{m1.pk}/").content.decode()
    assert '<span class="state state-suspended">held</span>' in detail


def test_redirect_from_the_queue_page_asks_then_redirects(as_user, queued):
    m1, m2 = queued
    client = as_user("bob")
    page = client.get("/queue/?domain=dest.test").content.decode()
    assert 'id="queue-redirect"' in page and 'name="domain" value="dest.test"' in page
    data = {"scope": "domain", "domain": "dest.test", "relay": "127.0.0.1:2525", "next": "/queue/"}
    body = client.post("/queue/redirect/", data).content.decode()
    assert "Redirect 2 recipients of 1 message to 127.0.0.1:2525?" in body
    assert 'name="relay" value="127.0.0.1:2525"' in body
    assert not Recipient.objects.exclude(redirect_host="").exists()  # asking changes nothing
    body = client.post("/queue/redirect/", {**data, "confirm": "1"}, follow=True).content.decode()
    assert "2 recipients redirected to 127.0.0.1:2525." in body
    assert set(Recipient.objects.filter(message=m1).values_list("redirect_host", "redirect_port")) == {
        ("127.0.0.1", 2525)
    }
    assert Recipient.objects.get(message=m2).redirect_host == ""
    assert all(r.next_attempt_at <= timezone.now() for r in Recipient.objects.filter(message=m1))
    assert queue_audits() == [("bob", "Redirect 2 recipients to 127.0.0.1:2525")]
    page = client.get("/queue/").content.decode()
    assert page.count("to 127.0.0.1:2525 (redirected)") == 2


@pytest.mark.parametrize(
    ("relay", "reason"), [("", "(no host given)"), ("a.test, b.test", "give one host"), ("USEDNS", "is not a host")]
)
def test_redirect_to_a_bad_host_says_why_and_changes_nothing(as_user, queued, relay, reason):
    data = {"scope": "all", "relay": relay, "next": "/queue/", "confirm": "1"}
    response = as_user("bob").post("/queue/redirect/", data)
    body = response.content.decode()
    assert response.status_code == 400 and "Nothing was done" in body and "Redirect to " in body and reason in body
    assert not Recipient.objects.exclude(redirect_host="").exists() and queue_audits() == []


def test_read_only_roles_cannot_redirect(as_user, queued):
    data = {"scope": "all", "relay": "127.0.0.1:2525", "confirm": "1"}
    assert as_user("carol").post("/queue/redirect/", data).status_code == 403
    assert 'id="queue-redirect"' not in as_user("carol").get("/queue/").content.decode()
