"""Redirect queued recipients to another relay (`redirectrecipients`), against real peers on loopback."""

from __future__ import annotations

import pytest

from delivery import resolve, worker
from delivery.models import Recipient
from delivery.spool import actions
from routes import services
from routes.models import AuditEntry
from tests.delivery.conftest import grep, hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_redirected_recipients_go_to_the_relay_and_new_mail_follows_its_route(peers):
    refused = peers.refused()
    relay = peers.start()
    other = peers.start()
    make_route("dest.test", hosts_text((refused, 0)))
    make_route("other.test", hosts_text((other, 0)))
    one = queue_message("a@dest.test", "b@other.test")
    worker.deliver_batch([one])  # dest.test's host refuses: a@dest.test waits for its retry
    assert recipients(one) == [(0, "delayed"), (1, "delivered")]
    two = queue_message("c@dest.test")
    Recipient.objects.filter(message_id=two).update(next_attempt_at=None)
    n = actions.redirect_recipients(
        actions.select_recipients(domain="dest.test"), (relay.host, relay.port), actor="cli:root"
    )
    assert n == 2
    assert worker.deliver_batch().claimed == 2  # due now, not at the retry time
    got = relay.wait_for_messages(2)
    assert sorted(r for m in got for r in m.rcpt_tos) == ["a@dest.test", "c@dest.test"]
    assert recipients(one) == [(0, "delivered"), (1, "delivered")] and recipients(two) == [(0, "delivered")]
    assert len(other.messages) == 1  # other.test's recipient went by its own route, once
    lines = log()
    assert f"Redirected: MID {one} to [0] to {relay.host}:{relay.port} by cli:root" in lines
    assert f"Redirected: MID {two} to [0] to {relay.host}:{relay.port} by cli:root" in lines
    assert grep(rf"^Delivery start DCID \d+ MID {two} to RID \[0\]", lines)
    # mail arriving afterwards follows its route again
    three = queue_message("d@dest.test")
    worker.deliver_batch([three])
    assert recipients(three) == [(0, "delayed")] and len(relay.messages) == 2
    assert AuditEntry.objects.filter(object_repr=f"Redirect 2 recipients to {relay.host}:{relay.port}").exists()


def test_redirected_mail_of_several_domains_takes_the_default_entrys_messages_per_connection(peers):
    """a.test allows 1 message per connection and b.test 5; the redirect takes the Default's 2, whichever domain
    the batch happens to list first."""
    relay = peers.start()
    make_route("ALL", hosts_text((peers.refused(), 0)))
    services.update_destination(
        destination_id=services.default_destination().pk,
        data=services.DestinationData(destination="default", max_messages_per_connection=2),
        actor="test",
    )
    for domain, n in (("a.test", 1), ("b.test", 5)):
        services.create_destination(
            data=services.DestinationData(destination=domain, max_messages_per_connection=n), actor="test"
        )
    mids = [queue_message(address) for address in ("u1@a.test", "u2@a.test", "u1@b.test", "u2@b.test")]
    assert (
        actions.redirect_recipients(actions.select_recipients(everything=True), (relay.host, relay.port), actor="t")
        == 4
    )
    assert worker.deliver_batch(mids, fill=False).claimed == 4
    assert len(relay.wait_for_messages(4)) == 4
    assert relay.connections == 2  # 4 messages, 2 per connection (a.test's 1 would make 4, b.test's 5 one)
    assert all(state == "delivered" for mid in mids for _, state in recipients(mid))


def test_cancel_gives_recipients_back_to_their_route(peers):
    route_peer = peers.start()
    make_route("dest.test", hosts_text((route_peer, 0)))
    mid = queue_message("a@dest.test")
    actions.redirect_recipients(actions.select_recipients(mids=[mid]), ("127.0.0.1", 9), actor="cli:root")
    assert actions.redirect_recipients(actions.select_recipients(mids=[mid]), None, actor="cli:root") == 1
    assert actions.redirect_recipients(actions.select_recipients(mids=[mid]), None, actor="cli:root") == 0
    worker.deliver_batch([mid])
    (got,) = route_peer.wait_for_messages(1)
    assert got.rcpt_tos == ("a@dest.test",) and recipients(mid) == [(0, "delivered")]
    assert f"Redirect cancelled: MID {mid} to [0] by cli:root" in log()


@pytest.mark.parametrize(
    ("text", "relay"),
    [
        ("relay.example.test", ("relay.example.test", 25)),
        ("Relay.Example.Test:2525", ("relay.example.test", 2525)),
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[::1]:2525", ("::1", 2525)),
    ],
)
def test_parse_relay(text, relay):
    assert resolve.parse_relay(text) == relay


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no destination hosts given"),
        ("a.test, b.test", "give one host"),
        ("USEDNS", "USEDNS is not a host"),
        ("/dev/null", "/dev/null is not a host"),
        ("relay.test:99999", "99999"),
    ],
)
def test_parse_relay_refuses(text, error):
    with pytest.raises(ValueError, match=error):
        resolve.parse_relay(text)
