"""The delivery path end to end over loopback: intake → plan → runner → real SMTP peers → recorded outcome.

Bounces and their DSNs, /dev/null, expiry, USEDNS and MX lookups of route hosts. The runner's own scenarios are in
tests/delivery/outbound/test_runner.py, host state in tests/delivery/outbound/test_hosts.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import worker
from delivery.models import Message, Recipient
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_5xx_bounces_with_no_other_host_and_a_dsn_to_the_sender(peers):
    refuse = peers.start(rcpt={"gone@dest.test": "550 5.1.1 <gone@dest.test>: user unknown"})
    backup = peers.start()
    make_route("dest.test", hosts_text((refuse, 0), (backup, 10)))
    make_route("origin.test", hosts_text((backup, 0)))
    mid = queue_message("gone@dest.test", "ok@dest.test")
    result = worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "bounced"), (1, "delivered")]
    assert refuse.wait_for_messages(1)[0].rcpt_tos == ("ok@dest.test",)
    assert backup.messages == []  # a 5xx never goes to another host
    (bounce_line,) = grep("^Bounced:", log(mid))
    assert (
        bounce_line.startswith("Bounced: DCID ")
        and f"MID {mid} From: <sender@origin.test> To: <gone@dest.test>" in bounce_line
    )
    assert (
        "RID 0 - 5.1.1 - Bad destination email address ('550', ['5.1.1 <gone@dest.test>: user unknown'])" in bounce_line
    )
    (dsn_mid,) = result.generated
    dsn = Message.objects.get(pk=dsn_mid)
    assert (dsn.sender, dsn.icid, dsn.bounce_of_id) == ("", 0, mid)
    assert f"MID {dsn_mid} was generated for bounce of MID {mid}" in log()
    worker.deliver_batch([dsn_mid])
    (notice,) = backup.wait_for_messages(1)
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == ("sender@origin.test",)
    assert b"multipart/report" in notice.content and b"gone@dest.test" in notice.content


def test_no_dsn_for_the_null_sender(peers):
    refuse = peers.start(rcpt="550 5.1.1 user unknown")
    make_route("dest.test", hosts_text((refuse, 0)))
    mid = queue_message("gone@dest.test", sender="")
    assert worker.deliver_batch([mid]).generated == ()
    assert recipients(mid) == [(0, "bounced")] and Message.objects.count() == 1


def test_dev_null_drops_with_a_log_line(peers):
    make_route("void.test", "/dev/null")
    mid = queue_message("a@void.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "dropped")]
    lines = log(mid)
    assert f"Message done DCID 0 MID {mid} to RID [0]" in lines
    assert f"Message finished MID {mid} done" in lines


def test_an_expired_recipient_bounces_with_5_4_7(peers, settings):
    refused = peers.refused()
    make_route("dest.test", hosts_text((refused, 0)))
    make_route("origin.test", "/dev/null")
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    Message.objects.filter(pk=mid).update(received_at=timezone.now() - timedelta(hours=73))
    Recipient.objects.filter(message_id=mid).update(next_attempt_at=timezone.now())
    Message.objects.filter(pk=mid).update(next_attempt_at=timezone.now())
    result = worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "bounced")]
    (bounced,) = grep("^Bounced:", log(mid))
    assert bounced == (
        f"Bounced: DCID 0 MID {mid} From: <sender@origin.test> To: <a@dest.test> RID 0 - 5.4.7 - "
        "Delivery expired (message too old) ('000', ['5.4.7 Delivery expired (message too old)'])"
    )
    assert len(result.generated) == 1


def test_usedns_delivers_to_the_mx_and_a_dns_hard_failure_bounces_with_dcid_0(peers, dns_server, settings):
    mx = peers.start()  # 127.0.0.1: what "localhost" resolves to (after ::1, which refuses)
    settings.ESAROUTES_DELIVERY_MX_PORT = mx.port
    dns_server.add("mx.test", "MX", "10 localhost.")
    make_route("mx.test", "USEDNS")
    make_route("origin.test", "/dev/null")
    mid = queue_message("a@mx.test", "b@nowhere.test")  # nowhere.test: no route, no DNS → NXDOMAIN
    worker.deliver_batch([mid])
    assert mx.wait_for_messages(1)[0].rcpt_tos == ("a@mx.test",)
    assert recipients(mid) == [(0, "delivered"), (1, "bounced")]
    (bounced,) = grep("^Bounced:", log(mid))
    assert bounced.startswith(
        f"Bounced: DCID 0 MID {mid} From: <sender@origin.test> To: <b@nowhere.test> RID 1 - 5.1.2 - "
    )


def test_a_dns_temporary_failure_delays(dns_server):
    dns_server.servfail("flaky.test")
    make_route("origin.test", "/dev/null")
    mid = queue_message("a@flaky.test")
    worker.deliver_batch([mid])
    r = Recipient.objects.get(message_id=mid)
    assert r.state == "delayed" and r.attempts == 1 and r.last_response.startswith("4.4.3 ")
    (delayed,) = grep("^Delayed:", log(mid))
    assert delayed.startswith(f"Delayed: DCID 0 MID {mid} ") and " - 4.4.3 - " in delayed


def test_a_route_host_name_is_looked_up_by_mx_unless_bracketed(peers, dns_server, settings):
    mx = peers.start()
    dns_server.add("relay.dest.test", "MX", "10 localhost.")  # the route's host name has an MX: use it
    dns_server.add("plain.dest.test", "A", "127.0.0.1")
    make_route("dest.test", f"relay.dest.test:{mx.port}")
    make_route("other.test", f"[localhost]:{mx.port}")
    make_route("origin.test", "/dev/null")
    mid = queue_message("a@dest.test", "b@other.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delivered"), (1, "delivered")]
    assert dns_server.count("relay.dest.test", "MX") == 1
    assert dns_server.count("localhost") == 0  # [host] and localhost never go to DNS


def test_a_refused_port_reads_the_same_in_words_on_every_page(peers, admin_client):
    from django.urls import reverse

    from delivery.models import DeliveryAttempt, HostStatus

    refused = peers.refused()
    make_route("dest.test", hosts_text((refused, 0)))
    mid = queue_message("a@dest.test", subject="Quarterly report")
    worker.deliver_batch([mid])
    said = f"connection refused by {refused.host}:{refused.port}"
    assert list(DeliveryAttempt.objects.filter(message_id=mid).values_list("response", flat=True)) == [said]
    assert HostStatus.objects.get(host=refused.host, port=refused.port).last_error == said
    (delayed,) = grep("^Delayed:", log(mid))
    assert said in delayed and "Errno" not in log(mid)
    queue = admin_client.get(reverse("delivery:queue")).content.decode()
    row = queue[queue.index(f'data-mid="{mid}"') :]
    row = row[: row.index("</tr>")]
    assert said in row and "Errno" not in queue
    assert "sender@origin.test" in row and "Quarterly report" in row and "bytes" in row
    page = admin_client.get(reverse("delivery:message-detail", args=[mid])).content.decode()
    assert said in page and "Errno" not in page
    hosts = admin_client.get(reverse("delivery:host-list")).content.decode()
    assert said in hosts
