from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from delivery.models import Recipient
from tests.conftest import PASSWORD
from tests.support.messages import attempt, make_message

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


@pytest.fixture
def queued() -> tuple[Any, Any]:
    """Two queued messages due in an hour: MID 1 to two recipients of dest.test (the first tried once, 451),
    MID 2 to one of other.test."""
    m1 = make_message(recipients=("a@dest.test", "b@dest.test"))
    attempt(m1, host="mx1.dest.test", code=451, reply="4.3.0 busy", outcome="delayed", rids=(0,))
    m2 = make_message(recipients=("c@other.test",))
    Recipient.objects.update(next_attempt_at=timezone.now() + timedelta(hours=1))
    return m1, m2
