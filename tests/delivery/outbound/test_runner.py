"""delivery.outbound.runner over loopback, through a worker batch: one transaction per host for all the route's
recipients, failover at once to the next host, defer_on_4xx, and every row of the reply table (pipelined too).

Each scenario asserts the recipients' states, the attempts and the mail log, line by line in the ESA format.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from delivery import worker
from delivery.engine import Stage
from delivery.models import BounceProfile, DeliveryAttempt, HostStatus, Message
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


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
    lines = log()
    first, second = (int(d) for d in re.findall(r"^New SMTP DCID (\d+) ", "\n".join(lines), re.MULTILINE))
    story = lines[lines.index(f"New SMTP DCID {first} interface Data 1 address {busy.host} port {busy.port}") :]
    assert story[:5] == [
        f"New SMTP DCID {first} interface Data 1 address {busy.host} port {busy.port}",
        f"Delivery start DCID {first} MID {mid} to RID [0]",
        f"Delayed: DCID {first} MID {mid} From: <sender@origin.test> To: <a@dest.test> RID 0 - 4.3.1 - "
        "Mail system full ('452', ['4.3.1 Insufficient system resources'])",
        f"New SMTP DCID {second} interface Data 1 address {good.host} port {good.port}",
        f"Delivery start DCID {second} MID {mid} to RID [0]",
    ]
    assert story[5] == f"Message done DCID {second} MID {mid} to RID [0]"
    assert re.match(rf"MID {mid} RID \[0\] Response '", story[6])
    assert story[7] == f"Message finished MID {mid} done"
    assert len(grep("^Delayed:", lines)) == 1  # the reply that moved it, once: no second line for the same fact


def test_defer_on_4xx_keeps_the_recipient_for_its_retry(peers):
    busy = peers.start(rcpt="452 4.3.1 Insufficient system resources")
    good = peers.start()
    make_route("dest.test", hosts_text((busy, 0), (good, 10)), defer_on_4xx=True)
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delayed")] and good.messages == []
    (delayed,) = grep("^Delayed:", log(mid))
    assert "- 4.3.1 - Mail system full ('452', ['4.3.1 Insufficient system resources'])" in delayed


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


# --- every outcome in the mail log (issue 12) ------------------------------------------------------------------


def _dcids(lines: list[str]) -> list[int]:
    return [int(d) for d in re.findall(r"^New SMTP DCID (\d+) ", "\n".join(lines), re.MULTILINE)]


def test_possible_delivery_is_logged_and_sent_again_to_the_next_host_by_default(peers):
    lossy = peers.start(drop_at=Stage.DATA)  # takes the final dot, hangs up before its reply
    good = peers.start()
    make_route("dest.test", hosts_text((lossy, 0), (good, 10)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert good.wait_for_messages(1) and recipients(mid) == [(0, "delivered")]
    lines = log()
    first, second = _dcids(lines)
    story = lines[lines.index(f"Delivery start DCID {first} MID {mid} to RID [0]") :]
    assert story[1] == f"Possible Delivery: DCID {first} MID {mid} to RID [0]"
    assert re.fullmatch(
        rf"Delayed: DCID {first} MID {mid} From: <sender@origin.test> To: <a@dest.test> RID 0 - 4.4.0 - "
        r"Other network problem \('000', \['.+'\]\)",
        story[2],
    )
    assert story[3].startswith(f"Connection Error: DCID {first} domain: dest.test IP: {lossy.host} ")
    assert story[4] == f"DCID {first} close (closed by the peer)"
    assert story[5] == f"New SMTP DCID {second} interface Data 1 address {good.host} port {good.port}"
    assert f"Message done DCID {second} MID {mid} to RID [0]" in story


def test_possible_delivery_counts_as_delivered_when_the_bounce_profile_says_so(peers):
    profile = BounceProfile.objects.create(
        name="trusting", after_possible_delivery=BounceProfile.AfterPossibleDelivery.DELIVERED
    )
    lossy = peers.start(drop_at=Stage.DATA)
    good = peers.start()
    make_route("dest.test", hosts_text((lossy, 0), (good, 10)), bounce_profile_id=profile.pk)
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delivered")] and good.messages == []
    lines = log()
    (first,) = _dcids(lines)
    story = lines[lines.index(f"Delivery start DCID {first} MID {mid} to RID [0]") :]
    assert story[:3] == [
        f"Delivery start DCID {first} MID {mid} to RID [0]",
        f"Possible Delivery: DCID {first} MID {mid} to RID [0]",
        f"Message done DCID {first} MID {mid} to RID [0]",  # no Response: there was none
    ]
    assert f"Message finished MID {mid} done" in story and not grep(r"^(Delayed|Bounced):", story)
    assert DeliveryAttempt.objects.get(message_id=mid).outcome == "delivered"


def test_a_greeting_refusal_reads_as_in_the_seed(peers):
    busy = peers.start(greeting="421 4.3.2 Mail system full")
    good = peers.start()
    make_route("dest.test", hosts_text((busy, 0), (good, 10)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert good.wait_for_messages(1)
    lines = log()
    first, second = _dcids(lines)
    story = lines[lines.index(f"New SMTP DCID {first} interface Data 1 address {busy.host} port {busy.port}") :]
    assert story[1] == (
        f"Connection Error: DCID {first} domain: dest.test IP: {busy.host} port: {busy.port} "
        "details: 421-4.3.2 Mail system full interface: Data 1 reason: unexpected SMTP response"
    )
    assert story[2] == f"DCID {first} close (closed by the peer)"
    assert story[3] == f"New SMTP DCID {second} interface Data 1 address {good.host} port {good.port}"
    assert not grep("^Delayed:", lines)  # the host failed, not the recipient: no soft bounce on the message


def test_every_connection_ends_with_its_close_line(peers, settings):
    settings.ESAROUTES_DELIVERY_IDLE = 0
    timing_out = peers.start(stall_at=Stage.RCPT)
    good = peers.start()
    make_route("dest.test", hosts_text((timing_out, 0), (good, 10)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert good.wait_for_messages(1)
    lines = log()
    first, second = _dcids(lines)
    assert f"DCID {first} close (timed out)" in lines
    assert lines[-1] == f"DCID {second} close"  # our QUIT
    delayed = grep(rf"^Delayed: DCID {first} MID {mid} ", lines)
    assert len(delayed) == 1 and delayed[0].endswith("- 4.4.0 - Other network problem ('000', ['timeout'])")


def test_a_last_host_connection_error_delays_with_one_line(peers):
    busy = peers.start(rcpt="451 4.3.0 try later")
    make_route("dest.test", hosts_text((busy, 0), (peers.refused(), 10)))
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    assert recipients(mid) == [(0, "delayed")]
    delayed = grep("^Delayed:", log(mid))
    # the 451 as it happened, then the refused host's failure when no host was left
    assert len(delayed) == 2
    assert "('451', ['4.3.0 try later'])" in delayed[0] and "('000', [" in delayed[1]


def test_a_failed_tls_handshake_is_logged_before_its_connection_error(peers):
    untrusted = peers.start(starttls=True)  # its certificate is not in the system store
    good = peers.start()
    make_route("dest.test", hosts_text((untrusted, 0), (good, 10)), tls="required_verify")
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    lines = log()
    first = _dcids(lines)[0]
    story = lines[
        lines.index(f"New SMTP DCID {first} interface Data 1 address {untrusted.host} port {untrusted.port}") :
    ]
    assert re.fullmatch(rf"DCID {first} TLS failed: TLS handshake failed: .+", story[1])
    assert story[2].startswith(f"Connection Error: DCID {first} ")
    assert story[3] == f"DCID {first} IP {untrusted.host} TLS was required but could not be successfully negotiated"
    assert story[4] == f"DCID {first} close"
