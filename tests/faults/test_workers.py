"""Fault: a Celery worker SIGKILLed in the middle of deliveries, 20 times in a row, under load.

The listener, beat and the workers are the real processes (`manage.py smtpd`, `celery worker` with a prefork pool
of 2, `celery beat`) on a private database and broker. Mail goes in through the listener while a pool process, or
every fifth time the whole worker, is killed with SIGKILL; a killed whole worker is replaced by a new one.

On the embedded default the worker's pool is threads (settings: a prefork pool on a transport without an event
loop wedged when a pool process was killed holding the shared queue's read lock), so every kill is of the whole
worker.

Expected: every message answered 250 reaches a sink. A message can be sent twice only when its end of data or its
250 was on the wire when the worker died: a 250 the worker has read is in its journal (delivery.spool.journal) and is
recorded by recover() even if the worker dies before its group commit. A diagnosis of the duplicates (the time to
the nearest kill) is written to duplicates.txt in the test's directory.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import time

import pytest

from tests.faults.conftest import report
from tests.support import harness

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(420)]

MESSAGES = 400
KILLS = 20
CONNECTIONS_PER_KILL = 4  # a connection to each of the two sinks from each of two concurrent batches
IN_FLIGHT = 0.05  # seconds between a duplicate's first copy and a kill: the SIGKILL and the sink's reply crossing


def test_sigkill_a_worker_20_times_under_load_loses_nothing(backend, stack_factory, fault_sinks):
    sinks = fault_sinks(2, delay=0.01)
    stack = stack_factory(backend)
    stack.route(harness.DOMAIN, sinks.route_text())
    stack.start_smtpd()
    stack.start_beat()
    worker = stack.start_worker()
    started = time.monotonic()
    injector = harness.Injector(stack.smtp_port, range(MESSAGES), threads=4).start()
    rng = random.Random(7)
    step = MESSAGES // (KILLS + 10)  # deliveries between two kills: the kills are spread over the whole run
    whole = 0
    kill_times: list[tuple[float, str]] = []
    for k in range(KILLS):
        assert sinks.wait_total(sinks.total + step, 90), f"no delivery progress before kill {k + 1}"
        # The embedded default runs its worker with a thread pool (see settings): no pool process to kill.
        whole_worker = k % 5 == 4 or backend == "embedded"
        kill_times.append((time.monotonic(), "whole" if whole_worker else "pool"))
        if whole_worker:
            worker.kill()  # master and pool, SIGKILL to the process group: nobody acknowledges anything
            whole += 1
            worker = stack.start_worker(wait=False)
        else:
            assert harness.wait_until(functools.partial(_has_pool, worker), 30), worker.tail()
            os.kill(rng.choice(worker.children()), signal.SIGKILL)
    result = injector.join()
    assert not result.refused, f"the listener refused mail: {list(result.refused.items())[:5]}"
    keys = result.accepted_keys()
    assert sinks.wait_for(keys, 120), f"not delivered: {sinks.tally(keys)}"
    assert stack.wait_queue_empty(60), f"{stack.queued()} messages still queued"
    worker.stop()  # nothing in flight any more: the counts below are final
    elapsed = time.monotonic() - started
    tally = sinks.tally(keys)
    in_flight = _diagnose(sinks, kill_times, stack)
    report(
        f"SIGKILL worker x{KILLS} ({KILLS - whole} pool processes, {whole} whole workers) [{backend}]",
        f"{tally.line(injector.sent)} in {elapsed:.0f} s",
    )
    assert tally.lost == 0 and tally.unexpected == 0
    # A delivery is journaled the moment its 250 is read (delivery.spool.journal) and recorded by recover() if its
    # process dies before the group commit. What a kill can still send twice is a message whose end of data or
    # 250 was on the wire at that instant (RFC 1047): at most one per open connection of the killed process.
    # Each kill here lands right after a sink took a message, the worst moment. Before the journal: 42-78
    # duplicates per 20 kills, taken up to a group commit before the kill.
    assert tally.duplicates <= KILLS * CONNECTIONS_PER_KILL, tally
    assert all(abs(offset) < IN_FLIGHT for offset in in_flight), sorted(in_flight)


def _has_pool(worker: harness.Proc) -> bool:
    return len(worker.children()) > 0


def _diagnose(sinks, kill_times, stack) -> list[float]:
    """Where the duplicates come from: for each, the time from its first copy to the nearest kill (negative: the
    kill came first, the message's last bytes were still in flight). Written to duplicates.txt; returned."""
    first: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for t, key, idx in sinks.events:
        first.setdefault(key, []).append((t, idx))
    lines = []
    nearest: list[float] = []
    for key, copies in first.items():
        if len(copies) < 2:
            continue
        t0 = copies[0][0]
        offset, kind = min(((kt - t0, kind) for kt, kind in kill_times), key=lambda k: abs(k[0]), default=(1e9, ""))
        nearest.append(offset)
        gaps = [round(c[0] - t0, 2) for c in copies]
        lines.append(
            f"{key[1]} copies={len(copies)} nearest kill {offset * 1000:+.2f} ms ({kind}) gaps={gaps} "
            f"sinks={[c[1] for c in copies]}"
        )
    (stack.base / "duplicates.txt").write_text("\n".join(sorted(lines)))
    return nearest
