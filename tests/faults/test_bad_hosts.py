"""Fault: destination hosts that misbehave. Each costs at most its configured timeout, once; then the host is
marked down and skipped, and the mail goes to the next host.

The delivery path is the real one (queue → plan → runner → real SMTP over loopback → record) run in this
process, as in tests/delivery/outbound/test_runner.py, with short timeouts; elapsed time is measured per batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from delivery import worker
from delivery.engine import Stage
from delivery.models import DeliveryAttempt, HostStatus, MailLogLine, Recipient
from delivery.outbound import runner
from tests.delivery.conftest import queue_message
from tests.faults.conftest import report
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TIMEOUT = 1.0  # connect, each command, the final dot
SLACK = 0.75  # our own work around one attempt: planning, two connections, recording


@pytest.fixture
def short_timeouts(settings: Any) -> Iterator[None]:
    settings.ESAROUTES_DELIVERY_CONNECT_TIMEOUT = TIMEOUT
    settings.ESAROUTES_DELIVERY_COMMAND_TIMEOUT = TIMEOUT
    settings.ESAROUTES_DELIVERY_DATA_TIMEOUT = TIMEOUT
    settings.ESAROUTES_DELIVERY_TRANSACTION_TIMEOUT = 10.0
    settings.ESAROUTES_DELIVERY_EHLO = "relay.esaroutes.test"
    settings.ESAROUTES_ROUTE_REFRESH = 0.0
    settings.ESAROUTES_HOST_DOWN_INITIAL = 60.0
    runner.shutdown_runner()
    yield
    runner.shutdown_runner()


CASES: dict[str, dict[str, Any]] = {
    "refuses the connection": {"kind": "refused"},
    "accepts TCP, never greets": {"kind": "silent"},
    "greets, then stalls at EHLO": {"stall_at": Stage.EHLO},
    "stalls at MAIL FROM": {"stall_at": Stage.MAIL},
    "stalls at RCPT TO": {"stall_at": Stage.RCPT},
    "stalls after the final dot": {"stall_at": Stage.DATA},
    "drops the connection after DATA": {"drop_at": Stage.DATA},
}


def _bad(peers: Any, case: dict[str, Any]) -> Any:
    kind = case.get("kind")
    if kind == "refused":
        return peers.refused()
    if kind == "silent":
        return peers.silent()
    return peers.start(**case)


@pytest.mark.usefixtures("short_timeouts")
@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_host_costs_its_timeout_once_then_is_skipped(peers, name):
    bad = _bad(peers, CASES[name])
    good = peers.start()
    make_route("dest.test", f"{bad.host}:{bad.port}/pri=0, {good.host}:{good.port}/pri=10")

    first = queue_message("a@dest.test")
    started = time.monotonic()
    worker.deliver_batch([first])
    cost = time.monotonic() - started
    assert good.wait_for_messages(1)[0].rcpt_tos == ("a@dest.test",)
    assert Recipient.objects.get(message_id=first).state == "delivered"
    assert cost <= TIMEOUT + SLACK, f"{name}: the first message took {cost:.2f} s (timeout {TIMEOUT} s)"
    status = HostStatus.objects.get(host=bad.host, port=bad.port)
    assert status.down_until is not None and status.down_until > timezone.now(), f"{name}: host not marked down"

    connections = bad.connections
    second = queue_message("b@dest.test")
    started = time.monotonic()
    worker.deliver_batch([second])
    skip_cost = time.monotonic() - started
    assert good.wait_for_messages(2)[1].rcpt_tos == ("b@dest.test",)
    assert bad.connections == connections, f"{name}: a host marked down was tried again"
    assert skip_cost < TIMEOUT / 2, f"{name}: the second message took {skip_cost:.2f} s with the host down"
    assert bad.messages == []
    report(f"bad host: {name}", f"first message {cost:.2f} s (timeout {TIMEOUT:.1f} s), next {skip_cost:.2f} s")


# --- a host that does not greet, among equal hosts: one connection waits, the rest goes to the other ----------

N = 16  # messages delivered at once, each its own batch (a doorbell each, as under load)


@pytest.fixture
def in_flight() -> Iterator[None]:
    """Batches handed to the recorder without waiting (`wait=False`): recorded and released by the end."""
    worker.shutdown()
    yield
    worker.shutdown()


def _deliver_at_once(mids: list[int]) -> None:
    for mid in mids:
        worker.deliver_batch([mid], fill=False, wait=False)


def _wait_through(mids: list[int], timeout: float = 30.0) -> None:
    """For the recorder's commits, which have no event to wait on."""
    deadline = time.monotonic() + timeout
    while Recipient.objects.filter(message_id__in=mids, state="delivered").count() < len(mids):
        assert time.monotonic() < deadline, "not delivered in time"
        time.sleep(0.05)


def _waits(mids: list[int]) -> list[float]:
    """Seconds each message spent between its acceptance and its delivery."""
    return [
        (r.finished_at - r.message.received_at).total_seconds()
        for r in Recipient.objects.filter(message_id__in=mids).select_related("message")
    ]


@pytest.mark.usefixtures("short_timeouts", "in_flight")
def test_a_silent_equal_host_holds_one_connection_and_the_other_takes_the_rest(peers):
    silent, good = peers.silent(), peers.start()
    make_route("dest.test", f"{silent.host}:{silent.port}/pri=0, {good.host}:{good.port}/pri=0")
    mids = [queue_message(f"u{i}@dest.test") for i in range(N)]
    _deliver_at_once(mids)
    _wait_through(mids)

    assert silent.connections == 1  # one connection waited for the banner; every other message passed it over
    got = sorted(m.rcpt_tos for m in good.messages)
    assert got == sorted((f"u{i}@dest.test",) for i in range(N))  # each delivered once, all by the other host
    waits = _waits(mids)
    assert max(waits) <= TIMEOUT + SLACK, f"the slowest message waited {max(waits):.2f} s (timeout {TIMEOUT} s)"
    status = HostStatus.objects.get(host=silent.host, port=silent.port)
    assert status.down_until is not None and status.down_until > timezone.now()  # its one timeout marked it down
    lines = list(MailLogLine.objects.values_list("text", flat=True))
    errors = [t for t in lines if t.startswith("Connection Error:") and f"port: {silent.port} " in t]
    assert len(errors) == 1 and "reason: connection timed out" in errors[0]
    skipped = [t for t in lines if f"skipped host {silent.host}:{silent.port} for dest.test" in t]
    assert skipped, "no line says why mail went to the other host"
    assert all(t.endswith(": its first connection has not greeted yet") for t in skipped)
    # the messages that passed it over: no attempt there (nothing was tried), one delivered attempt each
    assert not DeliveryAttempt.objects.filter(port=silent.port).exclude(outcome="connection_error").exists()
    assert DeliveryAttempt.objects.filter(port=silent.port).count() == 1  # the message that rode the one connection

    later = [queue_message(f"v{i}@dest.test") for i in range(4)]  # marked down: not tried at all
    _deliver_at_once(later)
    _wait_through(later)
    assert silent.connections == 1
    report("silent equal host", f"{N} messages at once: slowest {max(waits):.2f} s (timeout {TIMEOUT:.1f} s)")


@pytest.mark.usefixtures("short_timeouts")
def test_the_first_connection_to_a_silent_host_carries_one_message_of_its_batch(peers):
    silent, backup = peers.silent(), peers.start()
    make_route("dest.test", f"{silent.host}:{silent.port}/pri=0, {backup.host}:{backup.port}/pri=10")
    mids = [queue_message(f"u{i}@dest.test") for i in range(N)]
    worker.deliver_batch(mids)  # one batch, one group: every message would have ridden the one connection

    assert silent.connections == 1
    assert sorted(m.rcpt_tos for m in backup.messages) == sorted((f"u{i}@dest.test",) for i in range(N))
    waits = sorted(_waits(mids))
    assert waits[-1] <= TIMEOUT + SLACK
    assert waits[-2] < TIMEOUT / 2, f"more than one message waited for the silent host: {waits[-3:]}"
    skipped = MailLogLine.objects.filter(text__contains=f"skipped host {silent.host}:{silent.port} ")
    assert skipped.count() == N - 1  # the others passed it over at once, each saying so
    assert DeliveryAttempt.objects.filter(port=silent.port).count() == 1


@pytest.mark.usefixtures("short_timeouts", "in_flight")
def test_a_slow_greeter_gets_its_share_once_it_has_greeted(peers, settings):
    settings.ESAROUTES_DELIVERY_COMMAND_TIMEOUT = 3.0  # the pause is below it: the host does greet
    slow, good = peers.start(greeting_delay=1.5, data_delay=0.3), peers.start()  # busy: its connections overlap
    make_route("dest.test", f"{slow.host}:{slow.port}/pri=0, {good.host}:{good.port}/pri=0")
    first = [queue_message(f"u{i}@dest.test") for i in range(N)]
    _deliver_at_once(first)
    _wait_through(first)
    assert slow.connections >= 1 and len(slow.messages) >= 1  # its first connection waited and was used
    assert len(slow.messages) + len(good.messages) == N
    marked = HostStatus.objects.filter(host=slow.host, port=slow.port, down_until__isnull=False)
    assert not marked.exists()  # passing it over is no failure
    assert not MailLogLine.objects.filter(text__startswith="Connection Error:").exists()

    before = len(slow.messages)
    second = [queue_message(f"v{i}@dest.test") for i in range(N)]
    _deliver_at_once(second)
    _wait_through(second)
    share = len(slow.messages) - before
    assert share >= N // 2 - 1, f"the slow greeter took {share} of {N} once it had greeted"  # its turns, ±1
    assert slow.peak_sessions >= 2  # known to greet: connections to it open in parallel again
    skipped_after = MailLogLine.objects.filter(text__contains="skipped host", mid__in=second)
    assert not skipped_after.exists()
    assert sorted(m.rcpt_tos for m in [*slow.messages, *good.messages]) == sorted(
        [(f"u{i}@dest.test",) for i in range(N)] + [(f"v{i}@dest.test",) for i in range(N)]
    )
    report("slow greeter (1.5 s)", f"{len(slow.messages)} of {2 * N} messages, {share} of the second {N}")
