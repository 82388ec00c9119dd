"""Shared fixtures: a recurring cast of users, real Celery workers, and (in tests.peers) scripted SMTP peers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

pytest_plugins = [p for p in ("tests.peers",) if (Path(__file__).parent / "peers.py").exists()]

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


PASSWORD = "correct horse battery staple"


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
