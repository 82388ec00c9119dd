"""Fault: the run command stopped with Ctrl-C while mail is queued, then run again: everything is delivered.

Like `bin/run` without the web UI: honcho runs the listener, a worker and beat from a Procfile; Ctrl-C is SIGINT
to the whole process group, as a terminal sends it. `ESAROUTES_FAULT_MESSAGES` messages (default 1500; the
README quotes a run with 10,000) go in while the sinks are slow, so most are still queued at Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.conftest import report
from tests.support import harness

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(1800)]


def _run(stack: harness.Stack) -> harness.Proc:
    procfile = stack.base / "Procfile"
    bin_ = harness.VENV_BIN
    procfile.write_text(
        f"smtp: {bin_}/python manage.py smtpd --grace 2\n"
        f"worker: {bin_}/celery -A esaroutes worker --loglevel INFO --concurrency 2 --hostname worker@faults"
        " --without-gossip --without-mingle --without-heartbeat\n"
        f"beat: {bin_}/celery -A esaroutes beat --loglevel INFO --schedule {stack.data_dir}/beat-schedule\n"
    )
    proc = stack._start(
        "run", [str(bin_ / "honcho"), "--no-colour", "start", "-f", str(procfile), "-d", str(harness.ROOT)]
    )
    proc.wait_for(r"smtp\.1 .*SMTP listener on", 90)
    return proc


def test_ctrl_c_with_mail_queued_then_run_again_delivers_everything(backend, stack_factory, fault_sinks):
    n = int(os.environ.get("ESAROUTES_FAULT_MESSAGES", "1500"))
    # Slow sinks (a quarter second per recipient), so that most of the mail is still queued at Ctrl-C: the
    # worker keeps many connections going at once, and with faster sinks it caught up with the injection.
    sinks = fault_sinks(2, delay=0.25)
    stack = stack_factory(backend)
    stack.route(harness.DOMAIN, sinks.route_text())
    started = time.monotonic()
    first = _run(stack)
    result = harness.inject(stack.smtp_port, range(n), threads=6, per_session=100)
    assert not result.refused, f"the listener refused mail: {list(result.refused.items())[:5]}"
    first.signal_group(signal.SIGINT)  # Ctrl-C
    first.popen.wait(timeout=60)
    assert not any(p.alive() for p in stack.procs)
    queued = stack.queued()
    delivered_before = len(sinks.taken)
    sinks.delay = 0.0
    _run(stack)
    keys = result.accepted_keys()
    assert sinks.wait_for(keys, 600), f"not delivered: {sinks.tally(keys)}"
    assert stack.wait_queue_empty(60), f"{stack.queued()} messages still queued"
    stack.procs[-1].stop(signal.SIGINT, timeout=60)
    tally = sinks.tally(keys)
    report(
        f"Ctrl-C with {queued} of {n} queued ({delivered_before} delivered before), run again [{backend}]",
        f"{tally.line(n)} in {time.monotonic() - started:.0f} s",
    )
    assert queued > 0
    assert tally.lost == 0 and tally.unexpected == 0
