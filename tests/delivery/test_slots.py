"""Destination limits: the pure decisions as tables, and the shared counters on this pass's backend (Redis with
REDIS_URL set, the database on the embedded default), lease expiry included."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from delivery import engine, slots

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("limit", "in_use", "expected"), [(2, 0, 2), (2, 1, 1), (2, 2, 0), (2, 5, 0), (500, 499, 1), (1, 0, 1)]
)
def test_connections_allowed_is_the_room_left(limit: int, in_use: int, expected: int) -> None:
    assert engine.connections_allowed(limit, in_use) == expected


@pytest.mark.parametrize(
    ("full", "connected", "held"),
    [
        (0, False, False),  # every address failed (or none was allowed): the host failed
        (1, False, True),  # the only address had its slots held: wait for one
        (2, False, True),  # both full
        (1, False, True),  # one full, the other failed to connect: wait for the full one's slot
        (1, True, False),  # one full, the next connected: nothing held back
        (0, True, False),
    ],
)
def test_held_for_slots_when_no_address_connected_and_one_was_full(full: int, connected: bool, held: bool) -> None:
    assert engine.held_for_slots(full, connected=connected) is held


TAKEN, GIVEN_BACK = engine.SlotChange.TAKEN, engine.SlotChange.GIVEN_BACK


@pytest.mark.parametrize(
    ("change", "limit", "held", "waiting", "ends"),
    [
        (TAKEN, 2, 1, True, True),  # a slot to spare: the limit holds nothing back, whoever waited
        (TAKEN, 2, 2, False, False),  # the last slot: at the limit still (the taker cannot see who else waits)
        (TAKEN, 1, 1, False, False),  # a limit of 1 never has a slot to spare when one is taken
        (TAKEN, 500, 499, False, True),
        (GIVEN_BACK, 1, 0, False, True),  # given back and nothing waits: the backlog is through
        (GIVEN_BACK, 1, 0, True, False),  # given back to mail waiting: it takes it, at the limit again
        (GIVEN_BACK, 2, 1, True, False),
        (GIVEN_BACK, 2, 1, False, True),
    ],
)
def test_a_connection_episode_ends_with_a_slot_to_spare_or_a_slot_given_back_to_nobody(
    change: engine.SlotChange, limit: int, held: int, waiting: bool, ends: bool
) -> None:
    assert engine.connection_episode_ends(change, limit=limit, held=held, waiting=waiting) is ends


@pytest.mark.parametrize(
    ("limit", "in_window", "wanted", "expected"),
    [(30, 0, 10, 10), (30, 25, 10, 5), (30, 30, 1, 0), (30, 40, 1, 0), (30, 0, 100, 30), (1, 0, 0, 0)],
)
def test_recipients_allowed_never_passes_the_limit(limit: int, in_window: int, wanted: int, expected: int) -> None:
    assert engine.recipients_allowed(limit, in_window, wanted) == expected


@pytest.mark.parametrize(
    ("charges", "limit", "expected"),
    [
        ([], 30, T0),  # nothing sent: now
        ([(T0 - timedelta(seconds=10), 29)], 30, T0),  # room for one more: now
        ([(T0 - timedelta(seconds=10), 30)], 30, T0 + timedelta(seconds=50)),  # full: when that charge leaves
        # full of two charges: the oldest one leaving is enough
        ([(T0 - timedelta(seconds=5), 10), (T0 - timedelta(seconds=40), 20)], 30, T0 + timedelta(seconds=20)),
        # the oldest leaving is not enough: the next one too
        ([(T0 - timedelta(seconds=40), 1), (T0 - timedelta(seconds=5), 29)], 29, T0 + timedelta(seconds=55)),
        ([(T0 - timedelta(seconds=70), 30)], 30, T0),  # already out of the window
    ],
)
def test_window_frees_when_its_oldest_recipients_slide_out(
    charges: list[tuple[datetime, int]], limit: int, expected: datetime
) -> None:
    assert engine.window_frees_at(charges, limit=limit, minutes=1, now=T0) == expected


@pytest.fixture
def clean_slots(db: None) -> Iterator[None]:
    slots.flush()
    yield
    slots.flush()


@pytest.mark.usefixtures("clean_slots")
def test_a_slot_is_refused_at_the_limit_and_comes_back_on_release() -> None:
    now = datetime.now(UTC)
    assert slots.acquire("example.test", "w1:1", 2, now=now) == 1
    assert slots.acquire("example.test", "w1:2", 2, now=now) == 2  # how many are held with it
    assert slots.acquire("example.test", "w2:3", 2, now=now) == 0
    assert slots.in_use("example.test", now=now) == 2
    assert slots.in_use("other.test", now=now) == 0
    assert slots.acquire("example.test", "w1:1", 2, now=now)  # the same holder again: still its one slot
    slots.release("example.test", "w1:1")
    assert slots.in_use("example.test", now=now) == 1
    assert slots.acquire("example.test", "w2:3", 2, now=now)


@pytest.mark.usefixtures("clean_slots")
def test_a_dead_holders_slot_expires_within_the_ttl_and_a_refreshed_one_does_not() -> None:
    now = datetime.now(UTC)
    assert slots.acquire("example.test", "dead:1", 2, now=now)
    assert slots.acquire("example.test", "alive:2", 2, now=now)
    later = now + timedelta(seconds=slots.SLOT_TTL * 0.6)
    slots.refresh([("example.test", "alive:2")], now=later)  # the live runner's heartbeat
    after = now + timedelta(seconds=slots.SLOT_TTL + 0.5)
    assert slots.in_use("example.test", now=after) == 1
    assert slots.acquire("example.test", "new:3", 2, now=after)  # the dead one's slot is free again
    assert not slots.acquire("example.test", "new:4", 2, now=after)


@pytest.mark.usefixtures("clean_slots")
def test_the_recipient_window_grants_up_to_the_limit_and_says_when_it_frees() -> None:
    now = datetime.now(UTC)
    assert slots.reserve("example.test", 20, limit=30, minutes=1, now=now).count == 20
    assert slots.reserve("example.test", 20, limit=30, minutes=1, now=now + timedelta(seconds=10)).count == 10
    assert slots.reserve("example.test", 5, limit=30, minutes=1, now=now + timedelta(seconds=20)).count == 0
    assert slots.recipients_in_window("example.test", 1, now=now + timedelta(seconds=20)) == 30
    frees = slots.window_frees_at("example.test", limit=30, minutes=1, now=now + timedelta(seconds=20))
    assert abs((frees - (now + timedelta(seconds=60))).total_seconds()) < 0.01
    later = now + timedelta(seconds=61)
    assert slots.recipients_in_window("example.test", 1, now=later) == 10
    assert slots.reserve("example.test", 25, limit=30, minutes=1, now=later).count == 20
    assert slots.recipients_in_window("other.test", 1, now=later) == 0


@pytest.mark.usefixtures("clean_slots")
def test_a_charge_counts_from_when_its_rcpts_were_answered_and_gives_back_the_refused() -> None:
    now = datetime.now(UTC)
    charge = slots.reserve("example.test", 30, limit=30, minutes=1, now=now)
    # the RCPTs took 20 seconds to reach the peer (a slow peer, a busy worker): still counted meanwhile
    slots.hold([charge], now=now + timedelta(seconds=10))
    slots.settle(charge, 25, now=now + timedelta(seconds=20))  # 5 refused: given back
    assert slots.recipients_in_window("example.test", 1, now=now + timedelta(seconds=70)) == 25
    assert slots.reserve("example.test", 10, limit=30, minutes=1, now=now + timedelta(seconds=70)).count == 5
    frees = slots.window_frees_at("example.test", limit=30, minutes=1, now=now + timedelta(seconds=70))
    assert abs((frees - (now + timedelta(seconds=80))).total_seconds()) < 0.01  # 60 s after the replies
    assert slots.recipients_in_window("example.test", 1, now=now + timedelta(seconds=81)) == 5


@pytest.mark.parametrize(
    ("stage", "code", "verdict", "counts"),
    [
        (engine.Stage.DATA, 250, engine.Verdict.DELIVERED, True),  # delivered
        (engine.Stage.DATA, 452, engine.Verdict.NEXT_HOST, True),  # its RCPT was taken, the DATA was not
        (engine.Stage.DATA, None, engine.Verdict.NEXT_HOST, True),  # lost after the dot
        (engine.Stage.RCPT, 550, engine.Verdict.BOUNCE, False),  # refused at RCPT
        (engine.Stage.RCPT, 452, engine.Verdict.NEXT_HOST, False),
        (engine.Stage.RCPT, None, engine.Verdict.NEXT_HOST, True),  # the connection broke: it may have arrived
        (engine.Stage.RCPT, None, engine.Verdict.BOUNCE, False),  # a bad address, never sent
        (engine.Stage.MAIL, 451, engine.Verdict.NEXT_HOST, False),  # MAIL refused: no RCPT taken
        (engine.Stage.MAIL, None, engine.Verdict.BOUNCE, False),  # refused here (SMTPUTF8 not offered)
    ],
)
def test_a_recipient_counts_at_the_peer_when_its_rcpt_was_taken(
    stage: engine.Stage, code: int | None, verdict: engine.Verdict, counts: bool
) -> None:
    assert engine.counts_at_peer(stage, code, verdict) is counts


@pytest.mark.usefixtures("clean_slots")
def test_an_episode_is_started_once_and_ended_once() -> None:
    assert slots.start_episode("example.test", slots.CONNECTIONS)
    assert not slots.start_episode("example.test", slots.CONNECTIONS)
    assert slots.start_episode("example.test", slots.RECIPIENTS)  # a kind of its own
    assert slots.end_episode("example.test", slots.CONNECTIONS)
    assert not slots.end_episode("example.test", slots.CONNECTIONS)


@pytest.mark.usefixtures("clean_slots")
def test_a_wanted_mark_is_seen_until_a_slot_of_its_key_is_taken() -> None:
    now = datetime.now(UTC)
    assert slots.wanted(["w.test", "x.test"]) == set()
    slots.want("w.test", now=now)
    assert slots.wanted(["w.test", "x.test"]) == {"w.test"}
    assert slots.in_use("w.test") == 0  # a mark is no slot
    slots.unwant("w.test")
    assert slots.wanted(["w.test"]) == set()


@pytest.mark.usefixtures("clean_slots")
def test_waiting_mids_are_taken_once_by_the_next_release_of_their_key() -> None:
    slots.wait("w.test", [3, 1, 3])
    slots.wait("w.test", [2])
    slots.wait("x.test", [9])
    assert slots.in_use("w.test") == 0  # waiting is no slot
    assert slots.take_waiting("w.test") == [1, 2, 3]
    assert slots.take_waiting("w.test") == []  # taken: the next release finds nobody waiting
    assert slots.take_waiting("x.test") == [9]
