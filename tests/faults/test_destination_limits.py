"""Destination limits across real worker processes: `destconfig --max-connections 2` on the sinks' domain, 200
messages through the real listener, two Celery workers (each with its pool), one of them SIGKILLed in the middle
of its deliveries. The sink never holds more than 2 connections at once, and the dead worker's slots come back
(their leases run out within slots.SLOT_TTL seconds), so the backlog completes."""

from __future__ import annotations

import pytest

from tests.faults.conftest import report
from tests.support import harness

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

MESSAGES = 200


def test_max_connections_holds_across_workers_and_a_killed_workers_slots_come_back(backend, stack_factory, fault_sinks):
    sinks = fault_sinks(1, delay=0.01)
    stack = stack_factory(backend, ESAROUTES_DELIVERY_IDLE="0.5")
    stack.route(harness.DOMAIN, sinks.route_text())
    stack.manage("destconfig", "new", harness.DOMAIN, "--max-connections", "2", "--max-messages-per-connection", "5")
    stack.start_smtpd()
    stack.start_beat()
    first = stack.start_worker()
    second = stack.start_worker()
    injector = harness.Injector(stack.smtp_port, range(MESSAGES), threads=4).start()
    assert sinks.wait_total(MESSAGES // 4, 120), "no delivery progress"
    first.kill()  # SIGKILL, master and pool: its connections and their slots are simply gone
    result = injector.join()
    assert not result.refused
    keys = result.accepted_keys()
    if not sinks.wait_for(keys, 180):
        states = stack.sql(
            "SELECT state, count(*), min(next_attempt_at), max(attempts) FROM delivery_recipient GROUP BY 1"
        )
        slots = stack.sql("SELECT key, holder, expires_at FROM delivery_connectionslot")
        lines = stack.sql("SELECT at, text FROM delivery_maillogline ORDER BY id DESC LIMIT 25")
        pytest.fail(f"not delivered: {sinks.tally(keys)}; recipients {states}; slots {slots}; last lines {lines}")
    assert stack.wait_queue_empty(60), f"{stack.queued()} messages still queued"
    second.stop()
    tally = sinks.tally(keys)
    report(f"max connections 2, one of two workers SIGKILLed [{backend}]", f"{tally.line(injector.sent)}")
    assert tally.lost == 0
    assert sinks.peak_open <= 2, f"the sink held {sinks.peak_open} connections at once"
    held_back = stack.sql(
        "SELECT count(*) FROM delivery_maillogline WHERE text LIKE 'Maximum outbound connections 2 %'"
    )
    assert held_back[0][0] >= 1, "the limit never held anything back: the test proves nothing"
