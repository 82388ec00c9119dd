"""A filter value that is wrong comes back as the page with the form and the reason at its field (400), or as
the htmx partial with the reasons (422, which the site's htmx config swaps in): never a text/plain answer."""

from __future__ import annotations

import pytest

from tests.support.messages import make_message

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.mark.parametrize(
    ("url", "field", "reason"),
    [
        ("/log/?mid=abc", "id_mid", "Enter a whole number."),
        ("/log/?since=garbage", "id_since", "Enter a valid date/time."),
        ("/tracking/?mid=-5", "id_mid", "Ensure this value is greater than or equal to 0."),
        ("/tracking/?outcome=spam", "id_outcome", "Select a valid choice."),
        ("/audit/?q=" + "x" * 301, "id_q", "Ensure this value has at most 300 characters"),
    ],
)
def test_a_bad_filter_is_the_page_with_the_error_at_its_field(as_user, url, field, reason):
    response = as_user("alice").get(url)
    html = response.content.decode()
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert 'nav aria-label="Main"' in html and 'role="search"' in html
    assert f'id="{field}-error"' in html or f'href="#{field}' in html
    assert reason in html
    assert 'id="form-errors"' in html


def test_the_field_itself_is_marked_invalid(as_user):
    html = as_user("alice").get("/log/?mid=abc&domain=example.com").content.decode()
    assert 'id="id_mid" aria-invalid="true" aria-describedby="id_mid-error"' in html
    assert 'value="example.com"' in html  # the other filters are kept
    assert 'id="log-empty"' not in html  # nothing was searched: no "No lines match."


def test_an_htmx_filter_gets_the_partial_with_the_reasons(as_user):
    response = as_user("alice").get("/log/?since=garbage", headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 422
    assert html.lstrip().startswith('<section id="log-view">')
    assert "Enter a valid date/time." in html and "<nav" not in html

    response = as_user("alice").get("/tracking/?mid=x", headers=HTMX)
    assert response.status_code == 422
    assert response.content.decode().lstrip().startswith('<section id="tracking-results">')


def test_a_queue_action_with_nothing_ticked_is_the_queue_page_with_the_reason(as_user):
    make_message(recipients=("a@dest.test",))
    response = as_user("bob").post("/queue/bounce/", {"scope": "recipients", "next": "/queue/?domain=dest.test"})
    html = response.content.decode()
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert "Nothing was done" in html and "Tick the recipients first." in html
    assert 'id="queue-domains"' in html
    assert 'name="next" value="/queue/?domain=dest.test"' in html  # the next action still comes back here


def test_one_top_bar_entry_is_current(as_user):
    pages = [("/audit/", "Audit"), ("/routes/", "Routes"), ("/routes/access/", "Access"), ("/", "Dashboard")]
    for url, current in [*pages, ("/hosts/domain/dest.test/", "Hosts"), ("/log/", "Mail log"), ("/queue/", "Queue")]:
        html = as_user("alice").get(url).content.decode()
        assert html.count('aria-current="page"') == 1, url
        assert f'aria-current="page">{current}</a>' in html, url
