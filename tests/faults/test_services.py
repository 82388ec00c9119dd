"""Faults of the services under the relay: the broker stopped and flushed, PostgreSQL stopped, under load.

The relay's real processes run on a private PostgreSQL and Redis (or the embedded default's SQLite and
filesystem broker), which these tests stop, flush and start again; the shared services are never touched.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import report
from tests.support import harness

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

MESSAGES = 400


def _finish(stack, sinks, injector, result, name, started, workers):
    keys = result.accepted_keys()
    delivered = sinks.wait_for(keys, 120)
    exited = "".join(f"\n{w.name} exited; its last lines:\n{w.tail()}" for w in workers if not w.alive())
    assert delivered and not exited, f"not delivered: {sinks.tally(keys)}{exited}"
    assert stack.wait_queue_empty(60), f"{stack.queued()} messages still queued"
    for worker in workers:
        worker.stop()
    tally = sinks.tally(keys)
    report(name, f"{tally.line(injector.sent)} in {time.monotonic() - started:.0f} s")
    return tally


def test_the_broker_flushed_and_stopped_under_load_loses_nothing(backend, stack_factory, fault_sinks):
    """Redis: FLUSHALL, then SHUTDOWN NOSAVE and a new, empty Redis on the same port. Embedded: the filesystem
    broker's queue emptied twice (it has no server to stop). The sweep re-rings what the broker forgot."""
    sinks = fault_sinks(2, delay=0.01)
    stack = stack_factory(backend)
    stack.route(harness.DOMAIN, sinks.route_text())
    smtpd = stack.start_smtpd()
    beat = stack.start_beat()
    worker = stack.start_worker()
    started = time.monotonic()
    injector = harness.Injector(stack.smtp_port, range(MESSAGES), threads=4).start()
    queue_dir = stack.data_dir / "broker" / "queue"
    assert sinks.wait_total(60, 60)
    if stack.redis is not None:
        stack.redis.command("FLUSHALL")
    else:
        for path in queue_dir.iterdir():
            path.unlink(missing_ok=True)
    assert sinks.wait_total(sinks.total + 60, 60), "no delivery after the flush"
    accepted = len(injector.result.accepted)
    if stack.redis is not None:
        stack.redis.shutdown_nosave()
    else:  # a filesystem broker has no server to stop: flush it again
        for path in queue_dir.iterdir():
            path.unlink(missing_ok=True)
    # The broker is down (or empty): the listener keeps accepting (its doorbell fails quietly) ...
    wanted = min(accepted + 40, injector.sent)
    assert injector.result.wait_answered(wanted, 60), "the listener stopped answering without a broker"
    if stack.redis is not None:
        stack.redis.start()  # ... and comes back empty: every doorbell and sweep task it held is gone
    result = injector.join()
    assert not result.refused, f"the listener refused mail: {list(result.refused.items())[:5]}"
    tally = _finish(
        stack, sinks, injector, result, f"broker flushed, then stopped and back empty [{backend}]", started, [worker]
    )
    assert tally.lost == 0 and tally.unexpected == 0
    assert smtpd.alive() and beat.alive()


def test_postgres_stopped_while_clients_send(stack_factory, fault_sinks):
    """PostgreSQL crashes (immediate stop) while 4 clients send: the listener answers 451 for what it could not
    commit and keeps running; once the database is back, everything answered 250 is delivered, by the same
    worker and listener processes (no restart)."""
    if not harness.pg_bin():
        pytest.skip("PostgreSQL server binaries not installed")
    from tests.faults.conftest import backend_selected

    if not backend_selected("postgres"):
        pytest.skip("runs in the PostgreSQL pass of bin/test (ESAROUTES_FAULT_BACKENDS runs both)")
    sinks = fault_sinks(2, delay=0.01)
    stack = stack_factory("postgres")
    stack.route(harness.DOMAIN, sinks.route_text())
    smtpd = stack.start_smtpd()
    beat = stack.start_beat()
    worker = stack.start_worker()
    started = time.monotonic()
    injector = harness.Injector(stack.smtp_port, range(MESSAGES), threads=4, per_session=10).start()
    assert injector.result.wait_answered(120, 60)
    assert stack.pg is not None
    stack.pg.stop("immediate")  # a crash: sessions cut, no checkpoint; recovery at the next start
    down_at = len(injector.result.refused)
    assert injector.result.wait_answered(len(injector.result.accepted) + down_at + 40, 60)
    refused_while_down = len(injector.result.refused) - down_at
    stack.pg.start()
    result = injector.join()
    # After the outage the same listener takes mail again.
    late = harness.inject(stack.smtp_port, range(MESSAGES, MESSAGES + 40), threads=2)
    assert not late.refused, f"the listener still refuses after PostgreSQL is back: {list(late.refused.items())[:3]}"
    result.accepted |= late.accepted
    kinds = {reply.split(" ")[0] for reply in result.refused.values()}
    assert refused_while_down > 0 and kinds <= {"451", "421", "SMTPServerDisconnected:", "ConnectionResetError:"}, kinds
    injector.sent += len(late.accepted) + len(late.refused)
    tally = _finish(
        stack,
        sinks,
        injector,
        result,
        f"PostgreSQL crashed and restarted under load ({len(result.refused)} answered 4xx) [postgres]",
        started,
        [],
    )
    assert tally.lost == 0
    assert smtpd.alive() and worker.alive() and beat.alive(), "a process had to be restarted"
    assert len(stack.procs) == 3  # no process was started again
    worker.stop()
