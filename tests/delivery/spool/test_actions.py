"""The operator's actions on the queue, as the commands call them: bounce and delete recipients."""

from __future__ import annotations

import pytest

from delivery.models import Message, Recipient
from delivery.spool import actions
from tests.delivery.conftest import hosts_text, log, queue_message, recipients
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_bounce_and_delete_recipients_as_the_operator(peers):
    refused = peers.refused()
    make_route("dest.test", hosts_text((refused, 0)))
    make_route("origin.test", "/dev/null")
    one, two = queue_message("a@dest.test"), queue_message("b@dest.test")
    assert actions.bounce_recipients(actions.select_recipients(mids=[one]), actor="cli:root") == 1
    assert actions.delete_recipients(actions.select_recipients(domain="dest.test"), actor="cli:root") == 1
    assert recipients(one) == [(0, "bounced")] and recipients(two) == [(0, "deleted")]
    r = Recipient.objects.get(message_id=one)
    assert r.attempts == 0 and r.dsn_status == "5.0.0"
    lines = log()
    assert f"Deleted: MID {two} to [0]" in lines
    assert f"Message finished MID {one} done" in lines and f"Message finished MID {two} done" in lines
    assert Message.objects.filter(bounce_of_id=one).count() == 1
    assert Message.objects.filter(bounce_of_id=two).count() == 0
    assert actions.select_recipients().count() == 0  # nothing chosen: nothing selected
