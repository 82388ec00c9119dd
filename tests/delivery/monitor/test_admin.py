from __future__ import annotations

import pytest

from delivery.models import MailLogLine
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db


@pytest.fixture
def message():
    m = make_message(subject="<script>alert(1)</script>")
    attempt(m, host="mx1.dest.test")
    return m


@pytest.mark.parametrize(
    "path",
    [
        "/admin/delivery/message/",
        "/admin/delivery/message/?q=alice",
        "/admin/delivery/message/?q={mid}",
        "/admin/delivery/message/{mid}/change/",
        "/admin/delivery/recipient/",
        "/admin/delivery/recipient/?q=dest.test",
        "/admin/delivery/deliveryattempt/",
        "/admin/delivery/hoststatus/",
        "/admin/delivery/maillogline/",
        "/admin/delivery/maillogline/?q=queued",
        "/admin/delivery/maillogline/?q={mid}",
        "/admin/delivery/bounceprofile/",
        "/admin/delivery/idcounter/",
    ],
)
def test_admin_pages_open(admin_client, message, path):
    response = admin_client.get(path.format(mid=message.pk))
    assert response.status_code == 200


def test_message_admin_shows_log_lines_as_text_and_is_read_only(admin_client, message):
    body = admin_client.get(f"/admin/delivery/message/{message.pk}/change/").content.decode()
    assert "<script>alert(1)</script>" not in body
    assert f"Start MID {message.pk}" in body
    assert 'name="_save"' not in body  # the recipients and attempts inlines: shown, not editable nor deletable
    assert 'name="recipients-0-address"' not in body and 'name="recipients-0-DELETE"' not in body
    assert 'name="attempts-0-host"' not in body and 'name="attempts-0-DELETE"' not in body
    assert admin_client.post(f"/admin/delivery/message/{message.pk}/delete/").status_code == 403
    assert admin_client.get("/admin/delivery/maillogline/add/").status_code == 403
    assert MailLogLine.objects.exists()
