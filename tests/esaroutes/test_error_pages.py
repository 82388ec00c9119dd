"""400, 403, 404 and 500 are pages of the site (its layout, a sentence a person understands), with DEBUG off."""

from __future__ import annotations

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
