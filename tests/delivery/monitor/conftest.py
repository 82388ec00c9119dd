from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import PASSWORD

ROLES = ("alice", "bob", "carol", "dave")


@pytest.fixture
def as_user(client: Any, alice: Any, bob: Any, carol: Any, dave: Any) -> Any:
    """as_user("carol") logs the test client in as that persona and returns it."""

    def login(name: str) -> Any:
        client.logout()
        assert client.login(username=name, password=PASSWORD)
        return client

    return login


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # Four personas log in per test: the production hasher's cost would dominate the run.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
