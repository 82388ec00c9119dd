from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from esaroutes import env


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[::1]:25", ("::1", 25)),
        ("localhost:8000", ("localhost", 8000)),
    ],
)
def test_listen_addresses_parse(raw, expected):
    assert env.parse_listen(raw) == expected


@pytest.mark.parametrize(
    "raw", ["2525", "127.0.0.1:0", "127.0.0.1:70000", "::1:25", "[::1]25", "[nothost]:25", "host:"]
)
def test_bad_listen_addresses_are_refused(raw):
    with pytest.raises(ValueError):
        env.parse_listen(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", None),
        ("Relay.Example.NET", ("relay.example.net", 25)),
        ("relay.example.net:2525", ("relay.example.net", 2525)),
        ("127.0.0.1:2526", ("127.0.0.1", 2526)),
        ("[::1]:2525", ("::1", 2525)),
        ("::1", ("::1", 25)),
    ],
)
def test_a_fallback_relay_setting_parses(monkeypatch, raw, expected):
    monkeypatch.setenv("ESAROUTES_DELIVERY_FALLBACK_RELAY", raw)
    assert env.env_relay("ESAROUTES_DELIVERY_FALLBACK_RELAY") == expected


@pytest.mark.parametrize("raw", ["relay.test:0", "a.test, b.test", "relay.test:x", "[::1]", "::zz"])
def test_a_bad_fallback_relay_setting_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("ESAROUTES_DELIVERY_FALLBACK_RELAY", raw)
    with pytest.raises(ImproperlyConfigured, match="ESAROUTES_DELIVERY_FALLBACK_RELAY="):
        env.env_relay("ESAROUTES_DELIVERY_FALLBACK_RELAY")


def test_bad_boolean_names_the_variable(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe'"):
        env.env_bool("DEBUG", False)


def test_bad_integer_names_the_variable(monkeypatch):
    monkeypatch.setenv("ESAROUTES_WEB_WORKERS", "two")
    with pytest.raises(ImproperlyConfigured, match="ESAROUTES_WEB_WORKERS='two'"):
        env.env_int("ESAROUTES_WEB_WORKERS", 2)


def _manage(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    keep = {
        k: v for k, v in os.environ.items() if not k.startswith(("ESAROUTES_", "DATABASE_URL", "REDIS_URL", "DJANGO_"))
    }
    keep["ESAROUTES_DATA_DIR"] = os.environ.get("ESAROUTES_DATA_DIR", "var")
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        env={**keep, **environ},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bad_value_stops_start_up_with_a_message_naming_the_variable():
    result = _manage("check", ESAROUTES_SMTP_LISTEN="127.0.0.1:99999")
    assert result.returncode != 0
    assert "ESAROUTES_SMTP_LISTEN='127.0.0.1:99999'" in result.stderr
    result = _manage("check", DATABASE_URL="mysql://x")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_check_deploy_is_clean_with_production_settings():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY="k" * 20 + "-production-secret-key-with-enough-entropy-0123456789",
        ALLOWED_HOSTS="relay.example.test",
        ESAROUTES_HTTPS="true",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/esaroutes",
        REDIS_URL="redis://127.0.0.1:6379/15",
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db
def test_the_embedded_database_commits_to_disk_before_it_returns():
    """A 250 means the message is on disk: WAL with synchronous=FULL (2), never NORMAL (1) on the embedded default."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("the embedded default's pass checks this")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 2
