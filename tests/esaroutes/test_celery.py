from __future__ import annotations

import threading

import pytest
from celery.signals import task_postrun
from django.core.cache import cache

from esaroutes import tasks


@pytest.mark.django_db(transaction=True)
def test_a_task_sent_through_the_broker_is_run_by_a_worker(celery_worker_thread):
    """Through Redis on the PostgreSQL pass, through the filesystem broker on the embedded pass."""
    ran = threading.Event()

    def on_postrun(sender=None, **kwargs):
        if sender is not None and sender.name == tasks.heartbeat.name:
            ran.set()

    task_postrun.connect(on_postrun, weak=False)
    try:
        cache.delete(tasks.HEARTBEAT_KEY)
        tasks.heartbeat.delay()
        assert ran.wait(timeout=30), "no worker ran the task"
    finally:
        task_postrun.disconnect(on_postrun)
    assert cache.get(tasks.HEARTBEAT_KEY)["host"]
