"""Destination limits enforced where connections open (delivery.outbound.runner, delivery.slots): real loopback
peers, the real runner and recorder, several batches at once as several workers deliver them.

A recipient held back by a limit is not a failure: no attempt row, no host marked down, no retry back-off; it
stays queued and goes when a slot or the window allows, and the log says so once per episode.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from delivery import slots, worker
from delivery.models import DeliveryAttempt, HostStatus, Recipient
from delivery.outbound import runner
from routes import services
from tests.delivery.conftest import grep, log, queue_message
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner", "fresh_slots")]


@pytest.fixture
def fresh_slots(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    settings.ESAROUTES_DELIVERY_IDLE = 0.0  # a connection closes when its group is through: its slot comes back
    settings.ESAROUTES_DELIVERY_BATCH = 6
    monkeypatch.setattr(runner, "SLOT_RETRY", 0.3)  # held-back mail is due again sooner (same code path)
    slots.flush()
    yield
    slots.flush()


def limit(destination: str, **kw: Any) -> None:
    services.create_destination(data=services.DestinationData(destination=destination, **kw), actor="test")


def active() -> int:
    return Recipient.objects.filter(state__in=[Recipient.State.QUEUED, Recipient.State.DELAYED]).count()


def deliver_everything(workers: int, timeout: float) -> None:
    """`workers` threads each claiming and delivering batches of due mail, as worker processes do, until the
    queue is empty."""
    deadline = time.monotonic() + timeout
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            if not worker.deliver_batch(fill=True, wait=True).claimed:
                stop.wait(0.05)  # nothing due now (held-back mail waits for its time)

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(work) for _ in range(workers)]
        while active() and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for future in futures:
            future.result()
    assert not active(), f"{active()} recipients still queued"


def test_max_connections_2_is_never_passed_by_several_workers(peers):
    peer = peers.start()
    make_route("dest.test", f"{peer.host}:{peer.port}")
    limit("dest.test", max_connections=2, max_messages_per_connection=2)
    mids = [queue_message(f"u{i}@dest.test") for i in range(40)]
    deliver_everything(workers=3, timeout=90)
    assert len(peer.messages) == 40
    assert peer.peak_sessions <= 2
    assert Recipient.objects.filter(message_id__in=mids, state=Recipient.State.DELIVERED).count() == 40
    # held back is not a failure: one attempt each (the delivery), no host marked down
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}
    assert set(DeliveryAttempt.objects.values_list("outcome", flat=True)) == {DeliveryAttempt.Outcome.DELIVERED}
    assert not HostStatus.objects.filter(consecutive_failures__gt=0).exists()
    reached = grep(r"^Maximum outbound connections 2 reached for dest\.test$", log())
    assert reached, "the limit never held anything back: the test proves nothing"
    assert len(reached) < 40  # once per episode, not once per recipient


def test_a_slot_given_back_wakes_the_mail_held_back_for_it_without_waiting_for_the_retry(peers, monkeypatch):
    """SLOT_RETRY far beyond the test's deadline: only the wake-up on release can send the backlog."""
    monkeypatch.setattr(runner, "SLOT_RETRY", 300.0)
    peer = peers.start(data_delay=0.2)  # the workers' sessions overlap: most of them are refused the slot
    make_route("dest.test", f"{peer.host}:{peer.port}")
    limit("dest.test", max_connections=1, max_messages_per_connection=1)
    mids = [queue_message(f"u{i}@dest.test") for i in range(12)]
    deliver_everything(workers=3, timeout=120)
    assert len(peer.messages) == 12
    assert peer.peak_sessions <= 1
    assert Recipient.objects.filter(message_id__in=mids, state=Recipient.State.DELIVERED).count() == 12
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}
    assert grep(r"^Maximum outbound connections 1 reached for dest\.test$", log()), "nothing was held back"


def test_with_a_limit_of_1_each_burst_of_mail_held_back_is_logged_again(peers):
    """A slot taken never leaves one to spare with a limit of 1: the episode ends when a slot is given back and no
    mail waits for one (the burst is through), so a later burst held back says so again, not hidden by the
    first's line."""
    peer = peers.start(data_delay=0.2)  # the two workers' sessions overlap: one is refused the slot
    make_route("dest.test", f"{peer.host}:{peer.port}")
    limit("dest.test", max_connections=1, max_messages_per_connection=1)
    reached: list[int] = []
    for burst in range(2):
        for i in range(12):
            queue_message(f"b{burst}-{i}@dest.test")
        deliver_everything(workers=2, timeout=90)
        worker.shutdown()  # the burst's last connection closed and its slot given back before the next burst
        reached.append(len(grep(r"^Maximum outbound connections 1 reached for dest\.test$", log())))
    assert len(peer.messages) == 24
    assert peer.peak_sessions <= 1
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}
    assert reached[0] >= 1, "the first burst held nothing back: the test proves nothing"
    assert reached[1] > reached[0], "the second burst was held back without a line"
    assert reached[1] < 24  # once per episode, not once per recipient


def test_the_slots_of_a_dead_worker_come_back_and_the_backlog_completes(peers):
    peer = peers.start()
    make_route("dest.test", f"{peer.host}:{peer.port}")
    limit("dest.test", max_connections=2)
    # a worker that died holding both slots: nobody refreshes them
    assert slots.acquire("dest.test", "dead-machine:1:1", 2)
    assert slots.acquire("dest.test", "dead-machine:1:2", 2)
    started = time.monotonic()
    for i in range(6):
        queue_message(f"u{i}@dest.test")
    deliver_everything(workers=2, timeout=60)
    assert time.monotonic() - started >= slots.SLOT_TTL * 0.5  # nothing went while the dead slots counted
    assert len(peer.messages) == 6
    assert peer.peak_sessions <= 2
    assert slots.in_use("dest.test") == 0  # every slot given back when its connection closed
    # once while the dead slots held it all, at most once more each time it is at its limit again
    assert 1 <= len(grep(r"^Maximum outbound connections 2 reached for dest\.test$", log())) <= 3


def test_one_route_for_two_domains_applies_each_domains_own_connection_limit(peers):
    peer = peers.start(data_delay=0.3)  # a slow server: the sessions of one batch overlap
    make_route("ALL", f"{peer.host}:{peer.port}")
    limit("a.test", max_connections=1, max_messages_per_connection=1)
    limit("b.test", max_connections=3, max_messages_per_connection=1)
    for i in range(12):
        queue_message(f"u{i}@a.test", f"u{i}@b.test")
    deliver_everything(workers=2, timeout=90)
    assert sorted(r for m in peer.messages for r in m.rcpt_tos) == sorted(
        f"u{i}@{d}" for i in range(12) for d in ("a.test", "b.test")
    )
    # each message's transaction carries one domain: each domain's recipients went on its own connections
    assert all(len({r.rpartition("@")[2] for r in m.rcpt_tos}) == 1 for m in peer.messages)
    assert peer.peak_sessions_for("a.test") == 1
    assert 2 <= peer.peak_sessions_for("b.test") <= 3  # not held to a.test's 1 (the limit of the first domain)
    assert peer.peak_sessions <= 1 + 3
    reached = grep(r"^Maximum outbound connections 1 reached for a\.test$", log())
    assert reached, "a.test's limit never held anything back: the test proves nothing"
    assert not grep(r"reached for b\.test", log()) or grep(
        r"^Maximum outbound connections 3 reached for b\.test$", log()
    )
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}


def test_a_pooled_connection_carries_only_the_domain_it_was_opened_for(peers, settings):
    settings.ESAROUTES_DELIVERY_IDLE = 30.0  # connections stay in the pool between batches
    peer = peers.start()
    make_route("ALL", f"{peer.host}:{peer.port}")
    limit("a.test", max_connections=5)
    limit("b.test", max_connections=5)  # the same limits: only the domain tells their connections apart
    for address in ("u1@a.test", "u1@b.test", "u2@a.test", "u2@b.test"):
        worker.deliver_batch([queue_message(address)], fill=False)
    assert [m.rcpt_tos for m in peer.wait_for_messages(4)] == [
        ("u1@a.test",),
        ("u1@b.test",),
        ("u2@a.test",),
        ("u2@b.test",),
    ]
    assert peer.connections == 2  # one per domain, each reused by its own domain's next message
    assert slots.in_use("a.test") == 1 and slots.in_use("b.test") == 1  # each holds its own domain's slot


def _recipient_clock(seen: list[float]) -> Any:
    def rcpt(address: str) -> None:
        seen.append(time.monotonic())
        return None

    return rcpt


def _max_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < window) for i, start in enumerate(times)), default=0)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_recipient_limit_of_30_per_minute_delays_the_rest_without_bouncing(peers):
    seen: list[float] = []
    peer = peers.start(rcpt=_recipient_clock(seen))
    make_route("dest.test", f"{peer.host}:{peer.port}")
    limit("dest.test", recipient_limit=30, recipient_minutes=1)
    for i in range(15):
        queue_message(*(f"u{i}-{j}@dest.test" for j in range(5)))  # 75 recipients: three windows' worth
    deliver_everything(workers=2, timeout=200)
    assert len(seen) == 75
    assert _max_in_any_window(seen, 60.0) <= 30
    assert max(seen) - min(seen) >= 120.0 - 1.0  # the third window's recipients waited two minutes
    assert not Recipient.objects.exclude(state=Recipient.State.DELIVERED).exists()  # delayed, never bounced
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}
    lines = log()
    throttled = grep(r"^Delivery to dest\.test Data 1 throttled by recipient limit$", lines)
    resumed = grep(r"^Recipient limit expired; resume delivery to dest\.test Data 1$", lines)
    assert throttled
    # Once per episode, not per recipient. An episode runs from a refusal to the next grant, and each one ends
    # with its resume line (all the mail went in the end): as many of one as of the other.
    assert len(resumed) == len(throttled)
    # Not once per window: the window slides charge by charge (each message's 5 recipients leave it 60 s after
    # their RCPTs), and mail held back is due the moment the oldest charge has left. A slow runner spreads a
    # window's charges over seconds; a retry quicker than that finds one charge gone, takes its room (resume)
    # and the window is full again for the next message (throttled): a new episode, rightly, within the minute.
    # So the bound is the rule's, for any timing: the window takes whole messages (5 recipients, limit 30), the
    # first refusal comes with 6 of the 15 in, each further episode starts with a refusal after one of the other
    # 9 was granted, and none follows the last of them: at most 1 + 8.
    assert len(throttled) <= 9


def test_an_idle_pooled_connection_gives_its_slot_to_another_runner_that_waits(peers, settings):
    """Runner A keeps an idle pooled connection (idle 10 minutes) holding dest.test's only slot; runner B, another
    worker process's, is refused and marks the slot wanted: A's reaper closes the idle connection at once and B's
    mail goes, long before A's idle time would have closed it."""
    settings.ESAROUTES_DELIVERY_IDLE = 600.0
    peer = peers.start()
    make_route("dest.test", f"{peer.host}:{peer.port}")
    limit("dest.test", max_connections=1)
    queue_message("first@dest.test")
    deliver_everything(workers=1, timeout=30)
    first = runner._runner
    assert first is not None and slots.in_use("dest.test") == 1  # idle in A's pool, its slot held
    runner._runner = None  # the next batch is another process's runner
    try:
        queue_message("second@dest.test")
        deliver_everything(workers=1, timeout=30)
    finally:
        first.close()
    assert len(peer.messages) == 2
    assert peer.peak_sessions <= 1
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}
    assert grep(r"^DCID \d+ close$", log())


def test_per_ip_scope_counts_the_connected_address_and_moves_on_to_the_next(peers, dns_server, monkeypatch):
    """`pair.test` resolves to two addresses, a peer on each; 1 connection per destination IP: a full address
    sends the connection on to the next one, and when both are full the mail waits for a slot given back (woken
    then: SLOT_RETRY is beyond the test's deadline)."""
    monkeypatch.setattr(runner, "SLOT_RETRY", 300.0)
    two = peers.start_at("127.0.0.2", 0, data_delay=0.2)
    three = peers.start_at("127.0.0.3", two.port, data_delay=0.2)
    dns_server.add("pair.test", "A", "127.0.0.2")
    dns_server.add("pair.test", "A", "127.0.0.3")
    make_route("dest.test", f"[pair.test]:{two.port}")
    limit("dest.test", max_connections=1, max_messages_per_connection=1, limit_scope="ip")
    mids = [queue_message(f"u{i}@dest.test") for i in range(12)]
    deliver_everything(workers=3, timeout=120)
    assert len(two.messages) + len(three.messages) == 12
    assert two.messages and three.messages  # both addresses were used
    assert two.peak_sessions <= 1 and three.peak_sessions <= 1  # each address's own limit
    assert Recipient.objects.filter(message_id__in=mids, state=Recipient.State.DELIVERED).count() == 12
    # held back is not a failure: one attempt each, no host marked down, no connection error
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}
    assert set(DeliveryAttempt.objects.values_list("outcome", flat=True)) == {DeliveryAttempt.Outcome.DELIVERED}
    assert not HostStatus.objects.filter(consecutive_failures__gt=0).exists()
    lines = log()
    assert not grep(r"Connection Error", lines)
    assert grep(r"^Maximum outbound connections 1 reached for dest\.test$", lines), "nothing was held back"
    assert slots.in_use("dest.test|127.0.0.2") == 0 and slots.in_use("dest.test|127.0.0.3") == 0
    assert slots.in_use("dest.test") == 0  # nothing counted by the domain (nor by the host's name)


def test_per_ip_scope_tries_the_next_address_when_the_first_is_full(peers, dns_server):
    """The first address's only slot is held elsewhere: the connection goes to the second address at once."""
    two = peers.start_at("127.0.0.2", 0)
    three = peers.start_at("127.0.0.3", two.port)
    dns_server.add("pair.test", "A", "127.0.0.2")
    dns_server.add("pair.test", "A", "127.0.0.3")
    make_route("dest.test", f"[pair.test]:{two.port}")
    limit("dest.test", max_connections=1, limit_scope="ip")
    assert slots.acquire("dest.test|127.0.0.2", "other-machine:1:1", 1)
    worker.deliver_batch([queue_message("u@dest.test")], fill=False)
    assert [m.rcpt_tos for m in three.wait_for_messages(1)] == [("u@dest.test",)]
    assert two.connections == 0
    assert not grep(r"Maximum outbound connections", log())  # an address had room: nothing was held back


def test_an_ipv6_literal_recipient_held_back_for_a_slot_is_woken_when_one_is_given_back(peers, monkeypatch):
    """`user@[IPv6:::1]` is stored as `[ipv6:::1]` and counted as `::1`: the slot given back finds it (SLOT_RETRY
    beyond the test's deadline: only the wake-up can send the backlog)."""
    monkeypatch.setattr(runner, "SLOT_RETRY", 300.0)
    peer = peers.start(data_delay=0.2)
    make_route("ALL", f"{peer.host}:{peer.port}")
    limit("::1", max_connections=1, max_messages_per_connection=1)
    mids = [queue_message(f"u{i}@[IPv6:::1]") for i in range(9)]
    deliver_everything(workers=3, timeout=60)
    assert len(peer.messages) == 9
    assert peer.peak_sessions <= 1
    assert Recipient.objects.filter(message_id__in=mids, state=Recipient.State.DELIVERED).count() == 9
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}
    assert grep(r"^Maximum outbound connections 1 reached for \[ipv6:::1\]$", log()), "nothing was held back"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_per_ip_recipient_limit_counts_each_connected_address_on_its_own(peers, dns_server):
    """2 recipients per minute per destination IP, `pair.test` on two addresses: each address sees at most 2 in
    any minute, the two together more than one address's 2 (the domain scope would allow 2 in all), and the
    rest goes when the window moves, not bounced."""
    two_seen: list[float] = []
    three_seen: list[float] = []
    two = peers.start_at("127.0.0.2", 0, data_delay=0.3, rcpt=_recipient_clock(two_seen))
    three = peers.start_at("127.0.0.3", two.port, data_delay=0.3, rcpt=_recipient_clock(three_seen))
    dns_server.add("pair.test", "A", "127.0.0.2")
    dns_server.add("pair.test", "A", "127.0.0.3")
    make_route("dest.test", f"[pair.test]:{two.port}")
    limit(
        "dest.test",
        max_connections=1,
        max_messages_per_connection=1,
        recipient_limit=2,
        recipient_minutes=1,
        limit_scope="ip",
    )
    for i in range(6):
        queue_message(f"u{i}@dest.test")
    deliver_everything(workers=3, timeout=200)
    assert len(two_seen) + len(three_seen) == 6
    assert _max_in_any_window(two_seen, 60.0) <= 2 and _max_in_any_window(three_seen, 60.0) <= 2
    assert _max_in_any_window(two_seen + three_seen, 60.0) > 2  # counted per address, not for the domain
    assert not Recipient.objects.exclude(state=Recipient.State.DELIVERED).exists()
    assert set(Recipient.objects.values_list("attempts", flat=True)) == {1}
    assert grep(r"^Delivery to dest\.test Data 1 throttled by recipient limit$", log())
    assert two.messages and three.messages
