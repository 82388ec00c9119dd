"""The real path: the listener's commit rings the doorbell, a real Celery worker (on the configured broker:
Redis, or the embedded filesystem broker) claims and delivers; the sweep finds what no doorbell announced."""

from __future__ import annotations

import time

import pytest

from delivery import tasks
from delivery.models import Message
from delivery.spool import doorbell
from tests.delivery.conftest import hosts_text, queue_message
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def wait_done(mids: list[int], timeout: float = 30.0) -> None:
    """The peer's event says the mail arrived; the worker commits just after it: wait for that commit."""
    deadline = time.monotonic() + timeout
    while Message.objects.filter(pk__in=mids, state="queued").exists():
        assert time.monotonic() < deadline, "messages still queued"
        time.sleep(0.05)


def test_the_doorbell_reaches_a_real_worker(peers, celery_worker_thread):
    a, b = peers.start(), peers.start()
    make_route("dest.test", hosts_text((a, 0), (b, 0)))
    mids = [queue_message(f"u{i}@dest.test") for i in range(6)]
    deadline = time.monotonic() + 30
    while len(a.messages) + len(b.messages) < 6:
        assert time.monotonic() < deadline, "not delivered"
        time.sleep(0.05)
    wait_done(mids)
    assert sorted(r for m in a.messages + b.messages for r in m.rcpt_tos) == sorted(f"u{i}@dest.test" for i in range(6))


def test_the_sweep_sends_what_no_doorbell_announced(peers, celery_worker_thread, monkeypatch):
    good = peers.start()
    make_route("dest.test", hosts_text((good, 0)))
    monkeypatch.setattr(doorbell, "ring_many", lambda mids: None)  # the broker lost the doorbell
    mid = queue_message("lost@dest.test")
    # one batch task for everything due (0 when a stale task of an earlier test, still in the broker, took it)
    assert tasks.sweep() in (0, 1)
    assert good.wait_for_messages(1, timeout=30)[0].rcpt_tos == ("lost@dest.test",)
    wait_done([mid])
