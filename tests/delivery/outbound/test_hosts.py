"""delivery.outbound.hosts through real deliveries: hosts marked down and skipped, a host that answers again
releasing its backlog, the round-robin position between equal hosts, and the open-connections gauge."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.utils import timezone

from delivery import worker
from delivery.models import HostStatus, Message, Recipient
from delivery.spool import actions
from routes import domains, services
from routes.models import Route
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_every_host_failing_delays_and_marks_them_down(peers, settings):
    refused = peers.refused()
    busy = peers.start(mail="421 4.3.2 Service shutting down")
    make_route("dest.test", hosts_text((refused, 0), (busy, 10)))  # refused first: the Delayed line is busy's
    before = timezone.now()
    mid = queue_message("a@dest.test")
    worker.deliver_batch([mid])
    r = Recipient.objects.get(message_id=mid)
    assert r.state == "delayed" and r.attempts == 1
    assert before + timedelta(seconds=59) < r.next_attempt_at < timezone.now() + timedelta(seconds=61)
    lines = log()
    (error, *_) = grep(rf"^Connection Error: .* port: {refused.port} ", lines)
    assert re.match(
        rf"Connection Error: DCID \d+ domain: dest.test IP: 127.0.0.1 port: {refused.port} details: .* "
        r"interface: Data 1 reason: network error$",
        error,
    )
    (delayed,) = grep("^Delayed:", lines)
    assert f"MID {mid} From: <sender@origin.test> To: <a@dest.test> RID 0 - 4.3.2 - " in delayed
    assert delayed.endswith("('421', ['4.3.2 Service shutting down'])")
    down = HostStatus.objects.get(port=refused.port)
    assert down.consecutive_failures == 1 and down.down_until > timezone.now() + timedelta(seconds=50)
    # 421 to MAIL FROM is about the mail transaction, not the host: it stays up
    assert HostStatus.objects.get(port=busy.port).down_until is None
    message = Message.objects.get(pk=mid)
    assert message.state == "queued" and message.next_attempt_at == r.next_attempt_at and message.leased_by == ""


def test_a_down_host_is_skipped_then_comes_back_and_its_backlog_flushes(peers):
    dead = peers.refused()
    make_route("dest.test", hosts_text((dead, 0)))
    first = queue_message("a@dest.test")
    worker.deliver_batch([first])
    assert recipients(first) == [(0, "delayed")]
    # The only host is down: it is still tried (nothing else could take the mail), and fails again.
    second = queue_message("b@dest.test")
    worker.deliver_batch([second])
    assert HostStatus.objects.get(port=dead.port).consecutive_failures == 2
    # The operator fixes it: the host is marked up and every delayed message is due now.
    dead.stop()
    good = peers.start()
    services.route_update(
        route_id=Route.objects.get(domain="dest.test").pk,
        data=services.RouteData(domain="dest.test", destination=domains.parse_hosts(hosts_text((good, 0)))),
        actor="test",
    )
    assert actions.deliver_now(actor="test", domain="dest.test") == 2
    worker.deliver_batch([])
    assert len(good.wait_for_messages(2)) == 2
    assert recipients(first) == [(0, "delivered")] and recipients(second) == [(0, "delivered")]


def test_a_host_that_answers_again_releases_the_backlog(peers):
    dead = peers.refused()
    port = dead.port
    make_route("dest.test", hosts_text((dead, 0)))
    backlog = queue_message("a@dest.test")
    worker.deliver_batch([backlog])
    waiting = Recipient.objects.get(message_id=backlog)
    assert waiting.state == "delayed" and waiting.next_attempt_at > timezone.now() + timedelta(seconds=50)
    dead.stop()
    received: list[Any] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.rcpt_tos)
            return "250 2.0.0 Ok"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port)  # the same host:port, back up
    controller.start()
    try:
        fresh = queue_message("b@dest.test")
        worker.deliver_batch([fresh])  # the host is down, but it is the only one: tried, and it answers
        assert recipients(fresh) == [(0, "delivered")]
        assert HostStatus.objects.get(port=port).consecutive_failures == 0
        # its success released the backlog: due now, not in a minute
        assert Message.objects.get(pk=backlog).next_attempt_at <= timezone.now()
        worker.deliver_batch([])
        assert recipients(backlog) == [(0, "delivered")]
        assert sorted(received) == [["a@dest.test"], ["b@dest.test"]]
    finally:
        controller.stop()


def test_round_robin_shares_connections_between_equal_hosts_and_never_uses_the_backup(peers):
    a, b, backup = peers.start(), peers.start(), peers.start()
    make_route("dest.test", hosts_text((a, 5), (b, 5), (backup, 20)))
    for i in range(10):
        worker.deliver_batch([queue_message(f"u{i}@dest.test")])
    assert len(a.messages) == 5 and len(b.messages) == 5
    assert backup.messages == [] and backup.connections == 0
    assert a.connections == 1 and b.connections == 1  # idle connections were reused, not reopened


def test_open_connections_are_counted_for_the_hosts_page(peers, settings):
    from delivery import tasks
    from delivery.outbound import hosts, runner

    settings.ESAROUTES_DELIVERY_IDLE = 60.0  # the connection stays open in the pool after the batch
    good = peers.start()
    make_route("dest.test", hosts_text((good, 0)))
    worker.deliver_batch([queue_message("a@dest.test")])
    the_runner = runner.get_runner()
    the_runner._call(the_runner._publish(force=True)).result(5)
    assert hosts.open_connections() == {(good.host, good.port): 1}
    assert hosts.open_connections_by_domain() == {"dest.test": 1}  # the domain it was opened for (tophosts)
    tasks.sweep()
    assert HostStatus.objects.get(port=good.port).connections_out == 1
    runner.shutdown_runner()  # QUITs it, and says so
    assert hosts.open_connections() == {} and hosts.open_connections_by_domain() == {}
    tasks.sweep()
    assert HostStatus.objects.get(port=good.port).connections_out == 0
