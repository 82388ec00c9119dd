"""400, 403, 404 and 500 are pages of the site (its layout, a sentence a person understands), with DEBUG off."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.template import loader
from django.test.utils import CaptureQueriesContext

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, alice):
    assert client.login(username="alice", password=PASSWORD)
    return client


def test_404_is_a_page_with_the_navigation(admin_client):
    response = admin_client.get("/no/such/page/")
    html = response.content.decode()
    assert response.status_code == 404
    assert 'nav aria-label="Main"' in html
    assert "There is nothing at this address" in html and "/no/such/page/" in html
    assert "Not Found</h1>" not in html and "Resolver404" not in html


def test_a_missing_message_names_what_is_missing(admin_client):
    html = admin_client.get("/tracking/999999/").content.decode()
    assert "There is nothing at this address" in html and "No Message matches the given query." in html


def test_403_says_which_permission(client, dave):
    assert client.login(username="dave", password=PASSWORD)
    response = client.get("/queue/")
    html = response.content.decode()
    assert response.status_code == 403
    assert 'nav aria-label="Main"' in html
    assert "You may not open this page" in html and "queue.view" in html


def test_400_is_a_page(admin_client):
    response = admin_client.get("/routes/host-row/", {"hosts-TOTAL_FORMS": "abc"})
    assert response.status_code == 400
    assert "This request cannot be used" in response.content.decode()


def test_the_500_page_needs_no_request_and_no_database():
    with CaptureQueriesContext(connection) as queries:
        html = loader.get_template("500.html").render()
    assert len(queries) == 0
    assert "Something went wrong on the server (500)" in html
    assert 'href="/log/"' in html


def test_a_view_that_raises_gets_the_500_page(admin_client, monkeypatch):
    from delivery.monitor import selectors

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(selectors, "queue_domains", broken)
    admin_client.raise_request_exception = False
    response = admin_client.get("/queue/")
    assert response.status_code == 500
    html = response.content.decode()
    assert "Something went wrong on the server (500)" in html and "boom" not in html


# --- under /api/ the same errors are problem+json (RFC 9457), never a page ----------------------------------------


def is_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/problem+json", response["Content-Type"]
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_a_host_header_that_allowed_hosts_refuses_is_a_page_or_a_problem(admin_client):
    # Django refuses it in middleware, before any view: the API's own error handler never sees it
    page = admin_client.get("/routes/", HTTP_HOST="bad host!")
    assert page.status_code == 400 and "This request cannot be used" in page.content.decode()
    for method in ("get", "patch", "delete"):
        response = getattr(admin_client, method)("/api/v1/access/users/1/", HTTP_HOST="bad host!")
        body = is_problem(response, 400)
        assert "Host header" in body["detail"] and "Traceback" not in body["detail"]


def test_a_view_under_api_that_raises_is_a_problem_500(admin_client, monkeypatch):
    from delivery.monitor import selectors

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(selectors, "host_list", broken)
    admin_client.raise_request_exception = False
    body = is_problem(admin_client.get("/api/v1/hosts/"), 500)
    assert "boom" not in body["detail"]


def test_suspicious_requests_reaching_an_api_view_are_a_problem_400():
    from django.core.exceptions import SuspiciousOperation, TooManyFieldsSent

    from esaroutes.api import errors

    for exc, words in [
        (TooManyFieldsSent("1001 fields"), "too many form fields"),
        (SuspiciousOperation("x"), "malformed"),
    ]:
        response = errors.exception_handler(exc, {})
        assert response is not None and response.status_code == 400 and words in response.data["detail"]
