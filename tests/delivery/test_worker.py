"""delivery.worker: the process's recorder (Recorder): batches in flight are recorded, renewed and released by one
thread while the task that claimed them has returned; and the back-pressure decision (worker.admit).

Real loopback peers and the real runner; a host that accepts TCP and never greets keeps a batch in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from delivery import engine, outcome, worker
from delivery.models import MailLogLine, Message, Recipient
from delivery.outbound import runner
from tests.delivery.conftest import queue_message
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner", "fresh_recorder")]


@pytest.fixture
def fresh_recorder(settings: Any) -> Iterator[None]:
    settings.ESAROUTES_DELIVERY_COMMAND_TIMEOUT = 120.0  # a silent host stays silent for the whole test
    settings.ESAROUTES_LEASE_SECONDS = 1.5  # renewed every 0.5 s
    worker.shutdown()
    yield
    worker.shutdown()


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """For state in the database, which has no event to wait on."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def lease(mid: int) -> tuple[str, Any]:
    m = Message.objects.get(pk=mid)
    return m.leased_by, m.leased_until


@pytest.mark.parametrize(
    ("held", "stalled", "limit", "expected"),
    [
        (0, 0, 1, True),
        (99, 0, 100, True),
        (100, 0, 100, False),  # full of moving mail: wait
        (100, 100, 100, True),  # full of stalled batches only: moving mail still has its room
        (150, 60, 100, True),
        (150, 40, 100, False),
        (199, 199, 100, True),
        (200, 200, 100, False),  # the hard bound: twice the room, whatever is stalled
    ],
)
def test_admit(held, stalled, limit, expected):
    assert worker.admit(held, stalled, limit) is expected


def test_a_batch_in_flight_is_renewed_after_its_task_returned_and_given_back_at_shutdown(peers):
    silent = peers.silent()
    make_route("dest.test", f"{silent.host}:{silent.port}")
    mid = queue_message("a@dest.test")
    result = worker.deliver_batch([mid], wait=False)
    assert result.claimed == 1
    silent.wait_for_connections(1)
    token, first = lease(mid)
    assert token
    assert worker.recorder().load()[0] == 1
    wait_until(lambda: lease(mid)[1] > first)  # renewed by the recorder, every lease/3 s
    assert lease(mid)[0] == token

    worker.shutdown()  # waiting for a greeting, nothing sent: given up at once, and the message given back
    assert lease(mid) == ("", None)
    r = Recipient.objects.get(message_id=mid)
    assert r.state == "queued" and r.attempts == 0 and r.next_attempt_at <= timezone.now()


def test_a_delivery_cut_off_by_the_runner_stopping_still_ends_with_its_close_line(peers):
    stalling = peers.start(stall_at=engine.Stage.DATA)  # takes the body and the final dot, never answers
    make_route("dest.test", f"{stalling.host}:{stalling.port}")
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid], wait=False)
    wait_until(lambda: b"".join(stalling.reads).endswith(b"\r\n.\r\n"))

    runner.shutdown_runner()  # what a drain that timed out leaves behind: the batch is cancelled on the wire
    wait_until(lambda: MailLogLine.objects.filter(text__startswith="DCID", text__contains=" close").exists())
    [opened] = MailLogLine.objects.filter(text__startswith="New SMTP DCID").values_list("dcid", flat=True)
    assert list(MailLogLine.objects.filter(text__contains=" close").values_list("text", flat=True)) == [
        f"DCID {opened} close (cancelled at shutdown)"
    ]
    wait_until(lambda: lease(mid)[0] == "")  # given back: it goes again at its retry
    assert Recipient.objects.get(message_id=mid).state == "queued"


def test_a_message_recorded_goes_back_while_its_batch_waits_on_a_silent_host(peers):
    silent = peers.silent()
    busy = peers.start(rcpt="451 4.3.0 Try again later")
    make_route("silent.test", f"{silent.host}:{silent.port}")
    make_route("busy.test", f"{busy.host}:{busy.port}")
    slow, fast = queue_message("a@silent.test"), queue_message("b@busy.test")
    worker.deliver_batch([slow, fast], fill=False, wait=False)
    silent.wait_for_connections(1)
    wait_until(lambda: lease(fast)[0] == "")  # delayed and given back, without waiting for the batch's end
    assert Recipient.objects.get(message_id=fast).state == "delayed"
    assert lease(slow)[0] != ""
    assert worker.recorder().load()[0] == 1


def test_a_batch_that_fails_is_postponed_and_released(peers, monkeypatch):
    good = peers.start()
    make_route("dest.test", f"{good.host}:{good.port}")
    mid = queue_message("a@dest.test")

    async def broken(self: runner.Runner, groups: Any, emit: Any) -> None:
        raise RuntimeError("a bug in the runner")

    monkeypatch.setattr(runner.Runner, "run", broken)
    before = timezone.now()
    with pytest.raises(RuntimeError, match="a bug in the runner"):
        worker.deliver_batch([mid])
    r = Recipient.objects.get(message_id=mid)
    assert r.state == "queued" and r.next_attempt_at >= before + timedelta(seconds=59)
    assert lease(mid) == ("", None)
    assert worker.recorder().load() == (0, 0)


def test_a_full_process_still_delivers_once_what_fills_it_is_stalled(peers, settings, monkeypatch):
    settings.ESAROUTES_DELIVERY_MAX_IN_FLIGHT = 1
    monkeypatch.setattr(worker, "STALLED_AFTER", 0.5)
    silent, good = peers.silent(), peers.start()
    make_route("silent.test", f"{silent.host}:{silent.port}")
    make_route("dest.test", f"{good.host}:{good.port}")
    worker.deliver_batch([queue_message("a@silent.test")], wait=False)
    silent.wait_for_connections(1)
    mid = queue_message("b@dest.test")
    worker.deliver_batch([mid], fill=False)  # waits until the silent batch counts as stalled, then goes
    assert good.wait_for_messages(1)[0].rcpt_tos == ("b@dest.test",)
    assert Recipient.objects.get(message_id=mid).state == "delivered"
    assert worker.recorder().load()[0] == 1  # the silent one still in flight


def _group(*ports: int) -> outcome.Group:
    hosts = tuple(engine.Host("127.0.0.1", p, 0) for p in ports)
    return outcome.Group("r", "dest.test", hosts, outcome.Destination(host=hosts[0], helo="relay.test"), ())


def test_hold_back_only_groups_whose_every_host_is_stalled():
    only_stalled, one_healthy, healthy = _group(1), _group(1, 2), _group(3)
    run, held = worker.hold_back([only_stalled, one_healthy, healthy], {("127.0.0.1", 1)})
    assert run == [one_healthy, healthy] and held == [only_stalled]
    assert worker.hold_back([only_stalled], set()) == ([only_stalled], [])


def test_no_second_connection_to_a_host_that_does_not_greet_the_first(peers, monkeypatch):
    monkeypatch.setattr(worker, "STALLED_AFTER", 0.5)
    silent, good = peers.silent(), peers.start()
    make_route("silent.test", f"{silent.host}:{silent.port}")
    make_route("dest.test", f"{good.host}:{good.port}")
    worker.deliver_batch([queue_message("a@silent.test")], wait=False)
    silent.wait_for_connections(1)
    wait_until(lambda: bool(runner.get_runner().stalled_hosts(0.5)))
    later, healthy = queue_message("b@silent.test"), queue_message("c@dest.test")
    before = timezone.now()
    worker.deliver_batch([later, healthy], fill=False)
    assert good.wait_for_messages(1)[0].rcpt_tos == ("c@dest.test",)
    assert silent.connections == 1  # held back: no attempt, no connection, back in the queue for a while
    r = Recipient.objects.get(message_id=later)
    assert (r.state, r.attempts) == ("queued", 0) and r.next_attempt_at >= before + timedelta(seconds=0.5)
    assert lease(later) == ("", None)
    assert worker.recorder().load()[0] == 1  # only the first, still waiting for its greeting
