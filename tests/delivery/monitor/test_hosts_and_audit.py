from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery.models import DeliveryAttempt, HostStatus
from routes.models import AuditEntry
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db


def test_hosts_list_filters_down_hosts_and_by_name(as_user):
    now = timezone.now()
    HostStatus.objects.create(host="mx.up.test", port=25, delivered=5)
    HostStatus.objects.create(host="mx.down.test", port=2525, down_until=now + timedelta(minutes=5), last_error="421")
    client = as_user("carol")
    body = client.get("/hosts/").content.decode()
    assert "mx.up.test:25" in body and "mx.down.test:2525" in body
    body = client.get("/hosts/?down=1").content.decode()
    assert "mx.up.test" not in body and "mx.down.test:2525" in body
    body = client.get("/hosts/?q=up.test", headers={"HX-Request": "true"}).content.decode()
    assert body.lstrip().startswith('<section id="host-table">') and "mx.down.test" not in body
    assert "Retry now" not in body  # carol changes nothing


def test_domain_page_mirrors_hoststatus(as_user):
    m = make_message(recipients=("a@dest.test", "b@dest.test", "c@dest.test"))
    attempt(m, host="mx1.dest.test", code=451, reply="4.3.0 busy", outcome=DeliveryAttempt.Outcome.NEXT_HOST, rids=(0,))
    attempt(m, host="mx2.dest.test", rids=(0,))
    attempt(m, host="mx2.dest.test", code=550, reply="5.1.1 no such user", outcome="bounced", rids=(1,))
    body = as_user("bob").get("/hosts/domain/dest.test/").content.decode()
    assert "Host mail status for: dest.test" in body
    assert "Soft Bounced Events      1" in body
    assert "Hard Bounced Recipients  1" in body and "Delivered Recipients     1" in body
    assert "Active Recipients              1" in body and "Unattempted Recipients       1" in body
    assert "550 5.1.1 no such user" in body and "mx1.dest.test:25" in body


def test_domain_page_finds_a_unicode_domain_by_its_idna_name(as_user):
    make_message(recipients=("a@xn--bcher-kva.test",))  # the queue stores IDNA
    for typed in ("bücher.test", "BÜCHER.test", "xn--bcher-kva.test", "bücher.test."):
        response = as_user("bob").get(f"/hosts/domain/{typed}/")
        assert response.status_code == 200, typed
        assert "Host mail status for: xn--bcher-kva.test" in response.content.decode()


def test_unknown_domain_has_no_record(as_user):
    response = as_user("bob").get("/hosts/domain/never.test/")
    assert response.status_code == 404 and b"No record of host: never.test" in response.content


def test_audit_log_lists_and_filters(as_user, alice):
    now = timezone.now()
    AuditEntry.objects.create(
        at=now,
        actor=alice,
        actor_name="alice",
        action="create",
        object_type="route",
        object_repr="example.com",
        after={"hosts": "mx1"},
    )
    AuditEntry.objects.create(
        at=now, actor_name="cli", action="delete", object_type="relay network", object_repr="10.0.0.0/8"
    )
    client = as_user("carol")
    body = client.get("/audit/").content.decode()
    assert "example.com" in body and "10.0.0.0/8" in body
    body = client.get("/audit/?q=example").content.decode()
    assert "example.com" in body and "10.0.0.0/8" not in body
    body = client.get("/audit/?action=delete").content.decode()
    assert "example.com" not in body and "10.0.0.0/8" in body
    body = client.get("/audit/?object_type=route", headers={"HX-Request": "true"}).content.decode()
    assert body.lstrip().startswith('<section id="audit-table">') and "10.0.0.0/8" not in body


@pytest.mark.parametrize("who", ["alice", "bob", "carol"])
def test_hosts_page_with_a_down_host_for_every_role(as_user, who):
    HostStatus.objects.create(host="mx.down.test", down_until=timezone.now() + timedelta(minutes=5), failed=3)
    assert as_user(who).get("/hosts/").status_code == 200


def test_connections_out_are_read_live_from_the_workers_gauges_not_the_stored_column(as_user):
    """The sweep copies the gauges into the column every few seconds; the pages must not wait for it."""
    from delivery.outbound import hosts

    HostStatus.objects.create(host="mx.busy.test", port=25, connections_out=1)  # stale: closed since
    HostStatus.objects.create(host="mx.new.test", port=25, connections_out=0)  # opened since
    hosts.publish_connections("test-live", {("mx.new.test", 25): 2})
    try:
        client = as_user("alice")
        for url in ("/hosts/", "/admin/delivery/hoststatus/"):
            body = client.get(url).content.decode()
            if url == "/hosts/":
                assert re.search(r'data-host="mx.busy.test:25".*?data-col="connections_out">0<', body, re.S)
                assert re.search(r'data-host="mx.new.test:25".*?data-col="connections_out">2<', body, re.S)
            else:
                assert re.search(r'mx.new.test</a></th>.*?<td class="field-connections_now">2</td>', body, re.S)
                assert re.search(r'mx.busy.test</a></th>.*?<td class="field-connections_now">0</td>', body, re.S)
    finally:
        hosts.publish_connections("test-live", {})
