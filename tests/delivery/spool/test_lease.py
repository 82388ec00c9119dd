"""Leases: a message is held by one worker at a time, until its lease runs out."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery.spool import lease
from tests.delivery.conftest import queue_message
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]


def test_a_lease_is_exclusive_until_it_runs_out(settings):
    make_route("dest.test", "/dev/null")
    mid = queue_message("a@dest.test")
    now = timezone.now()
    assert lease.claim([mid], token="w1", now=now) == [mid]
    assert lease.claim([mid], token="w2", now=now) == []
    later = now + timedelta(seconds=settings.ESAROUTES_LEASE_SECONDS + 1)
    assert lease.claim([mid], token="w2", now=later) == [mid]  # w1 died: its lease ran out
