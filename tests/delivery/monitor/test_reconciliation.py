"""Every figure on every page and command equals the truth, after a scripted day of mail.

Mail goes in through the real listener (in-process, on a loopback port) and out through the worker's delivery
path (`worker.deliver_batch`: the planner, the runner's event loop and its connection pool, the recorder) to
real peers on loopback: deliveries, a 4xx failover, a 5xx, an all-hosts-down spell retried while the hosts are
still down and then after the route is fixed, an operator's bounce and delete, an expiry, and the DSNs these
bounces generate. The truth is what the peers received and what the scenario made them answer, cross-checked
with the mail log; then the dashboard (counters, chart, destinations), the domain status page, `hoststatus`,
`tophosts`, the hosts page, tracking, a message's page and `/metrics` must each show exactly that.
"""

from __future__ import annotations

import html
import io
import re
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from delivery import worker
from delivery.models import MailLogLine, Message, Recipient
from delivery.monitor import counters
from delivery.outbound import hosts, runner
from delivery.spool import actions
from routes import domains, services
from routes.models import Route
from tests.listener.conftest import SENDER, base_rows, start_listener  # noqa: F401 (fixtures)
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def wait_until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    """Wait for a condition another thread makes true (a gauge published, a connection closed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def mid_of(address: str) -> int:
    return Recipient.objects.get(address=address).message_id


def deliver(*mids: int) -> None:
    worker.deliver_batch(list(mids), fill=False)


def cells(body: str, row_attr: str, key: str) -> dict[str, str]:
    """The `data-col` cells of the table row `<tr {row_attr}="{key}">`, as text."""
    m = re.search(rf'<tr[^>]*{row_attr}="{re.escape(key)}"[^>]*>(.*?)</tr>', body, re.DOTALL)
    assert m, f"no row {key} in the page"
    return {
        name: html.unescape(re.sub(r"<[^>]+>", "", value)).strip()
        for name, value in re.findall(r'data-col="(\w+)"[^>]*>(.*?)</td>', m.group(1), re.DOTALL)
    }


def opened_minus_closed(by: str = "host") -> Counter[str]:
    """The connections the log shows open now (a New SMTP DCID line and no DCID close), per host, or per the
    recipient domain each was opened for (`by="domain"`: a connection carries one domain's mail)."""
    texts = list(MailLogLine.objects.order_by("id").values_list("text", by))
    new = {int(m.group(1)): key for t, key in texts if (m := re.match(r"New SMTP DCID (\d+) ", t))}
    closed = {int(m.group(1)) for t, _ in texts if (m := re.match(r"DCID (\d+) close", t))}
    return Counter(key for dcid, key in new.items() if dcid not in closed)


def counter_cells(body: str) -> dict[str, list[str]]:
    out = {}
    for key, row in re.findall(r'<tr data-counter="(\w+)">(.*?)</tr>', body, re.DOTALL):
        out[key] = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)]
    return out


def status_value(text: str, label: str) -> int:
    m = re.search(rf"^\s*{re.escape(label)}\s+(\d+)\s*$", text, re.MULTILINE)
    assert m, f"{label} not in\n{text}"
    return int(m.group(1))


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + want + '}') if labels else ''} (\S+)$"
    m = re.search(pattern, text, re.MULTILINE)
    assert m, f"{name} {labels} not in /metrics"
    return float(m.group(1))


def test_every_figure_on_every_page_equals_the_truth(peers, start_listener, as_user, settings):  # noqa: F811
    settings.ESAROUTES_DELIVERY_IDLE = 60.0  # connections stay open in the pool until the test lets them go
    good = peers.start()
    busy = peers.start(rcpt="451 4.3.0 busy, try later")
    good2 = peers.start()
    reject = peers.start(rcpt="550 5.1.1 no such user")
    dead1, dead2, dead3 = peers.refused(), peers.refused(), peers.refused()
    at = {p: f"{p.host}:{p.port}" for p in (good, busy, good2, reject, dead1, dead2, dead3)}
    make_route("ok.test", at[good])
    make_route("sender.test", at[good])  # where the DSNs go: SENDER is alice@sender.test
    make_route("oper.test", at[good])
    make_route("fail.test", f"{at[busy]}/pri=0, {at[good2]}/pri=10")
    make_route("hard.test", at[reject])
    make_route("down.test", f"{at[dead1]}/pri=0, {at[dead2]}/pri=10")
    make_route("exp.test", at[dead3])

    smtpd = start_listener()
    for rcpts in (
        ["a@ok.test", "b@ok.test"],
        ["c@ok.test"],
        ["x@fail.test"],
        ["y@hard.test"],
        ["z@down.test"],
        ["e@exp.test"],
        ["p@oper.test", "q@oper.test"],
    ):
        smtpd.send(rcpts)
    addresses = ("a@ok.test", "c@ok.test", "x@fail.test", "y@hard.test", "z@down.test", "e@exp.test", "p@oper.test")
    ok1, ok2, fail, hard, down, exp, oper = (mid_of(a) for a in addresses)

    # 1. deliveries, the failover, the 5xx, the first all-hosts-down try, the first try of what will expire
    deliver(ok1, ok2, fail, hard, down, exp)
    # the connections of the pool are still open: the gauge (read live) equals the log's opened minus closed
    open_now = opened_minus_closed()
    assert sum(open_now.values()) >= 1
    wait_until(
        lambda: Counter({h: n for (h, _), n in hosts.open_connections().items()}) == open_now,
        "the open connections gauge never matched the log",
    )
    body = as_user("alice").get("/hosts/").content.decode()
    for peer in (good, good2):
        assert cells(body, "data-host", at[peer])["connections_out"] == str(open_now[peer.host])

    # 2. the operator bounces one recipient and deletes the other
    actions.bounce_recipients(
        actions.select_recipients(recipient_ids=[Recipient.objects.get(address="p@oper.test").pk]), actor="test"
    )
    actions.delete_recipients(
        actions.select_recipients(recipient_ids=[Recipient.objects.get(address="q@oper.test").pk]), actor="test"
    )
    # 3. the all-hosts-down spell, retried while the hosts are still down, then after the route is fixed
    actions.deliver_now(actor="test", mid=down)
    deliver(down)
    route = Route.objects.get(domain="down.test")
    services.route_update(
        route_id=route.pk,
        data=services.RouteData(domain="down.test", destination=domains.parse_hosts(at[good])),
        actor="test",
    )
    actions.deliver_now(actor="test", mid=down)
    deliver(down)
    # 4. the expiry: the delayed message is now older than the bounce profile keeps it
    Message.objects.filter(pk=exp).update(received_at=timezone.now() - timedelta(days=4))
    actions.deliver_now(actor="test", mid=exp)
    deliver(exp)
    # 5. the DSNs of the three hard bounces go to the sender
    dsns = list(Message.objects.filter(bounce_of__isnull=False).values_list("pk", flat=True))
    assert len(dsns) == 3
    deliver(*dsns)

    # --- the truth: what the peers received, what they were scripted to answer, what the log says ------
    got = Counter(r for p in (good, good2) for m in p.messages for r in m.rcpt_tos)
    assert got == Counter(
        {"a@ok.test": 1, "b@ok.test": 1, "c@ok.test": 1, "x@fail.test": 1, "z@down.test": 1, SENDER: 3}
    )
    assert not busy.messages and not reject.messages
    truth = {  # domain: (active, delivered, soft bounce events, hard bounced, deleted, delay events)
        "ok.test": (0, 3, 0, 0, 0, 0),
        "fail.test": (0, 1, 1, 0, 0, 0),  # busy's 451, then delivered by good2
        "hard.test": (0, 0, 0, 1, 0, 0),  # reject's 550
        "down.test": (0, 1, 4, 0, 0, 2),  # twice: refused by dead1 (failover) and dead2 (delayed); then good
        "exp.test": (0, 0, 1, 1, 0, 1),  # refused by dead3 (delayed), then expired
        "oper.test": (0, 0, 0, 1, 1, 0),  # bounced and deleted by the operator
        "sender.test": (0, 3, 0, 0, 0, 0),  # the three DSNs
    }
    total = [sum(t[i] for t in truth.values()) for i in range(6)]
    messages_received = 7 + len(dsns)
    assert (total[1], total[3]) == (sum(got.values()), 3)
    lines = list(MailLogLine.objects.values_list("text", flat=True))
    # a Delayed: line for every recipient a reply moved (the failover) and for every delay; a Bounced: per hard bounce
    assert sum(t.startswith("Delayed:") for t in lines) == 1 + total[5]
    assert sum(t.startswith("Bounced:") for t in lines) == total[3]

    # --- the dashboard: counters all time and in the last 15 minutes, chart, destinations -------------
    client = as_user("alice")
    body = client.get("/").content.decode()
    c = counter_cells(body)
    expected = {
        "received": messages_received,
        "delivered": total[1],
        "soft_bounced": total[2],
        "hard_bounced": total[3],
        "delayed": total[5],
        "active": 0,
        "delayed_now": 0,
    }
    for key, value in expected.items():
        assert c[key][0] == str(value), (key, c[key])
    for key in ("delivered", "soft_bounced", "hard_bounced", "delayed"):
        assert c[key][3] == str(expected[key]), (key, "last 15 min", c[key])
    assert c["received"][3] == str(messages_received - 1)  # the expired message was received "4 days ago"
    for key in expected:
        assert counters.label(key) in body
    chart = set(re.findall(r"<title>(\d\d:\d\d): (\d+) delivered, (\d+) delayed, (\d+) hard bounced</title>", body))
    assert [sum(int(bar[i]) for bar in chart) for i in (1, 2, 3)] == [total[1], total[5], total[3]]
    assert "Recipient events per minute" in body and re.search(r'<text class="tick"[^>]*>\d\d:\d0</text>', body)
    for domain, (active, delivered, soft, hard_n, _, _) in truth.items():
        row = cells(body, "data-domain", domain)
        assert (row["active"], row["delivered"], row["soft_bounced"], row["hard_bounced"]) == tuple(
            map(str, (active, delivered, soft, hard_n))
        ), domain

    # --- domain status page and hoststatus, tophosts --------------------------------------------------
    # connections out per domain: the log's open connections by the domain each was opened for (the gauge is
    # published within a second of a change)
    open_by_domain = opened_minus_closed(by="domain")
    assert open_by_domain["ok.test"] >= 1 and open_by_domain["sender.test"] >= 1  # both on `good`, not shared
    wait_until(
        lambda: Counter(hosts.open_connections_by_domain()) == open_by_domain,
        "the open connections gauge per domain never matched the log",
    )
    for domain, (active, delivered, soft, hard_n, deleted, _) in truth.items():
        page = html.unescape(client.get(f"/hosts/domain/{domain}/").content.decode())
        out = io.StringIO()
        call_command("hoststatus", domain, stdout=out)
        for text in (page, out.getvalue()):
            assert status_value(text, "Soft Bounced Events") == soft, domain
            assert status_value(text, "Hard Bounced Recipients") == hard_n, domain
            assert status_value(text, "Delivered Recipients") == delivered, domain
            assert status_value(text, "Deleted Recipients") == deleted, domain
            assert status_value(text, "Active Recipients") == active, domain
            assert status_value(text, "Completed Recipients") == delivered + hard_n + deleted, domain
            assert status_value(text, "Current Outbound Connections") == open_by_domain[domain], domain
    out = io.StringIO()
    call_command("tophosts", "--limit", "50", stdout=out)
    assert opened_minus_closed(by="domain") == open_by_domain  # nothing opened or closed meanwhile
    for domain, (active, delivered, soft, hard_n, _, _) in truth.items():
        m = re.search(
            rf"^\s*\d+[ *]\s+{re.escape(domain)}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", out.getvalue(), re.M
        )
        assert m, (domain, out.getvalue())
        assert tuple(map(int, m.groups())) == (active, open_by_domain[domain], delivered, soft, hard_n), domain

    # --- hosts page: recipients delivered and not delivered by each host ------------------------------
    host_truth = {  # peer: (delivered, not delivered, failed connections in a row)
        good: (got.total() - 1, 0, 0),
        good2: (1, 0, 0),
        busy: (0, 1, 0),
        reject: (0, 1, 0),
        dead1: (0, 2, 2),
        dead2: (0, 2, 2),
        dead3: (0, 1, 1),
    }
    body = client.get("/hosts/").content.decode()
    for peer, (delivered, failed, failures) in host_truth.items():
        row = cells(body, "data-host", at[peer])
        assert (row["delivered"], row["failed"], row["failures"]) == tuple(map(str, (delivered, failed, failures)))

    # --- tracking: the messages with a recipient of each outcome; a message's tries and attempt rows ----
    def found(query: str) -> set[int]:
        return {int(m) for m in re.findall(r'<tr data-mid="(\d+)"', client.get(f"/tracking/?{query}").content.decode())}

    assert found("outcome=delivered&received=all") == {ok1, ok2, fail, down, *dsns}
    assert found("outcome=hard_bounced&received=all") == {hard, exp, oper}
    assert found("outcome=soft_bounced&received=all") == {fail, down, exp}
    assert found("outcome=queued&received=all") == set()
    page = client.get(f"/tracking/{fail}/").content.decode()
    attempts = re.search(r'<table class="grid" id="attempts">(.*?)</table>', page, re.DOTALL).group(1)
    assert attempts.count("<tr class=") == 2  # busy's 451 and good2's 250, in one try
    assert re.search(r'<tr data-rid="0">.*?<td class="num">1</td>', page, re.DOTALL)

    # --- /metrics -------------------------------------------------------------------------------------
    text = client.get("/metrics").content.decode()
    assert metric(text, "esaroutes_messages_received_total") == messages_received
    assert metric(text, "esaroutes_soft_bounce_events_total") == total[2]
    assert metric(text, "esaroutes_delay_events_total") == total[5]
    assert metric(text, "esaroutes_queue_recipients") == 0
    for domain, (_, delivered, _, hard_n, _, _) in truth.items():
        assert metric(text, "esaroutes_recipients_delivered_total", domain=domain) == delivered
        assert metric(text, "esaroutes_recipients_bounced_total", domain=domain) == hard_n
    for peer, (delivered, failed, _) in host_truth.items():
        assert metric(text, "esaroutes_host_delivered_total", host=peer.host, port=str(peer.port)) == delivered
        assert metric(text, "esaroutes_host_failures_total", host=peer.host, port=str(peer.port)) == failed

    # --- connections out falls to 0 within seconds of the last DCID close ------------------------------
    runner.get_runner().idle = 0.5  # the pool's reaper closes what has been idle that long
    wait_until(lambda: not opened_minus_closed(), "the pooled connections were never closed")
    wait_until(lambda: not hosts.open_connections(), "the gauge did not fall to 0 after the last close")
    body = client.get("/hosts/").content.decode()
    assert set(re.findall(r'data-col="connections_out">(\d+)<', body)) == {"0"}
    body = client.get("/").content.decode()
    assert set(re.findall(r'data-col="connections_out">(\d+)<', body)) == {"0"}
    text = client.get("/metrics").content.decode()
    assert all(float(v) == 0 for v in re.findall(r"^esaroutes_host_connections_out\{[^}]*\} (\S+)$", text, re.M))
