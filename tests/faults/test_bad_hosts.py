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
from delivery.models import HostStatus, Recipient
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
