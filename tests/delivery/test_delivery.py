"""The delivery path end to end over loopback: queue → plan → runner → real SMTP peers → recorded outcome.

Each scenario asserts the recipients' states, the attempts and the mail log, line by line in the ESA format.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.utils import timezone

from delivery import worker
from delivery.engine import Stage
from delivery.models import DeliveryAttempt, HostStatus, MailLogLine, Message, Recipient
from delivery.spool import actions
from routes import domains, services
from routes.models import Route
from tests.delivery.conftest import queue_message
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def hosts_text(*pairs: tuple[Any, int]) -> str:
    """Route destination text for peers: `127.0.0.1:port/pri=N, ...`."""
    return ", ".join(f"{p.host}:{p.port}/pri={pri}" for p, pri in pairs)


def log(mid: int | None = None) -> list[str]:
    qs = MailLogLine.objects.order_by("id")
    return [line.text for line in qs if mid is None or line.mid in (None, mid) or f"MID {mid} " in line.text]


def grep(pattern: str, lines: list[str]) -> list[str]:
    return [line for line in lines if re.search(pattern, line)]


def recipients(mid: int) -> list[tuple[int, str]]:
    return list(Recipient.objects.filter(message_id=mid).order_by("rid").values_list("rid", "state"))


def test_one_transaction_for_all_recipients_on_the_same_host(peers):
    good = peers.start()
    make_route("dest.test", hosts_text((good, 0)))
    mid = queue_message("a@dest.test", "b@dest.test")
    result = worker.deliver_batch([mid])
    assert result.claimed == 1
    (received,) = good.wait_for_messages(1)
    assert received.rcpt_tos == ("a@dest.test", "b@dest.test")
    assert recipients(mid) == [(0, "delivered"), (1, "delivered")]
    message = Message.objects.get(pk=mid)
    assert message.state == "done" and message.leased_by == "" and message.finished_at is not None
    lines = log()
    dcid = int(re.search(r"New SMTP DCID (\d+)", "\n".join(lines)).group(1))
    assert f"New SMTP DCID {dcid} interface Data 1 address 127.0.0.1 port {good.port}" in lines
    assert f"Delivery start DCID {dcid} MID {mid} to RID [0, 1]" in lines
    assert f"Message done DCID {dcid} MID {mid} to RID [0, 1]" in lines
    assert grep(rf"^MID {mid} RID \[0, 1\] Response '", lines)
    assert lines.index(f"Message finished MID {mid} done") > lines.index(
        f"Message done DCID {dcid} MID {mid} to RID [0, 1]"
    )
    hs = HostStatus.objects.get(host="127.0.0.1", port=good.port)
    assert (hs.delivered, hs.consecutive_failures, hs.down_until) == (2, 0, None)


def test_4xx_at_rcpt_fails_over_at_once_to_the_next_host(peers):
    busy = peers.start(rcpt="452 4.3.1 Insufficient system resources")
    good = peers.start()
    make_route("dest.test", hosts_text((busy, 0), (good, 10)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    good.wait_for_messages(1)
    assert busy.messages == [] and recipients(mid) == [(0, "delivered")]
    outcomes = list(
        DeliveryAttempt.objects.filter(message_id=mid).order_by("id").values_list("port", "outcome", "code")
    )
    assert outcomes == [(busy.port, "next_host", 452), (good.port, "delivered", 250)]
    lines = log(mid)
    starts = grep(rf"^Delivery start DCID \d+ MID {mid} to RID \[0\]$", lines)
    assert len(starts) == 2  # the same recipient, on two connections: the ESA's failover story
    assert grep(rf"^Message done DCID \d+ MID {mid} to RID \[0\]$", lines)
    assert not grep("^Delayed:", lines)


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


def test_every_host_failing_delays_and_marks_them_down(peers, settings):
    refused = peers.refused()
    busy = peers.start(mail="421 4.3.2 Service shutting down")
    make_route("dest.test", hosts_text((refused, 0), (busy, 10)))  # refused first: the Delayed line is busy's
    before = timezone.now()
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    r = Recipient.objects.get(message_id=mid)
    assert r.state == "delayed" and r.attempts == 1
    assert before + timedelta(seconds=59) < r.next_attempt_at < timezone.now() + timedelta(seconds=61)
    lines = log()
    (error, *_) = grep(rf"^Connection Error: .* port: {refused.port} ", lines)
    assert re.match(
        rf"Connection Error: DCID \d+ domain: dest.test IP: 127.0.0.1 port: {refused.port} details: .* "
        r"interface: Data 1 reason: network error$",
        error,
    )
    (delayed,) = grep("^Delayed:", lines)
    assert f"MID {mid} From: <sender@origin.test> To: <a@dest.test> RID 0 - 4.3.2 - " in delayed
    assert delayed.endswith("('421', ['4.3.2 Service shutting down'])")
    down = HostStatus.objects.get(port=refused.port)
    assert down.consecutive_failures == 1 and down.down_until > timezone.now() + timedelta(seconds=50)
    # 421 to MAIL FROM is about the mail transaction, not the host: it stays up
    assert HostStatus.objects.get(port=busy.port).down_until is None
    message = Message.objects.get(pk=mid)
    assert message.state == "queued" and message.next_attempt_at == r.next_attempt_at and message.leased_by == ""


def test_a_down_host_is_skipped_then_comes_back_and_its_backlog_flushes(peers):
    dead = peers.refused()
    make_route("dest.test", hosts_text((dead, 0)))
    first = queue_message("a@dest.test")
    worker.deliver_batch([first])
    assert recipients(first) == [(0, "delayed")]
    # The only host is down: it is still tried (nothing else could take the mail), and fails again.
    second = queue_message("b@dest.test")
    worker.deliver_batch([second])
    assert HostStatus.objects.get(port=dead.port).consecutive_failures == 2
    # The operator fixes it: the host is marked up and every delayed message is due now.
    dead.stop()
    good = peers.start()
    services.route_update(
        route_id=Route.objects.get(domain="dest.test").pk,
        data=services.RouteData(domain="dest.test", destination=domains.parse_hosts(hosts_text((good, 0)))),
        actor="test",
    )
    assert actions.deliver_now(actor="test", domain="dest.test") == 2
    worker.deliver_batch([])
    assert len(good.wait_for_messages(2)) == 2
    assert recipients(first) == [(0, "delivered")] and recipients(second) == [(0, "delivered")]


def test_a_host_that_answers_again_releases_the_backlog(peers):
    dead = peers.refused()
    port = dead.port
    make_route("dest.test", hosts_text((dead, 0)))
    backlog = queue_message("a@dest.test")
    worker.deliver_batch([backlog])
    waiting = Recipient.objects.get(message_id=backlog)
    assert waiting.state == "delayed" and waiting.next_attempt_at > timezone.now() + timedelta(seconds=50)
    dead.stop()
    received: list[Any] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.rcpt_tos)
            return "250 2.0.0 Ok"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port)  # the same host:port, back up
    controller.start()
    try:
        fresh = queue_message("b@dest.test")
        worker.deliver_batch([fresh])  # the host is down, but it is the only one: tried, and it answers
        assert recipients(fresh) == [(0, "delivered")]
        assert HostStatus.objects.get(port=port).consecutive_failures == 0
        # its success released the backlog: due now, not in a minute
        assert Message.objects.get(pk=backlog).next_attempt_at <= timezone.now()
        worker.deliver_batch([])
        assert recipients(backlog) == [(0, "delivered")]
        assert sorted(received) == [["a@dest.test"], ["b@dest.test"]]
    finally:
        controller.stop()


def test_round_robin_shares_connections_between_equal_hosts_and_never_uses_the_backup(peers):
    a, b, backup = peers.start(), peers.start(), peers.start()
    make_route("dest.test", hosts_text((a, 5), (b, 5), (backup, 20)))
    for i in range(10):
        worker.deliver_batch([queue_message(f"u{i}@dest.test")])
    assert len(a.messages) == 5 and len(b.messages) == 5
    assert backup.messages == [] and backup.connections == 0
    assert a.connections == 1 and b.connections == 1  # idle connections were reused, not reopened


def test_defer_on_4xx_keeps_the_recipient_for_its_retry(peers):
    busy = peers.start(rcpt="452 4.3.1 Insufficient system resources")
    good = peers.start()
    make_route("dest.test", hosts_text((busy, 0), (good, 10)), defer_on_4xx=True)
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delayed")] and good.messages == []
    (delayed,) = grep("^Delayed:", log(mid))
    assert "- 4.3.1 - Mail system full ('452', ['4.3.1 Insufficient system resources'])" in delayed


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


# Every row of the reply table (issue 4): what the first host does, and where the recipient ends up.
# "next": failed over at once to the second host and delivered there; "bounced": hard bounce, no other host.
REPLY_TABLE: list[tuple[str, dict[str, Any], str, bool]] = [
    ("refused", {}, "next", True),
    ("closing", {}, "next", True),  # accepts TCP, hangs up
    ("silent", {}, "next", True),  # accepts TCP, never greets: the command timeout
    ("greeting 421", {"greeting": "421 4.3.2 busy"}, "next", True),
    ("greeting 554", {"greeting": "554 5.3.2 go away"}, "next", True),
    ("ehlo 421", {"ehlo": "421 4.3.2 busy"}, "next", True),
    ("ehlo 550", {"ehlo": "550 5.5.1 no", "helo": "550 5.5.1 no"}, "next", True),
    ("mail 451", {"mail": "451 4.3.0 try later"}, "next", False),
    ("rcpt 452", {"rcpt": "452 4.3.1 Insufficient system resources"}, "next", False),
    ("data 451", {"data_cmd": "451 4.3.0 not now"}, "next", False),
    ("dot 452", {"data": "452 4.3.1 full"}, "next", False),
    ("stall at rcpt", {"stall_at": Stage.RCPT}, "next", True),
    ("drop at mail", {"drop_at": Stage.MAIL}, "next", True),
    ("mail 550", {"mail": "550 5.7.1 sender refused"}, "bounced", False),
    ("rcpt 550", {"rcpt": "550 5.1.1 user unknown"}, "bounced", False),
    ("data 554", {"data_cmd": "554 5.6.0 no"}, "bounced", False),
    ("dot 554", {"data": "554 5.7.1 spam"}, "bounced", False),
]


# The rows that reach MAIL again with hosts that offer PIPELINING: MAIL, RCPT and DATA go in one write, and the
# replies must mean the same.
PIPELINED = [
    (f"{name} pipelined", {**script, "pipelining": True}, ends, marks_down)
    for name, script, ends, marks_down in REPLY_TABLE
    if name.split()[0] in ("mail", "rcpt", "data", "dot", "stall", "drop")
]


@pytest.mark.parametrize(
    ("first", "script", "ends", "marks_down"), REPLY_TABLE + PIPELINED, ids=[r[0] for r in REPLY_TABLE + PIPELINED]
)
def test_reply_table(peers, settings, first, script, ends, marks_down):
    settings.ESAROUTES_DELIVERY_COMMAND_TIMEOUT = 0.5  # the silent and stalled hosts cost this, once
    make_route("origin.test", "/dev/null")
    bad = getattr(peers, first)() if first in ("refused", "closing", "silent") else peers.start(**script)
    good = peers.start(pipelining=bool(script.get("pipelining")))
    make_route("dest.test", hosts_text((bad, 0), (good, 10)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    if ends == "next":
        assert recipients(mid) == [(0, "delivered")]
        assert good.wait_for_messages(1)[0].rcpt_tos == ("a@dest.test",)
    else:
        assert recipients(mid) == [(0, "bounced")] and good.messages == []
        assert len(grep("^Bounced:", log(mid))) == 1
    status = HostStatus.objects.filter(port=bad.port).first()
    assert bool(status and status.down_until) is marks_down
    if marks_down:
        assert len(grep(rf"^Connection Error: DCID \d+ domain: dest.test IP: {bad.host} port: {bad.port} ", log())) == 1


def test_open_connections_are_counted_for_the_hosts_page(peers, settings):
    from delivery import tasks
    from delivery.outbound import hosts, runner

    settings.ESAROUTES_DELIVERY_IDLE = 60.0  # the connection stays open in the pool after the batch
    good = peers.start()
    make_route("dest.test", hosts_text((good, 0)))
    worker.deliver_batch([queue_message("a@dest.test")])
    the_runner = runner.get_runner()
    the_runner._call(the_runner._publish(force=True)).result(5)
    assert hosts.open_connections() == {(good.host, good.port): 1}
    tasks.sweep()
    assert HostStatus.objects.get(port=good.port).connections_out == 1
    runner.shutdown_runner()  # QUITs it, and says so
    assert hosts.open_connections() == {}
    tasks.sweep()
    assert HostStatus.objects.get(port=good.port).connections_out == 0
