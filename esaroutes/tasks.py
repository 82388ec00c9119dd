"""Celery tasks of the project itself (delivery tasks live in delivery.tasks)."""

from __future__ import annotations

import socket

from celery import shared_task
from django.core.cache import cache
from django.utils import timezone

HEARTBEAT_KEY = "esaroutes:worker-heartbeat"


@shared_task(ignore_result=True)
def heartbeat() -> None:
    """Beat sends this every few seconds; the dashboard shows when a worker last ran one."""
    cache.set(HEARTBEAT_KEY, {"at": timezone.now().isoformat(), "host": socket.gethostname()}, timeout=None)
