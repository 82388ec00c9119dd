"""The pure delivery rules, as tables. No network, no database, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from delivery import engine
from delivery.engine import Host, Stage, Verdict

A = Host("10.0.0.1", priority=10)
B = Host("10.0.0.2", priority=10)
C = Host("10.0.0.3", priority=10)
BACKUP = Host("10.0.0.9", priority=20)
PRIMARY = Host("10.0.0.5", priority=0)


def names(hosts: list[Host]) -> list[str]:
    return [h.address.rsplit(".", 1)[1] for h in hosts]


# --- order_hosts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "rr", "down", "expected"),
    [
        ([A], 0, (), ["1"]),
        ([A], 7, (), ["1"]),
        # lowest priority number first, whatever the configured order
        ([BACKUP, PRIMARY], 0, (), ["5", "9"]),
        # equal priority: each connection starts one host further on
        ([A, B, C], 0, (), ["1", "2", "3"]),
        ([A, B, C], 1, (), ["2", "3", "1"]),
        ([A, B, C], 2, (), ["3", "1", "2"]),
        ([A, B, C], 3, (), ["1", "2", "3"]),
        ([A, B, C], -1, (), ["3", "1", "2"]),
        # the rotation stays inside its priority group; backups keep their place
        ([BACKUP, A, B, PRIMARY], 1, (), ["5", "2", "1", "9"]),
        # down hosts are skipped...
        ([A, B, C], 0, {B.key}, ["1", "3"]),
        # ...and the round-robin shares the turns among the hosts that are up
        ([A, B, C], 1, {B.key}, ["3", "1"]),
        ([PRIMARY, A, B], 0, {PRIMARY.key}, ["1", "2"]),
        # every host down: try them all anyway, in the usual order
        ([A, B, BACKUP], 1, {A.key, B.key, BACKUP.key}, ["2", "1", "9"]),
        # a down entry for another port of the same address is another host
        ([A, B], 0, {("10.0.0.1", 2525)}, ["1", "2"]),
        ([], 3, (), []),
    ],
)
def test_order_hosts(hosts: list[Host], rr: int, down: set[tuple[str, int]], expected: list[str]) -> None:
    assert names(engine.order_hosts(hosts, rr, down)) == expected


def test_round_robin_spreads_first_connections_evenly() -> None:
    firsts = [engine.order_hosts([A, B, C, BACKUP], rr, ())[0] for rr in range(300)]
    assert {h: firsts.count(h) for h in (A, B, C)} == {A: 100, B: 100, C: 100}


W1 = Host("10.0.0.1", priority=10, weight=1)
W2 = Host("10.0.0.2", priority=10, weight=2)
W7 = Host("10.0.0.3", priority=10, weight=7)


@pytest.mark.parametrize(
    ("weights", "picks"),
    [
        ((1,), [0, 0, 0]),
        ((1, 1, 1), [0, 1, 2, 0, 1, 2]),  # equal weights: the plain rotation, whatever their value
        ((5, 5, 5), [0, 1, 2, 0, 1, 2]),
        ((2, 1), [0, 1, 0, 0, 1, 0]),
        ((5, 1, 1), [0, 0, 1, 0, 2, 0, 0, 0]),  # nginx's example: the heavy host's turns are spread out
        ((1, 2, 7), [2, 1, 2, 2, 0, 2, 2, 1, 2, 2, 2]),
        ((0, 1), [0, 1, 0]),  # a weight below 1 counts as 1
    ],
)
def test_weighted_pick_is_smooth_weighted_round_robin(weights: tuple[int, ...], picks: list[int]) -> None:
    assert [engine.weighted_pick(weights, n) for n in range(len(picks))] == picks


@pytest.mark.parametrize(("weights", "shares"), [((1, 2, 7), [100, 200, 700]), ((3, 1), [750, 250])])
def test_weighted_pick_shares_in_proportion(weights: tuple[int, ...], shares: list[int]) -> None:
    firsts = [engine.weighted_pick(weights, n) for n in range(1000)]
    assert [firsts.count(i) for i in range(len(weights))] == shares


def test_weighted_pick_is_a_function_of_the_counter() -> None:
    """Every worker reads the same shared counter: the same count names the same host, negative ones too."""
    assert [engine.weighted_pick((1, 2, 7), n) for n in (-1, 9, 19, 10**12 + 9)] == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="no hosts"):
        engine.weighted_pick((), 0)


@pytest.mark.parametrize(
    ("hosts", "rr", "down", "expected"),
    [
        # the picked host first, then the others in the configured order from there on
        ([W1, W2, W7], 0, (), ["3", "1", "2"]),
        ([W1, W2, W7], 1, (), ["2", "3", "1"]),
        ([W1, W2, W7], 4, (), ["1", "2", "3"]),
        # a down host's turns go to the others in proportion to their weights (here 1:2)
        ([W1, W2, W7], 0, {W7.key}, ["2", "1"]),
        ([W1, W2, W7], 1, {W7.key}, ["1", "2"]),
        ([W1, W2, W7], 2, {W7.key}, ["2", "1"]),
        # the weights count within a priority; the backup keeps its place
        ([BACKUP, W1, W7], 0, (), ["3", "1", "9"]),
    ],
)
def test_order_hosts_with_weights(hosts: list[Host], rr: int, down: set[tuple[str, int]], expected: list[str]) -> None:
    assert names(engine.order_hosts(hosts, rr, down)) == expected


def test_a_down_hosts_share_goes_to_the_others_in_proportion() -> None:
    firsts = [engine.order_hosts([W1, W2, W7], rr, {W7.key})[0] for rr in range(900)]
    assert (firsts.count(W1), firsts.count(W2)) == (300, 600)


def test_mx_exchanges_keep_their_route_hosts_weight() -> None:
    relay = Host("relay.example", priority=10, weight=4)
    expanded = engine.expand_exchanges([relay], {"relay.example": ["mx1.example"]})
    assert expanded == [Host("mx1.example", 25, 10, 4)]


# --- before_connecting: a host whose first connection has not greeted ------------------------------------

Opening = engine.Opening
G = engine.Greeting
FREE = G()  # nothing of ours on the way to it, nothing known
WAITING = G(opening=1)  # a connection on its way, never seen greeting (or it failed to since)
KNOWN = G(opening=3, greeted_ago=2.0)  # connections on their way, and it greeted 2 s ago
KNOWN_IDLE = G(greeted_ago=2.0)
STALE = G(opening=1, greeted_ago=engine.GREETED_RECENTLY + 1)  # it greeted, but too long ago to count
FAILED = G(failed_ago=3.0)  # a connection of ours failed to greet 3 s ago (down 60 s), none on its way


@pytest.mark.parametrize(
    ("host", "later", "expected"),
    [
        # nothing on the way, or a host known to greet: open, in parallel if need be (round-robin untouched)
        (FREE, [], Opening.OPEN),
        (FREE, [WAITING], Opening.OPEN),
        (KNOWN_IDLE, [FREE], Opening.OPEN),
        (KNOWN, [FREE], Opening.OPEN),
        (KNOWN, [], Opening.OPEN),
        (G(opening=1, greeted_ago=engine.GREETED_RECENTLY), [FREE], Opening.OPEN),  # the bound counts as recent
        # its first connection waiting, nothing known: the next host that is free takes the message at once
        (WAITING, [FREE], Opening.PASS),
        (WAITING, [KNOWN], Opening.PASS),
        (WAITING, [KNOWN_IDLE], Opening.PASS),
        (WAITING, [WAITING, KNOWN], Opening.PASS),  # any later host will do: it is tried in its turn
        (G(opening=4), [FREE], Opening.PASS),
        (STALE, [FREE], Opening.PASS),  # greeted long ago: nothing is known of it now
        # every later host waiting too (the start-up instant): the first greeting decides
        (WAITING, [WAITING], Opening.WAIT),
        (WAITING, [WAITING, STALE], Opening.WAIT),
        # failed to greet lately (its host-down mark may not be seen yet by what was planned before): as if down
        (FAILED, [FREE], Opening.PASS),
        (FAILED, [KNOWN], Opening.PASS),
        (G(failed_ago=61.0), [FREE], Opening.OPEN),  # the first host-down period is over: tried again
        (WAITING, [FAILED], Opening.OPEN),  # nowhere better, nothing to wait for: tried (in parallel)
        (WAITING, [FAILED, WAITING], Opening.WAIT),
        # no later host of the route: the last host is always tried
        (WAITING, [], Opening.OPEN),
        (STALE, [], Opening.OPEN),
        (FAILED, [], Opening.OPEN),
        (FAILED, [FAILED], Opening.OPEN),
    ],
)
def test_before_connecting(host: engine.Greeting, later: list[engine.Greeting], expected: engine.Opening) -> None:
    assert engine.before_connecting(host, later) is expected


@pytest.mark.parametrize(
    ("host", "later", "expected"),
    [
        (FREE, [FREE], True),  # the first connection to a host nothing is known of: one message until it greets
        (FREE, [KNOWN], True),
        (FREE, [WAITING, FREE], True),
        (G(greeted_ago=engine.GREETED_RECENTLY + 1), [FREE], True),  # known once, too long ago
        (FREE, [], False),  # no later host to take the others: they ride it, as before
        (FREE, [WAITING], False),  # nor one that is free now
        (FREE, [FAILED], False),
        (KNOWN_IDLE, [FREE], False),  # it greets: a connection carries what it can
        (WAITING, [FREE], False),  # not the first: the others pass it over anyway (before_connecting)
        (FAILED, [FREE], False),  # passed over altogether
    ],
)
def test_probe_alone(host: engine.Greeting, later: list[engine.Greeting], expected: bool) -> None:
    assert engine.probe_alone(host, later) is expected


@pytest.mark.parametrize(
    ("stage", "code", "expected"),
    [
        (Stage.CONNECT, None, False),  # refused, timed out, no route
        (Stage.GREETING, None, False),  # accepted TCP, never greeted (or hung up first)
        (Stage.GREETING, 421, True),  # it answered, if only to say no
        (Stage.GREETING, 554, True),
        (Stage.EHLO, None, True),  # greeted, then went silent
        (Stage.TLS, None, True),
        (Stage.AUTH, 535, True),
    ],
)
def test_greeted(stage: Stage, code: int | None, expected: bool) -> None:
    assert engine.greeted(stage, code) is expected


# --- verdict ----------------------------------------------------------------------------------------------

CONNECTION = [Stage.CONNECT, Stage.GREETING, Stage.TLS, Stage.EHLO, Stage.AUTH]
TRANSACTION = [Stage.MAIL, Stage.RCPT, Stage.DATA]


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("defer", [False, True])
def test_no_reply_always_fails_over(stage: Stage, defer: bool) -> None:
    assert engine.verdict(stage, None, defer_on_4xx=defer) is Verdict.NEXT_HOST


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("code", [220, 235, 250, 251, 354])
def test_positive_reply_goes_on(stage: Stage, code: int) -> None:
    assert engine.verdict(stage, code) is Verdict.DELIVERED


@pytest.mark.parametrize("stage", CONNECTION)
@pytest.mark.parametrize("code", [421, 450, 452, 454, 500, 502, 530, 535, 550, 554])
@pytest.mark.parametrize("defer", [False, True])
def test_any_refusal_before_mail_is_a_host_failure(stage: Stage, code: int, defer: bool) -> None:
    assert engine.verdict(stage, code, defer_on_4xx=defer) is Verdict.NEXT_HOST


@pytest.mark.parametrize(
    ("stage", "code", "defer", "expected"),
    [
        (Stage.MAIL, 451, False, Verdict.NEXT_HOST),
        (Stage.RCPT, 452, False, Verdict.NEXT_HOST),
        (Stage.RCPT, 421, False, Verdict.NEXT_HOST),
        (Stage.DATA, 451, False, Verdict.NEXT_HOST),
        (Stage.MAIL, 451, True, Verdict.DEFER),
        (Stage.RCPT, 452, True, Verdict.DEFER),
        (Stage.DATA, 451, True, Verdict.DEFER),
        (Stage.MAIL, 553, False, Verdict.BOUNCE),
        (Stage.RCPT, 550, False, Verdict.BOUNCE),
        (Stage.RCPT, 550, True, Verdict.BOUNCE),
        (Stage.DATA, 554, False, Verdict.BOUNCE),
        (Stage.DATA, 552, True, Verdict.BOUNCE),
        # not an SMTP reply we can act on (aiosmtplib's -1 for garbage, a 6xx, a stray 1xx)
        (Stage.RCPT, -1, False, Verdict.NEXT_HOST),
        (Stage.DATA, 600, True, Verdict.NEXT_HOST),
        (Stage.MAIL, 199, False, Verdict.NEXT_HOST),
    ],
)
def test_replies_after_mail(stage: Stage, code: int, defer: bool, expected: Verdict) -> None:
    assert engine.verdict(stage, code, defer_on_4xx=defer) is expected


@pytest.mark.parametrize(
    ("stage", "code", "reused", "down"),
    [
        (Stage.CONNECT, None, False, True),
        (Stage.GREETING, None, False, True),
        (Stage.GREETING, 421, False, True),
        (Stage.GREETING, 554, False, True),
        (Stage.TLS, None, False, True),
        (Stage.TLS, 454, False, True),
        (Stage.EHLO, 502, False, True),
        (Stage.AUTH, 535, False, False),  # our credentials, not the host
        (Stage.AUTH, None, False, True),  # dropped during AUTH
        (Stage.MAIL, 451, False, False),
        (Stage.RCPT, 452, False, False),
        (Stage.DATA, 554, False, False),
        (Stage.RCPT, None, False, True),  # dropped mid-transaction
        (Stage.DATA, None, True, True),  # dropped after the dot, even on a reused connection
        (Stage.MAIL, None, False, True),
        (Stage.MAIL, None, True, False),  # an idle reused connection the peer had closed
    ],
)
def test_marks_host_down(stage: Stage, code: int | None, reused: bool, down: bool) -> None:
    assert engine.marks_host_down(stage, code, reused_connection=reused) is down


@pytest.mark.parametrize(
    ("stage", "code", "timed_out", "reason"),
    [
        (Stage.CONNECT, None, False, "network error"),
        (Stage.CONNECT, None, True, "connection timed out"),
        (Stage.GREETING, None, True, "connection timed out"),
        (Stage.GREETING, 421, False, "unexpected SMTP response"),
        (Stage.EHLO, 554, False, "unexpected SMTP response"),
        (Stage.TLS, None, False, "network error"),
        (Stage.TLS, None, True, "connection timed out"),
        (Stage.TLS, 454, False, "unexpected SMTP response"),
        (Stage.AUTH, 535, False, "unexpected SMTP response"),
        (Stage.RCPT, None, False, "network error"),
        (Stage.DATA, None, True, "connection timed out"),
    ],
)
def test_connection_error_reason_is_one_of_the_esas_four_at_any_stage(
    stage: Stage, code: int | None, timed_out: bool, reason: str
) -> None:
    assert engine.connection_error_reason(code, timed_out=timed_out) == reason  # the stage does not change it


# --- schedules --------------------------------------------------------------------------------------------

MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("attempts", "seconds"),
    [(0, 60), (1, 60), (2, 120), (3, 240), (4, 480), (6, 1920), (7, 3600), (8, 3600), (100, 3600), (10**6, 3600)],
)
def test_retry_delay_doubles_up_to_the_maximum(attempts: int, seconds: int) -> None:
    assert engine.retry_delay(attempts, MIN, HOUR) == timedelta(seconds=seconds)
    assert engine.retry_delay(attempts) == timedelta(seconds=seconds)  # the bounce profile defaults


@pytest.mark.parametrize(
    ("attempts", "initial", "maximum", "seconds"),
    [
        (1, 60, 60, 60),
        (5, 60, 60, 60),
        (3, 10, 1000, 40),
        (2, 300, 200, 200),  # a maximum below the initial wait wins
    ],
)
def test_retry_delay_other_profiles(attempts: int, initial: int, maximum: int, seconds: int) -> None:
    got = engine.retry_delay(attempts, timedelta(seconds=initial), timedelta(seconds=maximum))
    assert got == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(-1, 0), (0, 0), (1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (50, 3600), (10**6, 3600)],
)
def test_host_down_for(failures: int, seconds: int) -> None:
    assert engine.host_down_for(failures) == timedelta(seconds=seconds)
    assert engine.host_down_for(failures, MIN, HOUR) == timedelta(seconds=seconds)


def test_host_down_for_is_configurable() -> None:
    assert engine.host_down_for(3, timedelta(seconds=5), timedelta(seconds=15)) == timedelta(seconds=15)
    assert engine.host_down_for(2, timedelta(seconds=5), timedelta(seconds=15)) == timedelta(seconds=10)


T0 = datetime(2024, 1, 9, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempts", "elapsed", "max_retries", "lifetime", "expired"),
    [
        (1, 0, 100, 259_200, False),
        (100, 3600, 100, 259_200, False),
        (101, 3600, 100, 259_200, True),  # the first attempt plus 100 retries
        (5, 259_199, 100, 259_200, False),
        (5, 259_200, 100, 259_200, True),  # 72 hours in the queue
        # Cisco's worked example 1: retries=2 → attempts at t=0, 60, 120, then bounce
        (1, 60, 2, 259_200, False),
        (2, 120, 2, 259_200, False),
        (3, 180, 2, 259_200, True),
        # Cisco's worked example 2: lifetime 100 s → attempts at t=0 and 60; bounce when t=120 comes due
        (1, 60, 100, 100, False),
        (2, 120, 100, 100, True),
        (0, 0, 0, 259_200, False),  # max_retries 0: one attempt, no retry
        (1, 0, 0, 259_200, True),
    ],
)
def test_is_expired(attempts: int, elapsed: int, max_retries: int, lifetime: int, expired: bool) -> None:
    now = T0 + timedelta(seconds=elapsed)
    assert engine.is_expired(T0, attempts, now, max_retries, timedelta(seconds=lifetime)) is expired


def test_is_expired_defaults_are_the_default_bounce_profile() -> None:
    assert not engine.is_expired(T0, 100, T0 + timedelta(hours=71))
    assert engine.is_expired(T0, 101, T0)
    assert engine.is_expired(T0, 1, T0 + timedelta(hours=72))


@pytest.mark.parametrize(
    ("domain", "suspended", "result"),
    [
        ("dest.test", set(), False),
        ("dest.test", {"dest.test"}, True),
        ("dest.test", {"other.test"}, False),
        ("sub.dest.test", {"dest.test"}, False),  # a suspension names one destination domain, exactly
        ("dest.test", {"ALL"}, True),
        ("all", {"ALL"}, True),
    ],
)
def test_is_suspended(domain: str, suspended: set[str], result: bool) -> None:
    assert engine.is_suspended(domain, suspended) is result


# --- enhanced status codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "status", "phrase"),
    [
        # parsed from the reply (the ESA samples of reference/esa.md §2.2 and §5.3)
        (452, "4.3.1 Insufficient system resources", "4.3.1", "Mail system full"),
        (421, "4.3.2 try again later", "4.3.2", "Not accepting messages at this time"),
        (550, "5.1.1 <bob@example.test>: Recipient address rejected", "5.1.1", "Bad destination email address"),
        (550, "5.1.0 Address rejected", "5.1.0", "Unknown address error"),
        (553, "5.1.2 Unknown mail server", "5.1.2", "Bad destination host"),
        (552, "5.2.2 Over quota", "5.2.2", "Mailbox full"),
        (554, "5.7.1 Relay access denied", "5.7.1", "Delivery not authorized, message refused"),
        (535, "5.7.8 Authentication credentials invalid", "5.7.8", "Authentication credentials invalid"),
        (250, "2.0.0 Ok: queued as 4XyZ", "2.0.0", "Other undefined status"),
        (250, "2.1.5 Ok", "2.1.5", "Destination address valid"),
        (550, "5.1.10 null MX", "5.1.10", "Recipient address has null MX"),
        # leading zeros and multi-line replies: only the first line counts
        (451, "4.03.000 odd\n4.4.1 second line", "4.3.0", "Other or undefined mail system status"),
        # unknown detail: its subject's "other" phrase
        (550, "5.1.99 nonesuch", "5.1.99", "Unknown address error"),
        (450, "4.4.42 whatever", "4.4.42", "Other network problem"),
        (550, "5.9.9 unknown subject", "5.9.9", "Other undefined status"),
        # derived from the reply code when the text has none...
        (550, "Relaying denied", "5.0.0", "Other undefined status"),
        (452, "Insufficient system resources", "4.0.0", "Other undefined status"),
        (250, "Ok", "2.0.0", "Other undefined status"),
        # ...or when its class contradicts the reply code (RFC 3463 §2)
        (550, "4.2.2 mailbox full", "5.0.0", "Other undefined status"),
        (451, "5.7.1 denied", "4.0.0", "Other undefined status"),
        # not a code: a version number, an IP
        (550, "5.1.1.1 nope", "5.0.0", "Other undefined status"),
        (451, "10.0.0.1 busy", "4.0.0", "Other undefined status"),
        # no reply at all
        (None, "Connection reset by peer", "4.4.0", "Other network problem"),
        (None, "timeout", "4.4.0", "Other network problem"),
        (None, "", "4.4.0", "Other network problem"),
        # our own decisions, written as a status in the text with no reply code
        (None, "5.6.7 SMTPUTF8 is required", "5.6.7", "Non-ASCII addresses not permitted for that sender/recipient"),
        (None, "5.6.3 8BITMIME is required", "5.6.3", "Conversion required but not supported"),
        (None, "5.4.7 timeout", "5.4.7", "Delivery expired (message too old)"),
        # garbage reply codes
        (-1, "Malformed SMTP response line", "4.5.0", "Other or undefined protocol status"),
        (354, "go ahead", "4.5.0", "Other or undefined protocol status"),
    ],
)
def test_enhanced_status(code: int | None, text: str, status: str, phrase: str) -> None:
    assert engine.enhanced_status(code, text) == (status, phrase)


def test_expired_constant_matches_the_esa_line() -> None:
    assert engine.EXPIRED == ("5.4.7", "Delivery expired (message too old)")
    assert engine.status_phrase("5.4.7") == engine.EXPIRED[1]


@pytest.mark.parametrize(
    ("status", "phrase"), [("4.4.0", "Other network problem"), ("5.3.4", "Message too big for system")]
)
def test_status_phrase(status: str, phrase: str) -> None:
    assert engine.status_phrase(status) == phrase


def test_host_key_and_str() -> None:
    h = Host("mx1.example.test", 2525, 10)
    assert h.key == ("mx1.example.test", 2525)
    assert str(h) == "mx1.example.test:2525/pri=10"
    assert Host("::1") == Host("::1", 25, 0)


def test_expand_exchanges_keeps_the_route_order_and_mx_preference():
    from delivery.engine import Host, expand_exchanges

    relay, ip = Host("relay.test", 2525, 0), Host("10.0.0.9", 25, 10)
    exchanges = {"relay.test": ["mx1.relay.test", "mx2.relay.test"]}
    assert expand_exchanges([relay, ip], exchanges) == [
        Host("mx1.relay.test", 2525, 0),
        Host("mx2.relay.test", 2525, 0),
        ip,
    ]
    assert expand_exchanges([relay], {}) == [relay]  # no MX: the name itself (A/AAAA)
    down = {("mx1.relay.test", 2525)}
    assert expand_exchanges([relay], exchanges, down) == [Host("mx2.relay.test", 2525, 0)]
    both = down | {("mx2.relay.test", 2525)}
    assert [h.address for h in expand_exchanges([relay], exchanges, both)] == ["mx1.relay.test", "mx2.relay.test"]


# --- the fallback relay -----------------------------------------------------------------------------------

RELAY = Host("10.0.0.99", 2525)
MX_RELAY = Host("10.0.0.98")


@pytest.mark.parametrize(
    ("route_relay", "mx_relay", "by_mx", "expected"),
    [
        (None, None, False, None),
        (None, None, True, None),
        (RELAY, None, False, RELAY),  # a route's own
        (RELAY, MX_RELAY, True, RELAY),  # a USEDNS route's own wins over the setting
        (None, MX_RELAY, True, MX_RELAY),  # USEDNS or no route: the setting
        (None, MX_RELAY, False, None),  # a route with hosts: the setting is not for it
    ],
)
def test_fallback_relay_is_the_routes_else_the_settings_for_mx_delivery(route_relay, mx_relay, by_mx, expected):
    assert engine.fallback_relay(route_relay, mx_relay, by_mx=by_mx) == expected


@pytest.mark.parametrize(
    ("hosts", "fallback", "expected"),
    [
        ([A, B], None, ["1", "2"]),
        ([A, B], RELAY, ["1", "2", "99"]),  # last, after every host of the route
        ([A, Host("10.0.0.99", 2525, 10)], RELAY, ["1", "99"]),  # already one of the route's hosts: once
        ([A, Host("10.0.0.99", 25, 10)], RELAY, ["1", "99", "99"]),  # same address, other port: another host
        ([], RELAY, ["99"]),
    ],
)
def test_with_fallback_puts_the_relay_last_and_never_twice(hosts, fallback, expected):
    assert names(engine.with_fallback(hosts, fallback)) == expected


@pytest.mark.parametrize(
    ("stage", "code", "defer", "reaches_fallback"),
    [
        (Stage.CONNECT, None, False, True),  # refused, timed out
        (Stage.GREETING, 421, False, True),
        (Stage.GREETING, 554, False, True),  # a 5xx before MAIL FROM: this host failed
        (Stage.RCPT, 452, False, True),
        (Stage.DATA, None, False, True),  # dropped
        (Stage.RCPT, 550, False, False),  # bounces: no other host, no fallback
        (Stage.DATA, 554, False, False),
        (Stage.RCPT, 451, True, False),  # defer_on_4xx: waits for its retry
    ],
)
def test_only_a_reply_that_moves_on_to_the_next_host_reaches_the_fallback(stage, code, defer, reaches_fallback):
    assert (engine.verdict(stage, code, defer_on_4xx=defer) is Verdict.NEXT_HOST) is reaches_fallback


# --- destination controls: IP address preference and TLS level ------------------------------------------

DUAL = ["::1", "127.0.0.1", "2001:db8::2", "127.0.0.2"]


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        ("ipv4-preferred", ["127.0.0.1", "127.0.0.2", "::1", "2001:db8::2"]),
        ("ipv4-required", ["127.0.0.1", "127.0.0.2"]),
        ("ipv6-preferred", ["::1", "2001:db8::2", "127.0.0.1", "127.0.0.2"]),
        ("ipv6-required", ["::1", "2001:db8::2"]),
        ("unknown", DUAL),
    ],
)
def test_order_addresses_by_ip_preference(preference: str, expected: list[str]) -> None:
    assert engine.order_addresses(DUAL, preference) == expected


def test_order_addresses_required_with_no_address_of_the_family_is_empty() -> None:
    assert engine.order_addresses(["127.0.0.1", "127.0.0.1"], "ipv6-required") == []
    assert engine.order_addresses(["::1"], "ipv4-required") == []
    assert engine.order_addresses(["127.0.0.1", "127.0.0.1"], "ipv4-preferred") == ["127.0.0.1"]


def test_no_address_text_names_the_family_and_what_the_host_has() -> None:
    assert engine.no_address_text("mx.test", "ipv6-required", ["127.0.0.1"]) == (
        "no IPv6 address for mx.test (IPv6 required; it has 127.0.0.1)"
    )
    assert engine.no_address_text("mx.test", "ipv4-required", []) == "no address for mx.test"


@pytest.mark.parametrize(
    ("route", "destination", "expected"),
    [
        # mail delivered by MX lookup (USEDNS, no route): the destination's level alone
        (None, "none", "off"),
        (None, "preferred", "opportunistic"),
        (None, "preferred-verify", "opportunistic_verify"),
        (None, "required", "required"),
        (None, "required-verify", "required_verify"),
        # routed mail: the stricter of the two, per demand (TLS at all, TLS required, certificate verified)
        ("off", "none", "off"),
        ("off", "preferred", "opportunistic"),
        ("opportunistic", "none", "opportunistic"),
        ("off", "required", "required"),
        ("required", "none", "required"),
        ("required", "preferred", "required"),
        ("opportunistic", "preferred-verify", "opportunistic_verify"),
        ("required", "preferred-verify", "required_verify"),
        ("required_verify", "preferred", "required_verify"),
        ("opportunistic", "required-verify", "required_verify"),
        ("required_verify", "none", "required_verify"),
    ],
)
def test_tls_policy_is_the_stricter_of_route_and_destination(
    route: str | None, destination: str, expected: str
) -> None:
    assert engine.tls_policy(route, destination) == expected


# --- delay warnings ---------------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("enabled", "null_sender", "attempts", "sent", "maximum", "last", "now", "due"),
    [
        (False, False, 5, 0, 3, None, T0, False),  # off (the default)
        (True, True, 5, 0, 3, None, T0, False),  # never to <>
        (True, False, 1, 0, 3, None, T0, False),  # the first delay: no warning yet
        (True, False, 2, 0, 3, None, T0, True),  # the second failed attempt: the first warning
        (True, False, 9, 0, 3, None, T0, True),
        (True, False, 3, 1, 3, T0, T0 + HOUR - timedelta(seconds=1), False),  # sooner than the interval
        (True, False, 3, 1, 3, T0, T0 + HOUR, True),  # the interval has passed
        (True, False, 4, 3, 3, T0, T0 + 10 * HOUR, False),  # the maximum is reached
        (True, False, 4, 1, 1, T0, T0 + 10 * HOUR, False),
    ],
)
def test_delay_warning_due(enabled, null_sender, attempts, sent, maximum, last, now, due):
    assert (
        engine.delay_warning_due(
            enabled=enabled,
            null_sender=null_sender,
            attempts=attempts,
            sent=sent,
            maximum=maximum,
            last_sent_at=last,
            interval=HOUR,
            now=now,
        )
        is due
    )
