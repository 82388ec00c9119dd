"""Real SMTP over loopback: our client against scripted aiosmtpd peers and raw socket faults."""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

import pytest

from delivery.engine import Host, Stage, Verdict
from delivery.outbound.smtp_client import (
    Connection,
    Envelope,
    Failure,
    HostSession,
    TransactionResult,
    os_error_text,
    peer_text,
    wire_body,
)
from delivery.outcome import Destination, Timeouts, TlsPolicy
from esaroutes import eventloop
from tests.support.peers import Peer, PeerFactory, SmtpSink

FAST = Timeouts(connect=2.0, command=2.0, data=2.0, transaction=5.0)
STALL = Timeouts(connect=0.5, command=0.5, data=0.5, transaction=5.0)
BODY = b"From: sender@example.test\r\nTo: a@example.test\r\nSubject: hello\r\n\r\nHello.\r\n"
A, B, C = "a@example.test", "b@example.test", "c@example.test"


def to(peer: Peer, **kwargs: object) -> Destination:
    options: dict[str, object] = {"helo": "relay.test", "tls": TlsPolicy.OFF, "timeouts": FAST, **kwargs}
    return Destination(peer.as_host(), **options)  # type: ignore[arg-type]


def envelope(*recipients: str, mid: int = 1, sender: str = "sender@example.test", body: bytes = BODY) -> Envelope:
    return Envelope(mid, sender, tuple(enumerate(recipients or (A,))), body)


async def _session(
    destination: Destination, envelopes: tuple[Envelope, ...]
) -> tuple[HostSession, list[TransactionResult]]:
    results: list[TransactionResult] = []
    async with HostSession(destination) as session:
        for e in envelopes:
            if not session.usable:
                break
            results.append(await session.send(e))
    return session, results


def run(destination: Destination, *envelopes: Envelope) -> tuple[HostSession, list[TransactionResult]]:
    return eventloop.run(_session(destination, envelopes))


def deliver(destination: Destination, e: Envelope | None = None) -> TransactionResult:
    session, results = run(destination, e or envelope())
    assert session.failure is None, session.failure
    return results[0]


def open_failure(destination: Destination) -> Failure:
    session, results = run(destination, envelope())
    assert results == []
    assert session.failure is not None
    assert session.connection is None
    return session.failure


def verdicts(result: TransactionResult) -> dict[int, Verdict]:
    return {o.rid: o.verdict for o in result.outcomes}


# --- the happy path ---------------------------------------------------------------------------------------


def test_one_message_with_two_recipients_is_one_transaction(peers: PeerFactory) -> None:
    peer = peers.start()
    session, [result] = run(to(peer), envelope(A, B))
    assert verdicts(result) == {0: Verdict.DELIVERED, 1: Verdict.DELIVERED}
    assert result.data_reply.startswith("2.0.0 Ok: queued as")
    assert result.failure is None and not result.possible_delivery
    [message] = peer.wait_for_messages(1)
    assert (message.mail_from, message.rcpt_tos, message.helo) == ("sender@example.test", (A, B), "relay.test")
    assert message.content == BODY
    assert isinstance(session.connection, Connection)
    assert session.connection.peer_ip == "127.0.0.1"
    assert session.connection.local_ip == "127.0.0.1"
    assert session.connection.peer_port == peer.port
    assert "8bitmime" in session.connection.extensions
    assert peer.connections == 1


def test_connection_reused_for_second_message(peers: PeerFactory) -> None:
    peer = peers.start()
    session, results = run(to(peer), envelope(A, mid=1), envelope(B, C, mid=2))
    assert [r.mid for r in results] == [1, 2]
    assert all(o.verdict is Verdict.DELIVERED for r in results for o in r.outcomes)
    assert [m.rcpt_tos for m in peer.wait_for_messages(2)] == [(A,), (B, C)]
    assert peer.connections == 1
    assert session.messages_sent == 2


def test_connection_carries_at_most_max_messages(peers: PeerFactory) -> None:
    peer = peers.start()
    session, results = run(to(peer, max_messages=2), *(envelope(mid=i) for i in range(3)))
    assert [r.mid for r in results] == [0, 1]
    assert not session.usable
    assert peer.connections == 1


def test_null_sender_is_sent_as_empty_path(peers: PeerFactory) -> None:
    peer = peers.start()
    assert deliver(to(peer), envelope(sender="")).delivered
    assert peer.wait_for_messages(1)[0].mail_from in ("", "<>")


def test_body_is_sent_with_crlf_and_dot_stuffing(peers: PeerFactory) -> None:
    peer = peers.start()
    body = b"Subject: dots\n\n.leading dot\n..two dots\nbare\rcr\n.\nend"
    deliver(to(peer), envelope(body=body))
    assert (
        peer.wait_for_messages(1)[0].content
        == b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nbare\r\ncr\r\n.\r\nend\r\n"
    )


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b"\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"x\n.y\r.z", b"x\r\n..y\r\n..z\r\n.\r\n"),
    ],
)
def test_wire_body(body: bytes, wire: bytes) -> None:
    assert wire_body(body) == wire


def test_host_name_is_resolved_and_each_address_tried(peers: PeerFactory) -> None:
    peer = peers.start()  # listens on 127.0.0.1 only; "localhost" may try ::1 first and be refused
    destination = Destination(Host("localhost", peer.port), helo="relay.test", tls=TlsPolicy.OFF, timeouts=FAST)
    session, [result] = run(destination, envelope())
    assert result.delivered
    assert session.connection is not None and session.connection.peer_ip == "127.0.0.1"


# --- replies to MAIL, RCPT and DATA: per recipient --------------------------------------------------------


def test_4xx_at_rcpt_reported_per_recipient(peers: PeerFactory) -> None:
    peer = peers.start(rcpt={B: "452 4.3.1 Insufficient system resources"})
    result = deliver(to(peer), envelope(A, B, C))
    assert verdicts(result) == {0: Verdict.DELIVERED, 1: Verdict.NEXT_HOST, 2: Verdict.DELIVERED}
    refused = result.outcomes[1]
    assert (refused.stage, refused.code, refused.text) == (Stage.RCPT, 452, "4.3.1 Insufficient system resources")
    assert refused.status == ("4.3.1", "Mail system full")
    assert peer.wait_for_messages(1)[0].rcpt_tos == (A, C)


def test_4xx_at_rcpt_defers_when_the_route_opts_out_of_failover(peers: PeerFactory) -> None:
    peer = peers.start(rcpt={B: "450 4.2.1 try later"})
    result = deliver(to(peer, defer_on_4xx=True), envelope(A, B))
    assert verdicts(result) == {0: Verdict.DELIVERED, 1: Verdict.DEFER}


def test_5xx_at_rcpt_bounces_that_recipient_only(peers: PeerFactory) -> None:
    peer = peers.start(rcpt=lambda address: "550 5.1.1 no such user" if address == A else None)
    result = deliver(to(peer), envelope(A, B))
    assert verdicts(result) == {0: Verdict.BOUNCE, 1: Verdict.DELIVERED}
    assert result.outcomes[0].status == ("5.1.1", "Bad destination email address")


def test_every_recipient_refused_leaves_the_connection_usable(peers: PeerFactory) -> None:
    peer = peers.start(rcpt={A: "550 5.1.1 no such user", B: "451 4.3.0 later"})
    _, results = run(to(peer), envelope(A, B, mid=1), envelope(C, mid=2))
    assert verdicts(results[0]) == {0: Verdict.BOUNCE, 1: Verdict.NEXT_HOST}
    assert results[0].failure is None
    assert results[1].delivered and peer.wait_for_messages(1)[0].rcpt_tos == (C,)
    assert peer.connections == 1


@pytest.mark.parametrize(
    ("reply", "defer", "expected"),
    [
        ("451 4.3.0 try later", False, Verdict.NEXT_HOST),
        ("451 4.3.0 try later", True, Verdict.DEFER),
        ("553 5.1.7 bad sender", False, Verdict.BOUNCE),
    ],
)
def test_reply_to_mail_concerns_every_recipient(peers: PeerFactory, reply: str, defer: bool, expected: Verdict) -> None:
    peer = peers.start(mail=reply)
    result = deliver(to(peer, defer_on_4xx=defer), envelope(A, B))
    assert {o.verdict for o in result.outcomes} == {expected}
    assert {o.stage for o in result.outcomes} == {Stage.MAIL}
    assert peer.messages == []


def test_refused_data_command_concerns_the_accepted_recipients(peers: PeerFactory) -> None:
    peer = peers.start(rcpt={B: "550 5.1.1 unknown"}, data_cmd="554 5.5.1 no valid recipients")
    session, [result] = run(to(peer), envelope(A, B))
    assert [(o.verdict, o.stage, o.code) for o in result.outcomes] == [
        (Verdict.BOUNCE, Stage.DATA, 554),
        (Verdict.BOUNCE, Stage.RCPT, 550),
    ]
    assert session.messages_sent == 1


@pytest.mark.parametrize(
    ("reply", "expected"), [("451 4.3.0 disk full", Verdict.NEXT_HOST), ("554 5.6.0 spam", Verdict.BOUNCE)]
)
def test_refusal_at_end_of_data(peers: PeerFactory, reply: str, expected: Verdict) -> None:
    peer = peers.start(data=reply)
    _, results = run(to(peer), envelope(A, B, mid=1), envelope(C, mid=2))
    assert {(o.verdict, o.stage) for o in results[0].outcomes} == {(expected, Stage.DATA)}
    assert not results[0].possible_delivery and results[0].failure is None
    assert len(results) == 2  # the connection goes on after a refused message


def test_421_at_rcpt_ends_the_session_for_everyone_still_open(peers: PeerFactory) -> None:
    peer = peers.start(rcpt={B: "421 4.3.2 shutting down"})
    session, results = run(to(peer), envelope(A, B, C, mid=1), envelope(A, mid=2))
    [result] = results  # no second message: the connection is gone
    assert [(o.verdict, o.code) for o in result.outcomes] == [(Verdict.NEXT_HOST, 421)] * 3
    assert result.failure is not None and (result.failure.stage, result.failure.code) == (Stage.RCPT, 421)
    assert not result.failure.marks_host_down
    assert not session.usable


def test_message_over_advertised_size_bounces(peers: PeerFactory) -> None:
    peer = peers.start(size=64)
    result = deliver(to(peer), envelope(body=b"x" * 200))
    assert {(o.verdict, o.stage, o.code) for o in result.outcomes} == {(Verdict.BOUNCE, Stage.MAIL, 552)}


def test_unsendable_recipient_address_bounces_alone(peers: PeerFactory) -> None:
    peer = peers.start()
    result = deliver(to(peer), envelope(A, "evil@example.test>\r\nRSET"))
    assert verdicts(result) == {0: Verdict.DELIVERED, 1: Verdict.BOUNCE}
    assert result.outcomes[1].status[0] == "5.1.3"
    assert peer.wait_for_messages(1)[0].rcpt_tos == (A,)


def test_unsendable_sender_bounces_without_a_transaction(peers: PeerFactory) -> None:
    peer = peers.start()
    session, [result] = run(to(peer), envelope(A, sender="bad sender@example.test"))
    assert {(o.verdict, o.status[0]) for o in result.outcomes} == {(Verdict.BOUNCE, "5.1.7")}
    assert session.messages_sent == 0


# --- host failures while opening --------------------------------------------------------------------------


@pytest.mark.parametrize("greeting", ["421 4.3.2 busy", "554 5.7.1 no service for you"])
def test_greeting_refusal_is_host_failure(peers: PeerFactory, greeting: str) -> None:
    peer = peers.start(greeting=greeting)
    failure = open_failure(to(peer))
    assert (failure.stage, failure.code, failure.text) == (Stage.GREETING, int(greeting[:3]), greeting[4:])
    assert failure.reason == "unexpected SMTP response"
    assert failure.marks_host_down
    assert failure.peer_ip == "127.0.0.1"


def test_greeting_421_is_host_failure(peers: PeerFactory) -> None:
    failure = open_failure(to(peers.start(greeting="421 4.3.2 busy")))
    assert (failure.stage, failure.code, failure.reason) == (Stage.GREETING, 421, "unexpected SMTP response")


def test_ehlo_refusal_is_host_failure(peers: PeerFactory) -> None:
    failure = open_failure(to(peers.start(ehlo="554 5.7.1 go away")))
    assert (failure.stage, failure.code, failure.reason) == (Stage.EHLO, 554, "unexpected SMTP response")
    assert failure.marks_host_down


def test_ehlo_4xx_is_host_failure_without_helo(peers: PeerFactory) -> None:
    failure = open_failure(to(peers.start(ehlo="421 4.3.2 not now", helo="250 would have worked")))
    assert (failure.stage, failure.code) == (Stage.EHLO, 421)


def test_ehlo_5xx_falls_back_to_helo(peers: PeerFactory) -> None:
    peer = peers.start(ehlo="502 5.5.2 EHLO not implemented", helo="250 old.peer.test")
    session, [result] = run(to(peer), envelope())
    assert result.delivered
    assert session.connection is not None and session.connection.extensions == frozenset()


def test_connection_refused_is_network_error(peers: PeerFactory) -> None:
    peer = peers.refused()
    failure = open_failure(to(peer))
    assert (failure.stage, failure.code, failure.timed_out) == (Stage.CONNECT, None, False)
    assert failure.reason == "network error"
    assert failure.text == f"connection refused by {peer.host}:{peer.port}"  # not "[Errno 111] Connect call..."
    assert failure.marks_host_down
    assert failure.peer_ip == "127.0.0.1"


def test_accept_then_close_is_network_error(peers: PeerFactory) -> None:
    peer = peers.closing()
    failure = open_failure(to(peer))
    assert (failure.stage, failure.code, failure.reason) == (Stage.GREETING, None, "network error")
    assert peer.connections == 1


def test_stall_after_connect_times_out_within_timeout(peers: PeerFactory) -> None:
    peer = peers.silent()
    started = time.monotonic()
    failure = open_failure(to(peer, timeouts=STALL))
    assert time.monotonic() - started < 2.0
    assert (failure.stage, failure.code, failure.timed_out) == (Stage.GREETING, None, True)
    assert failure.reason == "connection timed out"
    assert failure.marks_host_down


def test_stall_at_ehlo_times_out(peers: PeerFactory) -> None:
    failure = open_failure(to(peers.start(stall_at=Stage.EHLO), timeouts=STALL))
    assert (failure.stage, failure.timed_out, failure.reason) == (Stage.EHLO, True, "connection timed out")


def test_unresolvable_name_is_network_error() -> None:
    destination = Destination(Host("no-such-host.invalid", 25), helo="relay.test", timeouts=STALL)
    failure = open_failure(destination)
    assert (failure.stage, failure.code, failure.reason, failure.peer_ip) == (Stage.CONNECT, None, "network error", "")


def test_session_setup_is_capped_as_a_whole(peers: PeerFactory) -> None:
    peer = peers.silent()
    started = time.monotonic()
    failure = open_failure(to(peer, timeouts=Timeouts(connect=5, command=5, data=5, transaction=0.5)))
    assert time.monotonic() - started < 2.0
    assert failure.timed_out and failure.stage is Stage.GREETING


# --- connection lost during a transaction -----------------------------------------------------------------


def test_stall_at_rcpt_fails_over_everyone(peers: PeerFactory) -> None:
    peer = peers.start(stall_at=Stage.RCPT)
    session, [result] = run(to(peer, timeouts=STALL), envelope(A, B))
    assert {(o.verdict, o.stage, o.code) for o in result.outcomes} == {(Verdict.NEXT_HOST, Stage.RCPT, None)}
    assert result.failure is not None and result.failure.timed_out and result.failure.marks_host_down
    assert not result.possible_delivery
    assert not session.usable


def test_drop_at_mail_of_a_reused_connection_does_not_mark_the_host_down(peers: PeerFactory) -> None:
    calls = []

    def mail(address: str) -> str | None:
        calls.append(address)
        return None

    peer = peers.start(mail=mail)
    destination = to(peer)

    async def scenario() -> TransactionResult:
        async with HostSession(destination) as session:
            assert (await session.send(envelope(mid=1))).delivered
            peer.stop()  # the peer goes away between messages (as an idle timeout would)
            return await session.send(envelope(mid=2))

    result = eventloop.run(scenario())
    assert result.failure is not None
    assert (result.failure.stage, result.failure.code, result.failure.reused) == (Stage.MAIL, None, True)
    assert not result.failure.marks_host_down
    assert {o.verdict for o in result.outcomes} == {Verdict.NEXT_HOST}


def test_drop_after_data_is_not_delivered(peers: PeerFactory) -> None:
    peer = peers.start(drop_at=Stage.DATA)
    _, [result] = run(to(peer), envelope(A, B))
    assert {(o.verdict, o.stage, o.code) for o in result.outcomes} == {(Verdict.NEXT_HOST, Stage.DATA, None)}
    assert result.possible_delivery
    assert result.failure is not None and result.failure.reason == "network error"
    assert result.failure.marks_host_down
    assert result.outcomes[0].status == ("4.4.0", "Other network problem")
    assert peer.messages == []


def test_stall_after_the_dot_is_possible_delivery(peers: PeerFactory) -> None:
    peer = peers.start(stall_at=Stage.DATA)
    started = time.monotonic()
    _, [result] = run(to(peer, timeouts=STALL), envelope())
    assert time.monotonic() - started < 2.0
    assert result.possible_delivery
    assert result.failure is not None and result.failure.timed_out
    assert result.outcomes[0].verdict is Verdict.NEXT_HOST


def test_drop_before_the_dot_is_not_possible_delivery(peers: PeerFactory) -> None:
    peer = peers.start(drop_at=Stage.RCPT)
    _, [result] = run(to(peer), envelope(A, B))
    assert not result.possible_delivery
    assert {o.verdict for o in result.outcomes} == {Verdict.NEXT_HOST}


def test_transaction_is_capped_as_a_whole(peers: PeerFactory) -> None:
    peer = peers.start(stall_at=Stage.DATA)
    started = time.monotonic()
    _, [result] = run(to(peer, timeouts=Timeouts(connect=5, command=5, data=5, transaction=0.5)), envelope())
    assert time.monotonic() - started < 2.0
    assert result.possible_delivery and result.failure is not None and result.failure.timed_out


@pytest.mark.parametrize(
    "script",
    [
        {"stall_at": "quit"},
        {"drop_at": "quit"},
        {"quit": "554 5.0.0 no goodbye for you"},
    ],
    ids=["stall", "drop", "refused"],
)
def test_quit_failure_after_250_still_delivered(peers: PeerFactory, script: dict[str, object]) -> None:
    peer = peers.start(**script)
    started = time.monotonic()
    _, [result] = run(to(peer, timeouts=STALL), envelope(A, B))
    assert time.monotonic() - started < 2.0
    assert verdicts(result) == {0: Verdict.DELIVERED, 1: Verdict.DELIVERED}
    assert result.failure is None
    assert len(peer.wait_for_messages(1)) == 1


def test_send_on_a_session_that_failed_raises(peers: PeerFactory) -> None:
    async def scenario() -> None:
        async with HostSession(to(peers.refused())) as session:
            await session.send(envelope())

    with pytest.raises(RuntimeError):
        eventloop.run(scenario())


def test_envelope_without_recipients_is_a_bug(peers: PeerFactory) -> None:
    async def scenario() -> None:
        async with HostSession(to(peers.start())) as session:
            await session.send(Envelope(1, "s@example.test", (), BODY))

    with pytest.raises(ValueError, match="recipient"):
        eventloop.run(scenario())


# --- TLS and AUTH -----------------------------------------------------------------------------------------


def test_starttls_opportunistic(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True)
    session, [result] = run(to(peer, tls=TlsPolicy.OPPORTUNISTIC), envelope())
    assert result.delivered
    connection = session.connection
    assert connection is not None
    assert connection.tls_protocol in ("TLSv1.2", "TLSv1.3")
    assert connection.tls_cipher
    assert not connection.tls_verified
    assert "starttls" not in connection.extensions  # the EHLO after TLS
    assert peer.wait_for_messages(1)[0].tls


def test_opportunistic_tls_not_offered_sends_in_clear(peers: PeerFactory) -> None:
    peer = peers.start()
    session, [result] = run(to(peer, tls=TlsPolicy.OPPORTUNISTIC), envelope())
    assert result.delivered
    assert session.connection is not None and session.connection.tls_protocol is None
    assert not peer.wait_for_messages(1)[0].tls


def test_tls_off_does_not_upgrade(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True)
    deliver(to(peer, tls=TlsPolicy.OFF))
    assert not peer.wait_for_messages(1)[0].tls


@pytest.mark.parametrize("policy", [TlsPolicy.REQUIRED, TlsPolicy.REQUIRED_VERIFY])
def test_required_tls_fails_when_not_offered(peers: PeerFactory, policy: TlsPolicy) -> None:
    peer = peers.start()
    failure = open_failure(to(peer, tls=policy))
    assert (failure.stage, failure.code, failure.tls_required) == (Stage.TLS, None, True)
    assert failure.reason == "network error"
    assert failure.text == "STARTTLS not offered"
    assert peer.messages == []


def test_required_tls_does_not_verify(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True)
    session, [result] = run(to(peer, tls=TlsPolicy.REQUIRED), envelope())
    assert result.delivered and session.connection is not None and session.connection.tls_protocol


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost"])
def test_required_verify_accepts_a_trusted_certificate(peers: PeerFactory, address: str) -> None:
    peer = peers.start(starttls=True)
    destination = Destination(
        peer.as_host(address=address),
        helo="relay.test",
        tls=TlsPolicy.REQUIRED_VERIFY,
        ca_file=peer.ca_file,
        timeouts=FAST,
    )
    session, [result] = run(destination, envelope())
    assert result.delivered
    assert session.connection is not None and session.connection.tls_verified


def test_required_verify_rejects_an_untrusted_certificate(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True)
    failure = open_failure(to(peer, tls=TlsPolicy.REQUIRED_VERIFY))
    assert (failure.stage, failure.code, failure.tls_required) == (Stage.TLS, None, True)
    assert "CERTIFICATE_VERIFY_FAILED" in failure.text
    assert failure.reason == "network error"
    assert failure.marks_host_down
    assert peer.messages == []


def test_preferred_verify_sends_in_clear_when_tls_is_not_offered(peers: PeerFactory) -> None:
    # a destination control's "preferred (verify)": no STARTTLS (or a 4xx to it) is before any 220, so clear
    peer = peers.start()
    session, [result] = run(to(peer, tls=TlsPolicy.OPPORTUNISTIC_VERIFY), envelope())
    assert result.delivered and session.connection is not None and session.connection.tls_protocol is None
    assert not peer.wait_for_messages(1)[0].tls


def test_preferred_verify_checks_the_certificate_once_tls_is_offered(peers: PeerFactory) -> None:
    trusted = peers.start(starttls=True)
    session, [result] = run(to(trusted, tls=TlsPolicy.OPPORTUNISTIC_VERIFY, ca_file=trusted.ca_file), envelope())
    assert result.delivered and session.connection is not None and session.connection.tls_verified
    assert trusted.wait_for_messages(1)[0].tls
    untrusted = peers.start(starttls=True)  # the system store does not trust the test certificate
    failure = open_failure(to(untrusted, tls=TlsPolicy.OPPORTUNISTIC_VERIFY))
    assert (failure.stage, failure.code) == (Stage.TLS, None)
    assert "CERTIFICATE_VERIFY_FAILED" in failure.text  # after the 220 to STARTTLS: no fall back to clear
    assert untrusted.messages == []


@pytest.mark.parametrize("policy", [TlsPolicy.REQUIRED, TlsPolicy.REQUIRED_VERIFY])
def test_starttls_refused_fails_a_required_policy(peers: PeerFactory, policy: TlsPolicy) -> None:
    peer = peers.start(starttls=True, starttls_reply="454 4.7.0 TLS not available")
    failure = open_failure(to(peer, tls=policy))
    assert (failure.stage, failure.code, failure.tls_required) == (Stage.TLS, 454, True)
    assert failure.reason == "unexpected SMTP response"


def test_starttls_refused_goes_on_in_clear_when_opportunistic(peers: PeerFactory) -> None:
    # a 454 comes before any handshake: the session is still clean, unlike after a failed handshake
    peer = peers.start(starttls=True, starttls_reply="454 4.7.0 TLS not available")
    session, [result] = run(to(peer, tls=TlsPolicy.OPPORTUNISTIC), envelope())
    assert result.delivered
    assert session.connection is not None and session.connection.tls_protocol is None


def test_auth_plain_after_starttls(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True, auth={"relay": "s3cret"})
    session, [result] = run(to(peer, tls=TlsPolicy.REQUIRED, auth=("relay", "s3cret")), envelope())
    assert result.delivered
    assert session.connection is not None and session.connection.authenticated
    message = peer.wait_for_messages(1)[0]
    assert (message.tls, message.auth_user) == (True, "relay")


def test_wrong_password_is_a_host_failure_that_does_not_mark_it_down(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True, auth={"relay": "s3cret"})
    failure = open_failure(to(peer, tls=TlsPolicy.REQUIRED, auth=("relay", "wrong")))
    assert (failure.stage, failure.code) == (Stage.AUTH, 535)
    assert failure.reason == "unexpected SMTP response"
    assert not failure.marks_host_down


def test_auth_not_offered_in_clear_is_a_host_failure(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True, auth={"relay": "s3cret"})  # AUTH is only offered after STARTTLS
    failure = open_failure(to(peer, tls=TlsPolicy.OFF, auth=("relay", "s3cret")))
    assert (failure.stage, failure.code, failure.text) == (Stage.AUTH, None, "AUTH not offered")


def test_without_auth_a_peer_that_requires_it_refuses_mail(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True, auth={"relay": "s3cret"})
    result = deliver(to(peer, tls=TlsPolicy.REQUIRED), envelope())
    assert {(o.verdict, o.stage, o.code) for o in result.outcomes} == {(Verdict.BOUNCE, Stage.MAIL, 530)}


# --- 8BITMIME and SMTPUTF8 --------------------------------------------------------------------------------

EIGHT_BIT = "Subject: café\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nDéjà vu.\r\n".encode()


def test_8bit_body_uses_8bitmime(peers: PeerFactory) -> None:
    peer = peers.start()
    deliver(to(peer), envelope(body=EIGHT_BIT))
    message = peer.wait_for_messages(1)[0]
    assert "BODY=8BITMIME" in message.mail_options
    assert message.content == EIGHT_BIT


def test_7bit_body_does_not_claim_8bitmime(peers: PeerFactory) -> None:
    peer = peers.start()
    deliver(to(peer))
    assert "BODY=8BITMIME" not in peer.wait_for_messages(1)[0].mail_options


def test_8bit_body_without_8bitmime_bounces(peers: PeerFactory) -> None:
    peer = peers.start(eightbitmime=False)
    _, results = run(to(peer), envelope(A, B, body=EIGHT_BIT, mid=1), envelope(C, mid=2))
    assert {(o.verdict, o.code, o.status) for o in results[0].outcomes} == {
        (Verdict.BOUNCE, None, ("5.6.3", "Conversion required but not supported"))
    }
    assert results[1].delivered  # nothing was sent for the first: the connection serves the next one
    assert [m.rcpt_tos for m in peer.wait_for_messages(1)] == [(C,)]


def test_smtputf8_used_when_offered(peers: PeerFactory) -> None:
    peer = peers.start()
    deliver(to(peer), envelope("josé@exämple.test", A))
    message = peer.wait_for_messages(1)[0]
    assert "SMTPUTF8" in message.mail_options
    assert message.rcpt_tos == ("josé@exämple.test", A)


def test_smtputf8_needed_but_not_offered_bounces(peers: PeerFactory) -> None:
    peer = peers.start(smtputf8=False)
    session, [result] = run(to(peer), envelope(A, sender="andré@example.test"))
    [outcome] = result.outcomes
    assert (outcome.verdict, outcome.code) == (Verdict.BOUNCE, None)
    assert outcome.status == ("5.6.7", "Non-ASCII addresses not permitted for that sender/recipient")
    assert "SMTPUTF8" in outcome.text
    assert session.messages_sent == 0 and peer.messages == []


# --- the peers themselves ---------------------------------------------------------------------------------


def test_peer_wait_fails_clearly_when_nothing_arrives(peers: PeerFactory) -> None:
    peer = peers.start()
    with pytest.raises(AssertionError, match="0 messages"):
        peer.wait_for_messages(1, timeout=0.05)


def test_delivers_to_postfix_smtp_sink(smtp_sink: SmtpSink) -> None:
    destination = Destination(smtp_sink.as_host(), helo="relay.test", tls=TlsPolicy.OFF, timeouts=FAST)
    session, results = run(destination, envelope(A, B, mid=1), envelope(C, mid=2, body=EIGHT_BIT))
    assert [len(r.delivered) for r in results] == [2, 1]
    assert session.connection is not None and "pipelining" in session.connection.extensions


# --- PIPELINING (RFC 2920): MAIL, RCPT... and DATA in one write, the same outcomes --------------------------


def _transactions(peer: Peer) -> list[list[bytes]]:
    """The commands in each read of the peer's that starts with MAIL FROM: [[MAIL, RCPT, RCPT, DATA]] when the
    client pipelined them in one write, [[MAIL]] when it waited for each reply (observed on the wire)."""
    return [
        [line[:4].upper() for line in read.split(b"\r\n") if line] for read in peer.reads if read[:4].upper() == b"MAIL"
    ]


def test_a_peer_offering_pipelining_gets_mail_the_rcpts_and_data_in_one_write_and_the_same_outcomes(
    peers: PeerFactory,
) -> None:
    peer = peers.start(pipelining=True, rcpt={B: "452 4.3.1 Insufficient system resources"})

    async def go() -> list[TransactionResult]:
        async with HostSession(to(peer)) as session:
            first = await session.send(envelope(A, B, C, mid=1))
            second = await session.send(envelope(B, mid=2))  # refused alone: RSET, and the session goes on
            third = await session.send(envelope(C, mid=3))
            return [first, second, third]

    first, second, third = eventloop.run(go())
    writes = _transactions(peer)
    assert writes[0] == [b"MAIL", b"RCPT", b"RCPT", b"RCPT", b"DATA"]
    assert writes[-1] == [b"MAIL", b"RCPT", b"DATA"]
    assert len(writes) == 3
    assert verdicts(first) == {0: Verdict.DELIVERED, 1: Verdict.NEXT_HOST, 2: Verdict.DELIVERED}
    assert (first.outcomes[1].stage, first.outcomes[1].code) == (Stage.RCPT, 452)
    assert verdicts(second) == {0: Verdict.NEXT_HOST} and second.failure is None
    assert third.delivered and third.data_reply.startswith("2.0.0 Ok: queued as")
    assert [m.rcpt_tos for m in peer.wait_for_messages(2)] == [(A, C), (C,)]
    assert peer.connections == 1


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_every_reply_of_a_large_pipelined_group_is_read_on_either_event_loop(
    peers: PeerFactory, settings: Any, loop: str
) -> None:
    # The peer (aiosmtpd) writes each reply on its own, so the 202 replies arrive in many pieces, some while an
    # earlier reply waits to be read: every piece must reach our reader (uvloop's transports kept calling
    # aiosmtplib's, which drops them, until the protocol was set on the transport again).
    settings.ESAROUTES_EVENT_LOOP = loop
    peer = peers.start(pipelining=True)
    recipients = [f"r{n}@dest.test" for n in range(200)]

    async def go() -> list[TransactionResult]:
        async with HostSession(to(peer)) as session:
            return [await session.send(envelope(*recipients, mid=mid)) for mid in range(1, 6)]

    results = eventloop.run(go())
    assert [r.failure for r in results] == [None] * 5
    assert all(set(verdicts(r).values()) == {Verdict.DELIVERED} for r in results)
    assert len(peer.wait_for_messages(5)) == 5


def test_pipelined_refused_mail_concerns_everyone_and_the_session_goes_on(peers: PeerFactory) -> None:
    calls = []

    def mail(address: str) -> str | None:
        calls.append(address)
        return "451 4.3.0 try later" if len(calls) == 1 else None

    peer = peers.start(pipelining=True, mail=mail)
    session, results = run(to(peer), envelope(A, B, mid=1), envelope(C, mid=2))
    assert {(o.verdict, o.stage, o.code) for o in results[0].outcomes} == {(Verdict.NEXT_HOST, Stage.MAIL, 451)}
    assert results[1].delivered and peer.wait_for_messages(1)[0].rcpt_tos == (C,)
    assert session.messages_sent == 2 and peer.connections == 1


def test_pipelined_refused_data_concerns_the_accepted_recipients(peers: PeerFactory) -> None:
    peer = peers.start(pipelining=True, data_cmd="451 4.3.0 not now", rcpt={B: "550 5.1.1 no such user"})
    result = deliver(to(peer), envelope(A, B))
    assert {o.rid: (o.verdict, o.stage) for o in result.outcomes} == {
        0: (Verdict.NEXT_HOST, Stage.DATA),
        1: (Verdict.BOUNCE, Stage.RCPT),
    }
    assert peer.messages == []


def test_a_peer_without_pipelining_gets_one_command_at_a_time(peers: PeerFactory) -> None:
    peer = peers.start()
    assert deliver(to(peer), envelope(A, B)).delivered
    assert _transactions(peer) == [[b"MAIL"]]
    commands = [read[:4].upper() for read in peer.reads]
    assert commands[commands.index(b"MAIL") :][:4] == [b"MAIL", b"RCPT", b"RCPT", b"DATA"]  # one read each


def test_pipelining_starts_after_starttls(peers: PeerFactory) -> None:
    peer = peers.start(starttls=True, pipelining=True)

    async def go() -> tuple[TransactionResult, HostSession]:
        async with HostSession(to(peer, tls=TlsPolicy.OPPORTUNISTIC)) as session:
            result = await session.send(envelope(A, B))
            return result, session

    result, session = eventloop.run(go())
    assert result.delivered
    assert _transactions(peer) == [[b"MAIL", b"RCPT", b"RCPT", b"DATA"]]
    assert session.connection is not None and session.connection.tls_protocol is not None
    [message] = peer.wait_for_messages(1)
    assert message.tls and message.rcpt_tos == (A, B)


def test_a_long_ehlo_reply_is_read_whole_the_extensions_after_its_first_2000_characters_too(peers: PeerFactory) -> None:
    filler = "\r\n".join(f"250-X-FILLER-{i:03d} {'x' * 60}" for i in range(60))  # 4,500 characters
    peer = peers.start(ehlo=f"250-peer.test\r\n{filler}\r\n250-8BITMIME\r\n250 PIPELINING", pipelining=True)

    async def go() -> tuple[frozenset[str], TransactionResult]:
        async with HostSession(to(peer)) as session:
            result = await session.send(envelope(A))
            assert session.connection is not None
            return session.connection.extensions, result

    extensions, result = eventloop.run(go())
    assert {"8bitmime", "pipelining"} <= extensions
    assert _transactions(peer) == [[b"MAIL", b"RCPT", b"DATA"]]
    assert result.delivered


@pytest.mark.parametrize(
    ("exc", "peer", "text"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 12602)"),
            "127.0.0.1:12602",
            "connection refused by 127.0.0.1:12602",
        ),
        (
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            "[::1]:25",
            "connection reset by [::1]:25",
        ),
        (
            OSError(errno.EHOSTUNREACH, "No route to host"),
            "127.0.0.9:25",
            "no route to 127.0.0.9:25 (host unreachable)",
        ),
        (ConnectionRefusedError(errno.ECONNREFUSED, "x"), "", "connection refused by the peer"),
        (OSError(errno.EACCES, "Permission denied"), "127.0.0.1:25", "permission denied (127.0.0.1:25)"),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "",
            "host name lookup failed: name or service not known",
        ),
    ],
)
def test_an_os_error_is_said_in_words_not_as_python_text(exc: OSError, peer: str, text: str) -> None:
    assert os_error_text(exc, peer) == text
    assert peer_text("2001:db8::1", 25) == "[2001:db8::1]:25" and peer_text("127.0.0.1", 25) == "127.0.0.1:25"
