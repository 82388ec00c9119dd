"""The seed's story, end to end against Postfix's smtp-sink: host A answers 452 to RCPT, the message goes to host B.

Two equal hosts, the first an smtp-sink run with ``-r RCPT -b "452 4.3.1 Insufficient system resources"``. The
mail log must tell why the mail moved, in order and at the moment it happened, in ``mail.current``, on the log
page and on the message's tracking page alike.
"""

from __future__ import annotations

import html
import re

import pytest
from django.db.models import Q, QuerySet

from delivery import worker
from delivery.models import MailLogLine
from tests.delivery.conftest import queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]

BUSY = "452 4.3.1 Insufficient system resources"


def _page_lines(body: str) -> list[str]:
    """The log lines a page shows, as text: each `<div class="line">` without its markup, time and level."""
    rows = re.findall(r'<div class="line"[^>]*>(.*?)</div>', body, re.DOTALL)
    texts = [html.unescape(re.sub(r"<[^>]+>", "", row)) for row in rows]
    return [re.sub(r"^.*? \d{2}:\d{2}:\d{2} \d{4} \w+: ", "", t) for t in texts]


def test_the_seed_failover_reads_with_the_452_everywhere(smtp_sinks, as_user, settings):
    settings.ESAROUTES_DELIVERY_IDLE = 0  # each connection ends with its batch: its close line is in the story
    busy = smtp_sinks("-r", "RCPT", "-b", BUSY)
    good = smtp_sinks(host="127.0.0.2")  # the ESA allows one port per host address
    make_route("example.test", f"{busy.host}:{busy.port}/pri=0, {good.host}:{good.port}/pri=0")
    # Equal hosts take turns per connection, from a shared counter whose position is unknown here: of two batches
    # in a row, one starts at the busy host.
    mids = []
    for _ in range(2):
        mids.append(queue_message("user@example.test"))
        worker.deliver_batch(mids[-1:])
    assert [recipients(mid) for mid in mids] == [[(0, "delivered")], [(0, "delivered")]]
    story = {mid: _story(mid) for mid in mids}
    moved = [mid for mid in mids if any(t.startswith("Delayed:") for t in story[mid])]
    assert len(moved) == 1, "\n".join(t for m in mids for t in story[m])
    mid = moved[0]
    lines = story[mid]
    first = int(re.match(r"New SMTP DCID (\d+) ", lines[0]).group(1))
    second = int(re.match(r"New SMTP DCID (\d+) ", lines[4]).group(1))
    expected = [
        f"New SMTP DCID {first} interface Data 1 address {busy.host} port {busy.port}",
        f"Delivery start DCID {first} MID {mid} to RID [0]",
        f"Delayed: DCID {first} MID {mid} From: <sender@origin.test> To: <user@example.test> RID 0 - 4.3.1 - "
        f"Mail system full ('452', ['4.3.1 Insufficient system resources'])",
        f"DCID {first} close",
        f"New SMTP DCID {second} interface Data 1 address {good.host} port {good.port}",
        f"Delivery start DCID {second} MID {mid} to RID [0]",
        f"Message done DCID {second} MID {mid} to RID [0]",
    ]
    assert lines[:7] == expected
    assert lines[7] == f"MID {mid} RID [0] Response '2.0.0 Ok'"  # smtp-sink's reply to the dot
    assert lines[8:] == [f"Message finished MID {mid} done", f"DCID {second} close"]

    # The times are the moments things happened, in the order they happened.
    rows = list(_rows(mid))
    assert [r.at for r in rows] == sorted(r.at for r in rows)

    # mail.current: the same lines, in the same order, each with its time and level.
    on_disk = [
        line.split(" Info: ", 1)[1]
        for line in (settings.MAIL_LOG_DIR / "mail.current").read_text().splitlines()
        if " Info: " in line
    ]
    assert _subsequence(lines, on_disk)

    client = as_user("alice")
    # The log page, filtered to this message's MID, and to the busy connection's DCID.
    by_mid = _page_lines(client.get(f"/log/?mid={mid}").content.decode())
    assert by_mid == list(MailLogLine.objects.filter(mid=mid).order_by("id").values_list("text", flat=True))
    assert _subsequence([t for t in lines if f"MID {mid} " in t], by_mid)
    assert _page_lines(client.get(f"/log/?dcid={first}").content.decode()) == lines[:4]
    # The tracking page: the reply among the delivery attempts, and the whole story in its log, in order.
    tracking = client.get(f"/tracking/{mid}/").content.decode()
    assert "4.3.1 Insufficient system resources" in html.unescape(tracking)
    assert _subsequence(lines, _page_lines(tracking))


def _rows(mid: int) -> QuerySet[MailLogLine]:
    """The message's delivery lines, and those of the connections it went over, in id order."""
    dcids = set(MailLogLine.objects.filter(mid=mid, dcid__isnull=False).values_list("dcid", flat=True))
    mine = Q(mid=mid) & (Q(text__startswith="Message finished ") | Q(text__contains="] Response "))
    return MailLogLine.objects.filter(Q(dcid__in=dcids) | mine).order_by("id")


def _story(mid: int) -> list[str]:
    return [r.text for r in _rows(mid)]


def _subsequence(needles: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)
