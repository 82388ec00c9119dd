"""An empty dashboard says what to do first; the block goes once there is a route and a message."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.routes.helpers import make_route
from tests.support.messages import make_message

pytestmark = pytest.mark.django_db


def _block(page: str) -> str:
    start = page.index('id="first-steps"')
    return page[start : page.index("</section>", start)]


def test_an_empty_installation_is_told_to_add_a_route_then_send_a_test_message(admin_client):
    page = admin_client.get(reverse("delivery:dashboard")).content.decode()
    block = _block(page)
    assert "What to do first" in block
    assert block.index("Add a route") < block.index("Send a test message")
    assert f'href="{reverse("routes:route-add")}"' in block and f'href="{reverse("routes:route-test")}"' in block
    assert 'id="counters"' in page  # the figures are still there


def test_each_step_done_is_marked_and_the_block_goes_when_both_are(admin_client):
    make_route("example.com", "mx.example.com")
    block = _block(admin_client.get(reverse("delivery:dashboard")).content.decode())
    assert "<s>Add a route</s>" in block and "<strong>Send a test message</strong>" in block
    make_message()
    assert 'id="first-steps"' not in admin_client.get(reverse("delivery:dashboard")).content.decode()
