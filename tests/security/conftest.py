"""Security tests: the listener fixtures (a real listener on loopback) and the recurring cast of users."""

from __future__ import annotations

from typing import Any

import pytest

from tests.listener.conftest import base_rows, smtpd, start_listener

__all__ = ["base_rows", "smtpd", "start_listener"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/security/" in str(item.fspath):
            item.add_marker(pytest.mark.security)


@pytest.fixture
def _fast_passwords(settings: Any) -> None:
    # Several personas log in per test: the production hasher's cost would dominate the run.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
