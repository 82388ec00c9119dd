"""Production settings: `check --deploy` clean, secure cookies behind TLS, security headers on every response, and
login attempts rate-limited per address and per username."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("_fast_passwords")


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    env.update(
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="relay.example.com",
        ESAROUTES_HTTPS="1",
        DEBUG="0",
        ESAROUTES_DATA_DIR=str(tmp_path / "data"),
        DJANGO_SETTINGS_MODULE="esaroutes.settings",
        **extra,
    )
    return env


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues (0 silenced)." in out.stdout


def test_https_settings_make_cookies_secure_and_http_only(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.CSRF_COOKIE_SECURE, s.CSRF_COOKIE_HTTPONLY, "
        "s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS > 0, s.DEBUG)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=production_env(tmp_path), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "True", "True", "True", "False"]


@pytest.mark.django_db
def test_cookies_set_at_login_are_secure_http_only_and_same_site(client, alice, settings):
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    page = client.get(reverse("login"), secure=True)
    csrf = page.cookies["csrftoken"]
    assert csrf["secure"] and csrf["httponly"] and csrf["samesite"] == "Lax"
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD}, secure=True)
    assert response.status_code == 302
    session = response.cookies[django_settings.SESSION_COOKIE_NAME]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"


SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/login/", "/", "/routes/", "/log/", "/tracking/", "/queue/", "/routes/access/", "/healthz", "/nowhere/"]
)
def test_security_headers_on_every_response(client, alice, path):
    client.force_login(alice)
    response = client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (path, name)
    parts = (p.strip().partition(" ") for p in response["Content-Security-Policy"].split(";"))
    csp = {name: value for name, _, value in parts}
    assert csp["default-src"] == "'self'"
    for directive in ("script-src", "style-src"):
        assert "'unsafe-inline'" not in csp[directive] and "'unsafe-eval'" not in csp[directive], directive
    assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/", "/routes/", "/routes/add/", "/log/", "/tracking/", "/routes/access/"])
def test_pages_have_no_inline_script_or_style(client, alice, path):
    """The CSP forbids them: a page that relied on one would be broken in the browser."""
    import re

    client.force_login(alice)
    html = client.get(path).content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
    assert "<style" not in html, path
    assert not re.search(r"\son[a-z]+\s*=", html), path  # onclick=... and friends
    assert not re.search(r'\sstyle\s*=\s*"', html), path


@pytest.mark.django_db
def test_login_is_refused_429_after_n_failures_from_one_address_whatever_the_username(client, alice, settings):
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 4
    address = f"10.77.{secrets.randbelow(250)}.{secrets.randbelow(250)}"  # data only: REMOTE_ADDR
    names = [f"guess{i}-{secrets.token_hex(4)}" for i in range(4)]
    for name in names:
        assert client.post("/login/", {"username": name, "password": "nope"}, REMOTE_ADDR=address).status_code == 200
    response = client.post("/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR=address)
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    assert "_auth_user_id" not in client.session
    other = client.post("/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="10.78.0.1")
    assert other.status_code == 302  # another address is not locked out


@pytest.mark.django_db
def test_login_is_refused_429_after_n_failures_for_one_username_from_many_addresses(client, alice, settings):
    settings.ESAROUTES_LOGIN_MAX_FAILURES = 3
    addresses = [f"10.79.{secrets.randbelow(250)}.{i}" for i in range(4)]
    for address in addresses[:3]:
        client.post("/login/", {"username": "ALICE ", "password": "nope"}, REMOTE_ADDR=address)
    response = client.post("/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR=addresses[3])
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
