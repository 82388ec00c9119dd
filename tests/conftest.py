"""Shared fixtures: a recurring cast of users, real Celery workers, and (in tests.support.peers) scripted SMTP peers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

pytest_plugins = ["tests.support.peers", "tests.support.dnsserver"]

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="REDIS_URL is not set (embedded default pass)")
needs_postgres = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="DATABASE_URL is not PostgreSQL (embedded default pass)",
)


@pytest.fixture(autouse=True)
def _plain_static_storage(settings: Any) -> None:
    # The manifest storage needs collectstatic; tests serve static files straight from the source folders.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _isolated_mail_log(settings: Any, tmp_path: Path) -> None:
    settings.MAIL_LOG_DIR = tmp_path / "mail_logs"
    settings.JOURNAL_DIR = tmp_path / "journal"  # recover() must never see another test's (or xdist worker's)


@pytest.fixture(autouse=True)
def _own_login_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own login/AUTH failure counters (the cache outlives a test: earlier failures from 127.0.0.1
    would lock later tests out). Processes a test starts itself use the real prefix."""
    import secrets

    from esaroutes import throttle

    monkeypatch.setattr(throttle, "PREFIX", f"{throttle.PREFIX}test-{secrets.token_hex(6)}:")


PASSWORD = "correct horse battery staple"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last (after pytest-django's own ordering): Playwright's sync API keeps an event loop running
    in the main thread while its session-wide browser lives, and `asyncio.run()` in any later test would fail."""
    items.sort(key=lambda item: "tests/browser/" in str(item.fspath))


@pytest.fixture(autouse=True)
def _no_dns_off_the_machine(settings: Any, refusing_dns_server: Any) -> None:
    """MX lookups go to a loopback server that refuses every query (a temporary failure at once; a port where
    nothing answers cost each lookup its whole timeout), never to the machine's resolver: tests that need DNS use
    the `dns_server` fixture, which points this at itself."""
    settings.ESAROUTES_DNS_SERVERS = [refusing_dns_server.address]
    settings.ESAROUTES_DNS_TIMEOUT = 1.0


@pytest.fixture(autouse=True)
def _fresh_route_table() -> None:
    """Each test reads its own route table: the process keeps the last one for ESAROUTES_ROUTE_REFRESH seconds
    without asking the database, so a test that writes routes through the ORM (no version bump) could otherwise
    see the table of the test before it (the route tester then found no host for carol's probe: 200, not 403)."""
    from routes import snapshot

    snapshot.invalidate()


@pytest.fixture(autouse=True)
def _connect_to_loopback_only(settings: Any) -> None:
    """Every outgoing connection (delivery, the route probe, webhooks) may go to loopback only."""
    from esaroutes import egress

    settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS = egress.parse("127.0.0.0/8,::1/128")


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    """Alice is the administrator."""
    return django_user_model.objects.create_superuser("alice", "alice@example.test", PASSWORD)


@pytest.fixture
def celery_worker_thread(transactional_db: None) -> Iterator[Any]:
    """A real Celery worker, in a thread of this process, consuming from the configured broker."""
    from celery.contrib.testing.worker import start_worker

    from esaroutes.celery import app

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as worker:
        yield worker


def _member(django_user_model: Any, name: str, role: str) -> Any:
    from django.contrib.auth.models import Group

    from esaroutes import roles

    if not Group.objects.filter(name=role).exists():  # a transactional test flushed what the migration made
        roles.sync_groups()
    user = django_user_model.objects.create_user(name, f"{name}@example.test", PASSWORD)
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    """Bob is an Operator: routes, access rules and queue actions; no users."""
    return _member(django_user_model, "bob", "Operator")


@pytest.fixture
def carol(django_user_model: Any) -> Any:
    """Carol is a Read-only operator: sees everything, changes nothing."""
    return _member(django_user_model, "carol", "Read-only operator")


@pytest.fixture
def dave(django_user_model: Any) -> Any:
    """Dave is on the Help desk: message tracking and the mail log only."""
    return _member(django_user_model, "dave", "Help desk")
