"""The login throttle's decisions (pure, no network) and its counters in the configured cache."""

from __future__ import annotations

import threading

import pytest

from esaroutes import throttle
from esaroutes.throttle import Counts, Policy, Refusal
from tests.listener.conftest import wait_for

POLICY = Policy(max_failures=3, lockout=900, clear_address_on_success=False)


@pytest.mark.parametrize(
    ("address", "username", "expected"),
    [
        (0, 0, None),
        (2, 2, None),
        (3, 0, Refusal("address", Counts(3, 0), 900)),
        (0, 3, Refusal("username", Counts(0, 3), 900)),
        (7, 3, Refusal("address", Counts(7, 3), 900)),  # the address first: it names the client to block
        (2, 4, Refusal("username", Counts(2, 4), 900)),
    ],
)
def test_decide(address, username, expected):
    assert throttle.decide(Counts(address, username), POLICY) == expected


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same client's /64
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_address_key(address, key):
    assert throttle.address_key(address) == key


def test_username_key_ignores_case_and_blanks_and_hides_the_name():
    assert throttle.username_key(" Alice ") == throttle.username_key("alice")
    assert throttle.username_key("alice") != throttle.username_key("alicf")
    assert "alice" not in throttle.username_key("alice")


def test_web_and_smtp_keys_differ():
    assert set(throttle.keys(throttle.WEB, "192.0.2.7", "a")).isdisjoint(throttle.keys(throttle.SMTP, "192.0.2.7", "a"))


def test_refusal_minutes_round_up():
    assert [Refusal("address", Counts(0, 0), s).minutes for s in (10, 60, 61, 900)] == [1, 1, 2, 15]


def test_attempt_counts_failures_refuses_unchecked_and_success_clears_by_scope(settings):
    settings.ESAROUTES_SMTP_AUTH_MAX_FAILURES = 2
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 2
    checked: list[str] = []

    def wrong() -> bool:
        checked.append("wrong")
        return False

    first = throttle.attempt(throttle.SMTP, "192.0.2.9", "bob", wrong)
    second = throttle.attempt(throttle.SMTP, "192.0.2.9", "bob", wrong)
    assert (first.counts, first.locked_now) == (Counts(1, 1), False)
    assert (second.counts, second.locked_now) == (Counts(2, 2), True)
    refused = throttle.attempt(throttle.SMTP, "192.0.2.9", "bob", lambda: checked.append("right") is None)
    assert refused.refusal is not None and refused.refusal.by == "address"
    assert checked == ["wrong", "wrong"]  # never asked for the password while locked
    throttle.clear(throttle.SMTP, "192.0.2.9", "carol")  # the address only (carol had none)
    assert throttle.attempt(throttle.SMTP, "192.0.2.9", "carol", lambda: True).ok
    assert throttle.counts(throttle.SMTP, "192.0.2.9", "bob") == Counts(0, 2)

    throttle.record_failure(throttle.WEB, "192.0.2.9", "bob")
    assert throttle.attempt(throttle.WEB, "192.0.2.9", "bob", lambda: True).ok
    assert throttle.counts(throttle.WEB, "192.0.2.9", "bob") == Counts(0, 0)  # the web clears both


def test_counters_expire_lockout_seconds_after_the_last_failure(settings):
    """On the file cache, incr() used to re-store the counter with the cache's default 300 s timeout."""
    settings.ESAROUTES_SMTP_AUTH_LOCKOUT = 1
    for _ in range(3):
        throttle.record_failure(throttle.SMTP, "192.0.2.10", "dave")
    assert throttle.counts(throttle.SMTP, "192.0.2.10", "dave") == Counts(3, 3)
    assert wait_for(lambda: throttle.counts(throttle.SMTP, "192.0.2.10", "dave") == Counts(0, 0), timeout=30)


def test_parallel_guesses_check_no_more_passwords_than_the_limit(settings):
    """Twelve guesses at once, none answered yet: only the first three reach the password check."""
    settings.ESAROUTES_SMTP_AUTH_MAX_FAILURES = 3
    entered: list[int] = []
    refused: list[int] = []
    release = threading.Event()

    def password_ok() -> bool:
        entered.append(1)
        release.wait(10)
        return False

    def guess(i: int) -> None:
        outcome = throttle.attempt(throttle.SMTP, "192.0.2.11", f"user{i}", password_ok)
        if outcome.refusal is not None:
            refused.append(i)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: len(entered) + len(refused) == 12)
    release.set()
    for thread in threads:
        thread.join(10)
    assert (len(entered), len(refused)) == (3, 9)
    assert throttle.counts(throttle.SMTP, "192.0.2.11", "user0").address == 3
