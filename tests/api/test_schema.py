"""The OpenAPI schema and its documentation pages: served to any authenticated user, from this server only."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.urls import reverse
from rest_framework.test import APIClient

from tests.api.conftest import is_problem


def test_the_schema_is_openapi_3_with_problem_responses(dave, api_client):
    response = api_client(dave, read_only=True).get(reverse("api:schema") + "?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "Problem" in schema["components"]["schemas"]


@pytest.mark.parametrize("name", ["api:schema", "api:docs", "api:redoc"])
def test_anonymous_gets_401_not_the_login_page(name):
    is_problem(APIClient().get(reverse(name)), 401)


@pytest.mark.parametrize("name", ["api:docs", "api:redoc"])
def test_the_documentation_pages_load_nothing_from_elsewhere(client, carol, name):
    client.force_login(carol)
    response = client.get(reverse(name))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<script>" not in html  # no inline script: the page's CSP allows scripts from this server only
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/"), url
        if url.startswith("/static/"):
            assert finders.find(url.removeprefix("/static/").split("?")[0]), url
    assert "script-src 'self';" in response["Content-Security-Policy"]


def test_the_schema_validates_without_a_warning(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "openapi: 3" in (tmp_path / "schema.yaml").read_text()
