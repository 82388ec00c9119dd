"""One delivery batch, start to end: claim, plan, deliver, record, release. Called by the Celery tasks.

    deliver_batch([mid])     # the doorbell for MID, plus whatever else is due, up to ESAROUTES_DELIVERY_BATCH

The batch's reports are recorded as they arrive (group commit: everything that arrived since the last commit
goes in one transaction), and the lease is renewed while the runner works, so only a dead worker's lease
runs out.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from delivery import journal, queue, runner

logger = logging.getLogger("delivery.worker")


@dataclass(frozen=True)
class BatchResult:
    claimed: int
    groups: int
    generated: tuple[int, ...]  # bounce messages created, already rung


def deliver_batch(mids: Sequence[int] = (), *, fill: bool = True) -> BatchResult:
    """Deliver the given messages (those whose lease is free) and, with `fill`, other due messages."""
    journal.recover()  # deliveries that a dead (or failed) process saw answered 250 and did not record
    token = queue.new_token()
    now = timezone.now()
    claimed = queue.claim(mids, token=token, now=now)
    limit = settings.ESAROUTES_DELIVERY_BATCH
    if fill and len(claimed) < limit:
        claimed += queue.claim(queue.due(now=now, limit=limit - len(claimed), exclude=claimed), token=token, now=now)
    if not claimed:
        return BatchResult(0, 0, ())
    generated: list[int] = []
    try:
        plan = queue.plan(claimed, now=now)
        if plan.immediate:
            generated += _record([plan.immediate])
        if plan.groups:
            generated += _run(plan.groups, token)
    except Exception:
        logger.exception("delivery batch %s failed; its messages are retried later", token)
        queue.postpone_unfinished(token, now=timezone.now())
        raise
    finally:
        queue.release(token, now=timezone.now())
    if generated:
        from delivery import intake

        intake.ring_many(generated)
    return BatchResult(len(claimed), len(plan.groups), tuple(generated))


def _run(groups: Sequence[runner.Group], token: str) -> list[int]:
    reports: stdqueue.SimpleQueue[runner.Report | None] = stdqueue.SimpleQueue()
    jnl = journal.get()

    def emit(report: runner.Report) -> None:  # on the runner's loop thread, as soon as a message is through
        jnl.note(report)  # a delivery survives this process's death from here on
        reports.put(report)

    future = runner.get_runner().submit(groups, emit)
    future.add_done_callback(lambda _: reports.put(None))  # wakes the loop below: the runner is through
    renew_every = max(0.5, settings.ESAROUTES_LEASE_SECONDS / 3)
    renewed = time.monotonic()
    generated: list[int] = []
    finished = False
    try:
        while not finished:
            try:
                first = reports.get(timeout=renew_every)
            except stdqueue.Empty:
                queue.renew(token, now=timezone.now())
                renewed = time.monotonic()
                continue
            batch: list[runner.Report] = []
            item: runner.Report | None = first
            while True:
                if item is None:
                    finished = True
                else:
                    batch.append(item)
                try:
                    item = reports.get_nowait()
                except stdqueue.Empty:
                    break
            if batch:
                generated += _record(batch)
                jnl.recorded(batch)
                if not finished and time.monotonic() - renewed >= renew_every:
                    # not after every commit: a renewal rewrites every message row of the batch
                    queue.renew(token, now=timezone.now())
                    renewed = time.monotonic()
    except BaseException:
        # Nothing can be recorded (the database is down, say): stop the runner, or it goes on delivering the rest
        # of the batch with nobody recording the outcomes, and every one of those messages is sent again later.
        future.cancel()
        jnl.abandon()  # its deliveries not yet recorded are in the journal: recover() records them later
        raise
    future.result()  # a bug in the runner surfaces here (recorded reports stay recorded)
    return generated


def _record(reports: list[runner.Report], attempts: int = 5) -> list[int]:
    """queue.record(), again after a deadlock or a serialization failure (the transaction was rolled back and
    the reports are still in hand): the mail went out, so losing its outcome would send it twice."""
    for attempt in range(1, attempts + 1):
        try:
            return queue.record(reports)
        except OperationalError:
            if attempt == attempts:
                raise
            logger.warning("recording a delivery outcome failed (attempt %s); trying again", attempt, exc_info=True)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")
