"""One login lockout for every way in: the admin's login is refused and counted like the site's (issue 11, item 4)."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth import authenticate
from django.test import RequestFactory

from esaroutes import throttle
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("_fast_passwords")]

ADDRESS = "10.81.0.7"  # data only: REMOTE_ADDR


def post(client, path, username, password, address=ADDRESS):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_admin_login_refuses_the_right_password_after_n_failures(client, alice, settings):
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        response = post(client, "/admin/login/", "alice", "nope")
        assert response.status_code == 200
        assert b"Please enter the correct username and password" in response.content
    response = post(client, "/admin/login/", "alice", PASSWORD)
    assert response.status_code == 429
    page = response.content.decode()
    assert "Too many failed logins. Try again in 15 minutes." in page
    assert "esaroutes administration" in page and 'id="login-form"' in page  # the admin's own page, not raw text
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302


def test_admin_failures_count_towards_the_site_login_lockout(client, alice, settings):
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 4
    for _ in range(4):
        post(client, "/admin/login/", "alice", "nope", address=f"10.82.0.{_}")  # the username's counter
    response = post(client, "/login/", "alice", PASSWORD, address="10.82.1.1")
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    assert b"<h1>Log in to esaroutes</h1>" in response.content  # the site's layout
    assert "_auth_user_id" not in client.session


def test_site_failures_lock_the_admin_login_for_the_address(client, alice, settings):
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 2
    post(client, "/login/", "nobody", "nope")
    post(client, "/login/", "someone", "nope")
    assert post(client, "/admin/login/", "alice", PASSWORD).status_code == 429
    assert post(client, "/admin/login/", "alice", PASSWORD, address="10.81.0.8").status_code == 302


def test_a_refused_login_is_not_counted_and_ends_with_the_lockout(client, alice, settings):
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 2
    for _ in range(2):
        post(client, "/admin/login/", "alice", "nope")
    for _ in range(5):
        assert post(client, "/admin/login/", "alice", "nope").status_code == 429
    assert throttle.counts(throttle.WEB, ADDRESS, "alice") == throttle.Counts(2, 2)
    throttle.clear(throttle.WEB, ADDRESS, "alice")  # what the expiry does
    response = post(client, "/admin/login/", "alice", PASSWORD)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(alice.pk)


def test_every_authenticate_call_goes_through_the_throttle(alice, settings):
    """An API added later calls authenticate(): it is refused the same way, and its failures count."""
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 2
    request = RequestFactory().post("/api/", REMOTE_ADDR=ADDRESS)
    assert authenticate(request, username="alice", password="nope") is None
    assert authenticate(request, username="alice", password="nope") is None
    assert authenticate(request, username="alice", password=PASSWORD) is None
    other = RequestFactory().post("/api/", REMOTE_ADDR="10.81.9.9")
    assert authenticate(other, username="alice", password=PASSWORD) is None  # the username is locked too


def test_failures_and_refusals_are_in_the_application_log(client, alice, settings, caplog):
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 2
    with caplog.at_level(logging.INFO, logger="esaroutes.login"):
        post(client, "/admin/login/", "alice", "nope")
        post(client, "/login/", "alice", "nope")
        post(client, "/admin/login/", "alice", PASSWORD)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "esaroutes.login"]
    assert messages == [
        ("INFO", "login failed for 'alice' from 10.81.0.7 (address 1, username 1 failures)"),
        (
            "WARNING",
            "login failed for 'alice' from 10.81.0.7 (address 2, username 2 failures): too many failed logins, "
            "now refused",
        ),
        (
            "WARNING",
            "login refused for 'alice' from 10.81.0.7: too many failed logins (address 2, username 2; limit 2, 900s)",
        ),
    ]


def test_a_successful_web_login_clears_the_address_and_the_username(client, alice, settings):
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 3
    post(client, "/login/", "alice", "nope")
    post(client, "/login/", "alice", "nope")
    assert post(client, "/admin/login/", "alice", PASSWORD).status_code == 302
    assert throttle.counts(throttle.WEB, ADDRESS, "alice") == throttle.Counts(0, 0)


def test_web_and_smtp_counters_are_separate(client, alice, settings):
    """Different account tables (Django users, SMTP users): an SMTP guessing storm never locks the web UI."""
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 2
    settings.ESAROUTES_SMTP_AUTH_MAX_FAILURES = 2
    for _ in range(3):
        throttle.record_failure(throttle.SMTP, ADDRESS, "alice")
    assert throttle.check(throttle.SMTP, ADDRESS, "alice") is not None
    assert post(client, "/login/", "alice", PASSWORD).status_code == 302


@pytest.mark.django_db(transaction=True)
def test_the_async_authenticate_is_throttled_too(alice, settings):
    """ModelBackend.aauthenticate checks the password without calling authenticate(): it must not bypass the lock."""
    import asyncio

    from asgiref.sync import sync_to_async
    from django.contrib.auth import aauthenticate
    from django.db import connections

    settings.ESAROUTES_LOGIN_MAX_FAILURES = 2
    for _ in range(2):
        throttle.record_failure(throttle.WEB, ADDRESS, "alice")
    request = RequestFactory().post("/api/", REMOTE_ADDR=ADDRESS)
    assert asyncio.run(aauthenticate(request, username="alice", password=PASSWORD)) is None
    throttle.clear(throttle.WEB, ADDRESS, "alice")
    try:
        assert asyncio.run(aauthenticate(request, username="alice", password=PASSWORD)) == alice
    finally:
        asyncio.run(sync_to_async(connections.close_all)())  # the thread sync_to_async ran the query in
