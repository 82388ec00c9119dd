from __future__ import annotations

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/", "/routes/"])
def test_pages_need_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.url.startswith("/login/?next=")


def test_admin_needs_login(client):
    assert client.get("/admin/").status_code == 302


def test_login_page_is_public_and_has_csrf(client):
    response = client.get("/login/")
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


def test_logged_in_user_sees_the_dashboard(client, alice):
    assert client.login(username="alice", password=PASSWORD)
    response = client.get("/")
    assert response.status_code == 200
    assert b"Dashboard" in response.content
    assert b"htmx" in response.content  # served from our static files, never a CDN
    assert b"https://" not in response.content


def test_security_headers(client):
    response = client.get("/login/")
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200


def test_logout_is_a_post(client, alice):
    client.login(username="alice", password=PASSWORD)
    response = client.post("/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_logins_are_refused_after_repeated_failures(client, alice, settings):
    from django.core.cache import cache

    cache.clear()
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        assert client.post("/login/", {"username": "alice", "password": "nope"}).status_code == 200
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    assert "_auth_user_id" not in client.session
    cache.clear()
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302


def test_the_pages_link_an_icon_and_favicon_ico_leads_to_it(client):
    """Browsers ask for an icon on every page: a 404 there is an error in the console of every page."""
    login_page = client.get("/login/").content.decode()
    assert 'rel="icon"' in login_page and "img/favicon.svg" in login_page
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("img/favicon.svg")
