"""Fault: a Celery worker SIGKILLed in the middle of deliveries, 20 times in a row, under load.

The listener, beat and the workers are the real processes (`manage.py smtpd`, `celery worker` with a prefork pool
of 2, `celery beat`) on a private database and broker. Mail goes in through the listener while a pool process, or
every fifth time the whole worker, is killed with SIGKILL; a killed whole worker is replaced by a new one.

On the embedded default the worker's pool is threads (settings: a prefork pool on a transport without an event
loop wedged when a pool process was killed holding the shared queue's read lock), so every kill is of the whole
worker.

Expected: every message answered 250 reaches a sink. A message can be sent twice only when its 250 arrived from
the sink and the worker died before committing it (the group commit right after each 250). A per-kill diagnosis
of the duplicates is written to duplicates.txt in the test's directory.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import time

import pytest

from tests.faults import harness
from tests.faults.conftest import report

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(420)]

MESSAGES = 400
KILLS = 20
DUPLICATES_PER_KILL = 5


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
    _diagnose(sinks, kill_times, stack)
    report(
        f"SIGKILL worker x{KILLS} ({KILLS - whole} pool processes, {whole} whole workers) [{backend}]",
        f"{tally.line(injector.sent)} in {elapsed:.0f} s",
    )
    assert tally.lost == 0 and tally.unexpected == 0
    # Each kill lands right after a 250 (the worst moment). What a kill can send twice is every message that had
    # its 250 since the killed process's last group commit, on each of its connections: measured 1.5-3.9 per kill
    # (README, Reliability). One per kill would need the runner to wait for each commit before the next message
    # on a connection, a throughput trade-off left to the delivery engine's owner.
    assert tally.duplicates <= KILLS * DUPLICATES_PER_KILL, tally


def _has_pool(worker: harness.Proc) -> bool:
    return len(worker.children()) > 0


def _diagnose(sinks, kill_times, stack):
    """Where the duplicates come from: how long before a kill each duplicated message was first taken."""
    first: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for t, key, idx in sinks.events:
        first.setdefault(key, []).append((t, idx))
    lines = []
    for key, copies in first.items():
        if len(copies) < 2:
            continue
        t0 = copies[0][0]
        after = [(kt - t0, kind) for kt, kind in kill_times if kt >= t0]
        nxt = min(after) if after else None
        gaps = [round(c[0] - t0, 2) for c in copies]
        lines.append(
            f"{key[1]} copies={len(copies)} next kill after {nxt} s gaps={gaps} sinks={[c[1] for c in copies]}"
        )
    (stack.base / "duplicates.txt").write_text("\n".join(sorted(lines)))
