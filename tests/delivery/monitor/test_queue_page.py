"""The queue page: what an operator needs beside each recipient (sender, subject, size), DSNs marked as such,
domains in Unicode."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.support.messages import make_message

pytestmark = pytest.mark.django_db


def _row(page: str, mid: int) -> str:
    row = page[page.index(f'data-mid="{mid}"') :]
    return row[: row.index("</tr>")]


def test_each_recipient_shows_sender_subject_and_size(admin_client):
    m = make_message(sender="alice@example.test", subject="Invoice 42", recipients=("bob@dest.test",))
    page = admin_client.get(reverse("delivery:queue")).content.decode()
    row = _row(page, m.pk)
    assert "alice@example.test" in row and "Invoice 42" in row and f"{m.size}\xa0bytes" in row
    assert '<th scope="col">Sender</th><th scope="col">Subject</th><th scope="col">Size</th>' in page


def test_a_null_sender_is_marked_as_a_delivery_status_notification(admin_client):
    original = make_message(sender="alice@example.test")
    dsn = make_message(sender="", subject="Delivery Status Notification (Failure)", bounce_of=original)
    row = _row(admin_client.get(reverse("delivery:queue")).content.decode(), dsn.pk)
    assert "&lt;&gt;" in row and "delivery status notification for MID" in row
    assert reverse("delivery:message-detail", args=[original.pk]) in row


def test_unicode_domains_are_shown_in_unicode(admin_client):
    m = make_message(sender="a@xn--bcher-kva.example", recipients=("u@xn--mller-kva.example",))
    page = admin_client.get(reverse("delivery:queue")).content.decode()
    assert "xn--" not in _row(page, m.pk)
    assert "u@müller.example" in _row(page, m.pk) and "a@bücher.example" in _row(page, m.pk)
    domains = page[page.index('id="queue-domains"') : page.index('id="queue-recipients"')]
    assert ">müller.example</a>" in domains
    filtered = admin_client.get(reverse("delivery:queue"), {"domain": "müller.example"}).content.decode()
    assert f'data-mid="{m.pk}"' in filtered and "Recipients for müller.example" in filtered
