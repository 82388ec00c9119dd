"""API test helpers: a DRF test client holding a fresh token of a user (`api_client(user, read_only=...)`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from esaroutes import apitokens


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/api/" in str(item.fspath):
            item.add_marker(pytest.mark.django_db)


def make_token(user: Any, *, name: str = "", read_only: bool = False, expires_days: int | None = None) -> str:
    made = apitokens.create(
        user=user,
        name=name or f"{user.get_username()}-test-{secrets.token_hex(4)}",
        read_only=read_only,
        expires_days=expires_days,
        actor="test",
    )
    return made.secret


@pytest.fixture
def api_client() -> Callable[..., APIClient]:
    def make(user: Any, **token: Any) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token(user, **token)}")
        return client

    return make


def is_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """Assert the response is RFC 9457 problem+json with this status (and an error at `field`); return its body."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/problem+json"), response["Content-Type"]
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body
