"""SMTP AUTH guessing is throttled per client address and per username, across connections and listener processes,
with mail log lines to alert on (issue 11, item 6). Real listeners on loopback, clients from several 127.x sources."""

from __future__ import annotations

import base64
import socket
from typing import Any

import pytest
from django.contrib.auth.hashers import make_password

from delivery.models import MailLogLine
from esaroutes import throttle
from routes.models import SmtpUser
from tests.listener.conftest import RawClient, wait_for

PASSWORD = "s3cret-password"
THROTTLED = b"421 4.7.0 Too many authentication failures, try again later"


@pytest.fixture
def smtpd(start_listener, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # many checks per test
    settings.ESAROUTES_SMTP_AUTH_MAX_FAILURES = 3
    SmtpUser.objects.create(username="app", password=make_password(PASSWORD))
    SmtpUser.objects.create(username="other", password=make_password(PASSWORD))
    return start_listener(auth_without_tls=True)


class Client(RawClient):
    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.buf = b""
        assert self.reply().startswith(b"220")
        assert self.cmd(b"EHLO client.test").startswith(b"250")

    def auth_plain(self, user: str, password: str) -> bytes:
        return self.cmd(b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()))


def auth(port: int, user: str, password: str, source: str) -> bytes:
    """One connection, one AUTH PLAIN: the reply (a 421 must also close the connection)."""
    c = Client(port, source)
    try:
        reply = c.auth_plain(user, password)
        if reply.startswith(b"421"):
            assert c.closed()
        return reply
    finally:
        c.close()


def lines(**filters: Any) -> list[tuple[str, str]]:
    return list(MailLogLine.objects.filter(text__startswith="SMTP Auth:", **filters).values_list("level", "text"))


def test_failures_from_several_connections_lock_the_address(smtpd):
    for user in ("guess1", "guess2", "app"):
        assert auth(smtpd.port, user, "wrong", "127.0.0.21").startswith(b"535 5.7.8")
    assert auth(smtpd.port, "app", PASSWORD, "127.0.0.21") == THROTTLED  # the right password, refused unchecked
    assert auth(smtpd.port, "other", PASSWORD, "127.0.0.21") == THROTTLED
    assert throttle.counts(throttle.SMTP, "127.0.0.21", "other") == throttle.Counts(3, 0)  # refusals not counted
    assert auth(smtpd.port, "other", PASSWORD, "127.0.0.22").startswith(b"235")  # another client is not locked


def test_the_mail_log_says_who_failed_and_who_is_throttled(smtpd):
    for user in ("guess1", "guess2", "guess3"):
        auth(smtpd.port, user, "wrong", "127.0.0.23")
    auth(smtpd.port, "app", PASSWORD, "127.0.0.23")
    assert auth(smtpd.port, "app", PASSWORD, "127.0.0.24").startswith(b"235")
    wait_for(lambda: len(lines()) == 6)
    found = [(level, text.split(") ", 1)[1]) for level, text in lines()]
    throttled = (
        "address 127.0.0.23 user: {} throttled: too many authentication failures (3 for the address), AUTH refused "
        "for 900 seconds after the last failure"
    )
    assert found == [
        ("Info", "failed for user: guess1 using AUTH mechanism: PLAIN"),
        ("Info", "failed for user: guess2 using AUTH mechanism: PLAIN"),
        ("Info", "failed for user: guess3 using AUTH mechanism: PLAIN"),
        ("Warning", throttled.format("guess3")),  # the failure that locks the address
        ("Warning", throttled.format("app")),  # each refused attempt
        ("Info", "succeeded for user: app using AUTH mechanism: PLAIN"),
    ]
    icids = [text.split(")")[0] for _, text in lines()]
    assert len(set(icids)) == 5 and all(i.startswith("SMTP Auth: (ICID ") for i in icids)
    first = MailLogLine.objects.filter(text__startswith="New SMTP ICID").order_by("id").first()
    assert first is not None and first.id < MailLogLine.objects.filter(text__startswith="SMTP Auth:").first().id


def test_a_username_is_locked_whatever_the_address(smtpd):
    for source in ("127.0.0.31", "127.0.0.32", "127.0.0.33"):
        assert auth(smtpd.port, "APP", "wrong", source).startswith(b"535")  # the case makes no other user
    assert auth(smtpd.port, "app", PASSWORD, "127.0.0.34") == THROTTLED
    assert auth(smtpd.port, "other", PASSWORD, "127.0.0.34").startswith(b"235")
    wait_for(lambda: any("(3 for the username)" in t for _, t in lines()))


def test_failures_are_counted_across_listener_processes(smtpd, start_listener):
    """The counters are in the shared cache, not in a listener: two listeners (as two processes would) lock
    together, whichever one a connection reaches."""
    second = start_listener(auth_without_tls=True)
    assert auth(smtpd.port, "app", "wrong", "127.0.0.41").startswith(b"535")
    assert auth(second.port, "app", "wrong", "127.0.0.41").startswith(b"535")
    assert auth(smtpd.port, "app", "wrong", "127.0.0.41").startswith(b"535")
    assert auth(second.port, "app", PASSWORD, "127.0.0.42") == THROTTLED
    assert auth(smtpd.port, "app", PASSWORD, "127.0.0.43") == THROTTLED


def test_a_session_cannot_go_on_guessing_after_the_lock(smtpd):
    c = Client(smtpd.port, "127.0.0.45")
    try:
        for user in ("guess1", "guess2", "guess3"):
            assert c.auth_plain(user, "wrong").startswith(b"535")
        assert c.auth_plain("app", PASSWORD) == THROTTLED
        assert c.closed()
    finally:
        c.close()


def test_auth_login_is_throttled_too(smtpd):
    for _ in range(3):
        auth(smtpd.port, "app", "wrong", "127.0.0.46")
    c = Client(smtpd.port, "127.0.0.47")
    try:
        assert c.cmd(b"AUTH LOGIN").startswith(b"334")
        assert c.cmd(base64.b64encode(b"app")).startswith(b"334")
        assert c.cmd(base64.b64encode(PASSWORD.encode())) == THROTTLED
    finally:
        c.close()


def test_a_success_clears_the_username_but_not_the_address(smtpd):
    """A client holding one good password must not reset its address between guesses at other users'."""
    assert auth(smtpd.port, "app", "wrong", "127.0.0.51").startswith(b"535")
    assert auth(smtpd.port, "other", "wrong", "127.0.0.51").startswith(b"535")
    assert auth(smtpd.port, "app", PASSWORD, "127.0.0.51").startswith(b"235")
    assert throttle.counts(throttle.SMTP, "127.0.0.51", "app") == throttle.Counts(2, 0)
    assert auth(smtpd.port, "guess", "wrong", "127.0.0.51").startswith(b"535")
    assert auth(smtpd.port, "app", PASSWORD, "127.0.0.51") == THROTTLED


def test_the_right_password_works_again_once_the_lockout_has_passed(smtpd, settings):
    settings.ESAROUTES_SMTP_AUTH_LOCKOUT = 2
    for _ in range(3):
        auth(smtpd.port, "app", "wrong", "127.0.0.61")
    assert auth(smtpd.port, "app", PASSWORD, "127.0.0.61") == THROTTLED
    assert wait_for(lambda: auth(smtpd.port, "app", PASSWORD, "127.0.0.61").startswith(b"235"), timeout=30)
