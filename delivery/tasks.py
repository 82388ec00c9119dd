"""Celery tasks: thin wrappers over `delivery.worker` and `delivery.spool`.

`deliver(mids=[...])` is the doorbell the listener rings after commit (one task per group commit, not per
message: a publish costs the listener about 0.4 ms of CPU); `sweep()` runs on Celery beat every
ESAROUTES_SWEEP_INTERVAL seconds and rings for whatever is due: retries, messages whose doorbell the broker lost
(a flushed Redis), and messages whose worker died (their lease ran out). Both are idempotent: the lease in the
database decides who delivers, so a duplicate task only costs a failed claim.
"""

from __future__ import annotations

import logging
import math
import signal
import threading

from celery import shared_task
from celery.signals import task_postrun, worker_process_init, worker_process_shutdown, worker_shutdown
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from delivery import worker
from delivery.outbound import hosts
from delivery.spool import journal, lease, record
from delivery.webhooks import send as webhook_send

logger = logging.getLogger(__name__)

#: At most this many batch tasks per sweep: enough to keep every worker busy until the next sweep.
MAX_TASKS_PER_SWEEP = 64


@shared_task(ignore_result=True, acks_late=True)
def deliver(mid: int | None = None, mids: list[int] | None = None) -> int:
    """Deliver these messages (those still queued and free) and other due ones, up to ESAROUTES_DELIVERY_BATCH;
    returns how many were claimed. The doorbell sends `mids` (a group commit's worth), the sweep one `mid`."""
    return worker.deliver_batch(mids or ([mid] if mid is not None else []), wait=False).claimed


@shared_task(ignore_result=True)
def send_webhooks() -> int:
    """Celery beat, every ESAROUTES_WEBHOOK_INTERVAL seconds: POST the due webhook rows (at least once)."""
    return webhook_send.send_due()


@shared_task(ignore_result=True)
def sweep() -> int:
    """Ring for due messages: one batch task per ESAROUTES_DELIVERY_BATCH of them. Returns tasks sent."""
    try:
        hosts.store_connection_gauges()
    except Exception:  # a gauge must never stop the sweep
        logger.warning("could not update the open connections gauge", exc_info=True)
    journal.recover(record.record_safely)  # a worker process killed since the last sweep: its unrecorded deliveries
    batch = settings.ESAROUTES_DELIVERY_BATCH
    mids = lease.due(now=timezone.now(), limit=batch * MAX_TASKS_PER_SWEEP)
    tasks = min(math.ceil(len(mids) / batch), MAX_TASKS_PER_SWEEP)
    for i in range(tasks):
        deliver.apply_async((mids[i * batch],))
    return tasks


@task_postrun.connect
def _close_old_connections(**_: object) -> None:
    """After a task, as after a web request: the connection is kept for the next task unless it is older than
    ESAROUTES_DB_CONN_MAX_AGE, broke, or fails its health check (CELERY_DB_REUSE_MAX keeps Celery from closing
    it after every task: a new connection is a new server backend, a fork and a warm-up each time)."""
    close_old_connections()


@worker_process_shutdown.connect
@worker_shutdown.connect  # thread and solo pools: no pool process to shut down
def _close_connections(**_: object) -> None:
    """Warm shutdown of a worker process: the batches in flight are finished and recorded (a connection still
    waiting for its greeting is given up: its messages stay queued), the pooled SMTP connections QUIT, the
    journal is closed."""
    worker.shutdown()
    journal.shutdown()


@worker_process_init.connect
def _leave_sigterm_to_the_main_process(**_: object) -> None:
    """A pool process ignores SIGTERM (Celery already has it ignore SIGINT).

    `bin/run` (honcho), systemd and `kill -- -PGID` send SIGTERM to the worker's whole process group: the pool
    processes died in the middle of their batch, and every message that had its 250 but not yet its commit was
    sent again after the restart. Now only the main process acts on it (Celery's warm shutdown): the running
    batch finishes and is recorded, then the pool stops. A hard time limit still works (billiard follows its
    SIGTERM with SIGKILL), and SIGKILL still kills.
    """
    from billiard.process import current_process

    if current_process().name == "MainProcess" or threading.current_thread() is not threading.main_thread():
        return  # the solo pool (and tests' in-thread workers) run tasks in the main process: SIGTERM stops it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
