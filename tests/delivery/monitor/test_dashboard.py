from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from delivery.models import DeliveryAttempt
from delivery.monitor import selectors
from esaroutes import tasks
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db
Outcome = DeliveryAttempt.Outcome


def row(counters, key):
    return next(c for c in counters if c.key == key)


def test_counters_since_start_and_per_window():
    now = timezone.now()
    old = make_message(at=now - timedelta(minutes=10))
    attempt(old, host="mx1.dest.test", at=now - timedelta(minutes=10))
    recent = make_message(recipients=("a@dest.test", "b@dest.test"))
    attempt(
        recent, host="mx1.dest.test", code=451, reply="busy", outcome=Outcome.DELAYED, at=now - timedelta(seconds=30)
    )
    bounced = make_message(at=now - timedelta(minutes=3))
    attempt(bounced, host="mx1.dest.test", code=550, reply="no", outcome=Outcome.BOUNCED, at=now - timedelta(minutes=3))
    make_message(at=now - timedelta(hours=2))
    c = selectors.counters(now)
    assert row(c, "received").total == 4 and row(c, "received").windows == (1, 2, 3)
    assert row(c, "delivered").total == 1 and row(c, "delivered").windows == (0, 0, 1)
    assert row(c, "soft_bounced").windows == (2, 2, 2) and row(c, "delayed").total == 2
    assert row(c, "hard_bounced").windows == (0, 1, 1)
    assert row(c, "active").total == 3  # two delayed, one never tried
    assert row(c, "delayed_now").total == 2


def test_chart_counts_per_minute():
    now = timezone.now()
    m = make_message(recipients=("a@dest.test", "b@dest.test"))
    attempt(m, host="mx1.dest.test", at=now - timedelta(minutes=5))
    chart = selectors.per_minute_chart(now)
    assert len(chart.minutes) == 60 and chart.peak == 2
    assert sum(b["delivered"] for b in chart.minutes) == 2


def test_destinations_table_and_links(as_user):
    m = make_message(recipients=("a@dest.test", "b@dest.test"))
    attempt(m, host="mx1.dest.test", rids=(0,))
    other = make_message(recipients=("x@other.test",))
    attempt(other, host="mx.other.test", code=550, reply="no", outcome=Outcome.BOUNCED)
    dests = {d.domain: d for d in selectors.destinations(timezone.now())}
    assert (dests["dest.test"].active, dests["dest.test"].delivered, dests["dest.test"].host_up) == (1, 1, True)
    assert dests["dest.test"].host == "mx1.dest.test:25"
    assert dests["other.test"].hard_bounced == 1
    body = as_user("carol").get("/").content.decode()
    assert "/tracking/?domain=dest.test&amp;outcome=delivered&amp;received=all" in body
    assert "/tracking/?domain=other.test&amp;outcome=hard_bounced&amp;received=all" in body


def test_polling_returns_the_panel_only(as_user):
    response = as_user("alice").get("/", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="dashboard-panel"') and "<html" not in body
    assert 'hx-trigger="every 3s"' in body


def test_history_restore_gets_the_full_page(as_user):
    response = as_user("alice").get("/", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert b"<html" in response.content


def test_worker_heartbeat(as_user):
    cache.delete(tasks.HEARTBEAT_KEY)
    client = as_user("alice")
    assert b"No worker has reported yet" in client.get("/").content
    cache.set(tasks.HEARTBEAT_KEY, {"at": (timezone.now() - timedelta(seconds=7)).isoformat(), "host": "w1"})
    body = client.get("/").content.decode()
    assert re.search(r"Worker last seen [78] s ago \(w1\)", body)
    cache.delete(tasks.HEARTBEAT_KEY)


def test_help_desk_lands_on_tracking(as_user):
    response = as_user("dave").get("/")
    assert response.status_code == 302 and response.url == "/tracking/"
