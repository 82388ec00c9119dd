"""Never an open relay: a client outside the relay networks may only send to the domains we accept, whatever the
route table holds and however the address is dressed up; each refusal is `550 5.7.1` and a `Rejected by RAT` line.

The test client is on loopback, so the relay networks are set to 10.0.0.0/8 only: to the listener the client is
then a foreign one, exactly like a client on the internet."""

from __future__ import annotations

import re
from typing import Any

import pytest

from delivery.models import Message, Recipient
from routes import snapshot
from routes.models import RecipientAccessRule, RelayNetwork, Route
from tests.listener.conftest import log_texts, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ACCEPTED = "dest.test"  # a domain we receive for (it has a route), so only the dressing can make it relay

PROBES = [
    b"<victim@elsewhere.test>",
    b"<victim%elsewhere.test@" + ACCEPTED.encode() + b">",
    b"<victim%elsewhere.test%" + ACCEPTED.encode() + b"@" + ACCEPTED.encode() + b">",
    b"<@" + ACCEPTED.encode() + b":victim@elsewhere.test>",
    b"<@elsewhere.test:victim@" + ACCEPTED.encode() + b">",
    b"<@elsewhere.test,@other.test:victim@" + ACCEPTED.encode() + b">",
    b'<"victim@elsewhere.test"@' + ACCEPTED.encode() + b">",
    b'<"victim%elsewhere.test"@' + ACCEPTED.encode() + b">",
    b"<elsewhere.test!victim@" + ACCEPTED.encode() + b">",
    b"<victim@[192.0.2.1]>",
    b"<victim@[IPv6:2001:db8::1]>",
    b"<VICTIM@ELSEWHERE.TEST>",
    b"<victim@xn--bcher-kva.example>",
    b"<victim@b\xc3\xbccher.example>",
]


def foreign_client(smtpd: Any, *, all_route: bool) -> None:
    """Relay networks 10.0.0.0/8 only (loopback is foreign now); one accepted domain; optionally an ALL route."""
    RelayNetwork.objects.all().delete()
    RelayNetwork.objects.create(network="10.0.0.0/8")
    Route.objects.create(domain=ACCEPTED)
    if all_route:
        Route.objects.create(domain="ALL")
    snapshot.invalidate()
    smtpd.refresh()


@pytest.mark.parametrize("all_route", [False, True], ids=["no-ALL-route", "ALL-route"])
def test_probes_from_outside_the_relay_networks_are_refused_and_logged(smtpd, all_route):
    foreign_client(smtpd, all_route=all_route)
    c = smtpd.raw()
    assert c.reply().startswith(b"220")
    assert c.cmd(b"EHLO probe.test").startswith(b"250")
    assert c.cmd(b"MAIL FROM:<spammer@elsewhere.test>") == b"250 2.1.0 Ok"
    for probe in PROBES:
        reply = c.cmd(b"RCPT TO:" + probe)
        assert reply.startswith(b"550 5.7.1 <"), (probe, reply)
        assert reply.endswith(b">... Relaying denied"), (probe, reply)
    # the domain we do receive for is still accepted, and nothing else was
    assert c.cmd(b"RCPT TO:<postmaster@" + ACCEPTED.encode() + b">") == b"250 2.1.5 Ok"
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: probe\r\n\r\nx\r\n.\r\n")
    assert c.reply().startswith(b"250 2.0.0 Ok: queued as ")
    c.cmd(b"QUIT")
    c.close()
    assert list(Recipient.objects.values_list("address", flat=True)) == [f"postmaster@{ACCEPTED}"]
    assert wait_for(lambda: any(t.endswith(" close") for t in log_texts()))
    rejected = [t for t in log_texts() if t.endswith(" Rejected by RAT")]
    assert len(rejected) == len(PROBES)
    assert all(re.fullmatch(r"ICID \d+ To: <[^\r\n]*> Rejected by RAT", t) for t in rejected), rejected
    policy = [t for t in log_texts() if " SG " in t]
    assert policy and all(" ACCEPT SG UNKNOWNLIST match ALL " in t for t in policy)


def test_accept_all_in_the_rat_is_refused_by_the_page_so_all_routes_cannot_open_it(smtpd, client, alice):
    from tests.conftest import PASSWORD

    assert client.login(username="alice", password=PASSWORD)
    response = client.post("/routes/access/rat/", {"domain": "ALL", "action": "accept", "comment": ""})
    assert response.status_code == 422
    assert not RecipientAccessRule.objects.filter(domain="ALL", action="accept").exists()


def test_a_client_that_is_refused_cannot_queue_anything_in_one_pipelined_burst(smtpd):
    foreign_client(smtpd, all_route=True)
    c = smtpd.raw()
    c.reply()
    c.send(
        b"EHLO probe.test\r\nMAIL FROM:<s@elsewhere.test>\r\nRCPT TO:<v@elsewhere.test>\r\n"
        b"RCPT TO:<@dest.test:v@elsewhere.test>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    )
    assert c.closed()
    codes = [r[:3] for r in c.buf.split(b"\r\n") if r[:3].isdigit() and r[3:4] == b" "]
    # EHLO, MAIL, two refusals, DATA refused; the message lines are then commands (500 each), QUIT says goodbye
    assert codes[:5] == [b"250", b"250", b"550", b"550", b"503"]
    assert codes[-1] == b"221"
    assert Message.objects.count() == 0


def test_smtp_auth_is_not_offered_in_clear_text(smtpd):
    foreign_client(smtpd, all_route=True)
    c = smtpd.raw()
    c.reply()
    ehlo = c.cmd(b"EHLO probe.test")
    assert b"AUTH" not in ehlo and b"STARTTLS" in ehlo
    assert c.cmd(b"AUTH LOGIN").startswith(b"538 5.7.11")
    c.close()
