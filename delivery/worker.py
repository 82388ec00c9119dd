"""Delivery batches, start to end: claim, plan, deliver, record, release. Called by the Celery tasks.

    deliver_batch([mid])     # the doorbell for MID, plus whatever else is due, up to ESAROUTES_DELIVERY_BATCH

A batch is claimed and planned in the caller's thread, then handed to the process's runner (the SMTP, on its
event loop) and to the process's one recorder thread (:class:`Recorder`): the Celery task does not wait for the
network (``wait=False``), so a host that never answers holds its own connection and messages, never a task slot.
The recorder group-commits the reports of every batch in flight as they arrive (everything that arrived since
the last commit goes in one transaction), renews the leases of the batches still in flight, gives a message
back as soon as its recipients are all recorded, and releases a batch when it is through. So only a dead
worker's lease runs out.

Back-pressure: a task claims only while the process holds fewer than ESAROUTES_DELIVERY_MAX_IN_FLIGHT messages
that are moving (see :func:`admit`); messages of batches stalled on a silent host count against twice that.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue as stdqueue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import OperationalError, close_old_connections, connections
from django.utils import timezone

from delivery import engine, outcome, slots
from delivery.models import Recipient
from delivery.outbound import hosts, runner
from delivery.spool import doorbell, journal, lease, plan, record
from routes import destinations

logger = logging.getLogger(__name__)

#: A batch that has had no report for this long is stalled (a silent host, a stuck transaction): its messages
#: count against the hard bound of :func:`admit`, not against the room for moving mail.
STALLED_AFTER = 10.0


@dataclass(frozen=True)
class BatchResult:
    claimed: int
    groups: int
    generated: tuple[int, ...]  # bounce messages created (their doorbell rings when they commit)


def deliver_batch(mids: Sequence[int] = (), *, fill: bool = True, wait: bool = True) -> BatchResult:
    """Deliver the given messages (those whose lease is free) and, with `fill`, other due messages.

    `wait`: return once the batch is delivered and recorded (raising what its recording raised); without it
    (the Celery task) return as soon as the batch is handed to the runner and the recorder.
    """
    journal.recover(
        record.record_safely
    )  # deliveries that a dead (or failed) process saw answered 250 and did not record
    rec = recorder()
    rec.wait_for_room()
    token = lease.new_token()
    now = timezone.now()
    claimed = lease.claim(mids, token=token, now=now)
    limit = settings.ESAROUTES_DELIVERY_BATCH
    if fill and len(claimed) < limit:
        claimed += lease.claim(lease.due(now=now, limit=limit - len(claimed), exclude=claimed), token=token, now=now)
    if not claimed:
        return BatchResult(0, 0, ())
    generated: list[int] = []
    flight: _Flight | None = None
    try:
        planned = plan.plan(claimed, now=now)
        if planned.immediate:
            generated += _record([planned.immediate])
        if planned.groups:
            groups, held = hold_back(planned.groups, runner.get_runner().stalled_hosts(STALLED_AFTER))
            if held:
                _hold(held)
            if groups:
                flight = rec.start(token, groups, claimed)
    except Exception:
        logger.exception("delivery batch %s failed; its messages are retried later", token)
        lease.postpone_unfinished(token, now=timezone.now())
        lease.release(token, now=timezone.now())
        raise
    if flight is None:
        lease.release(token, now=timezone.now())
    if flight is not None and wait:
        generated += flight.wait()
    return BatchResult(len(claimed), len(planned.groups), tuple(generated))


def hold_back(
    groups: Sequence[outcome.Group], stalled: set[hosts.HostKey]
) -> tuple[list[outcome.Group], list[outcome.Group]]:
    """(groups to deliver now, groups held back). A group is held back when every host it may use has a connection
    of this process waiting STALLED_AFTER seconds or more for its connect or greeting (`stalled`): another
    connection would wait as long, and its messages would sit in memory meanwhile. Held back, they wait
    STALLED_AFTER seconds in the queue, without an attempt, while the mail of other destinations goes on."""
    run: list[outcome.Group] = []
    held: list[outcome.Group] = []
    for group in groups:
        (held if group.hosts and all(h.key in stalled for h in group.hosts) else run).append(group)
    return run, held


def _hold(groups: Sequence[outcome.Group]) -> None:
    until = timezone.now() + timedelta(seconds=STALLED_AFTER)
    lease.postpone_recipients([(j.mid, r.rid) for g in groups for j in g.jobs for r in j.recipients], until=until)
    logger.info(
        "%s messages wait %s s: every host of theirs has a connection of this worker waiting for its greeting",
        sum(len(g.jobs) for g in groups),
        STALLED_AFTER,
    )


def admit(held: int, stalled: int, limit: int) -> bool:
    """May this process claim another batch? It holds `held` messages in flight, `stalled` of them in batches
    that have had no report for STALLED_AFTER seconds (a host that accepts TCP and never greets, say).

    Moving mail has `limit` messages of room whatever the stalled batches hold, and everything together has
    twice that: so slow destinations can neither stop the others nor make the process hold without bound.
    """
    return held - stalled < limit and held < 2 * limit


@dataclass(eq=False)
class _Flight:
    """One batch in flight: its lease token and the recipients of each message not yet through."""

    token: str
    journal: journal.Journal
    outstanding: dict[int, set[int]]  # mid -> rids with no final yet (changed by the recorder thread only)
    progress: float  # time.monotonic() of the last report
    future: concurrent.futures.Future[None] | None = None
    generated: list[int] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self) -> list[int]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.generated


_STOP = object()


class Recorder:
    """This process's recording thread, for every batch in flight. One per process: use :func:`recorder`."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._inbox: stdqueue.SimpleQueue[tuple[_Flight, outcome.Report | None] | object] = stdqueue.SimpleQueue()
        self._cond = threading.Condition()
        self._flights: dict[str, _Flight] = {}
        self._thread = threading.Thread(target=self._main, name="esaroutes-recorder", daemon=True)
        self._thread.start()

    # --- the callers' side ---------------------------------------------------------------------------------

    def load(self, now: float | None = None) -> tuple[int, int]:
        """(messages in flight, of which in stalled batches)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            held = stalled = 0
            for f in self._flights.values():
                held += len(f.outstanding)
                if now - f.progress >= STALLED_AFTER:
                    stalled += len(f.outstanding)
            return held, stalled

    def wait_for_room(self) -> None:
        """Back-pressure: block while :func:`admit` says no (re-checked on every commit, and every second as
        batches go stale)."""
        with self._cond:
            while not admit(*self.load(), settings.ESAROUTES_DELIVERY_MAX_IN_FLIGHT):
                self._cond.wait(1.0)

    def start(self, token: str, groups: Sequence[outcome.Group], claimed: Sequence[int]) -> _Flight:
        """Deliver `groups` (the batch of lease `token`); the recorder records and releases it."""
        outstanding: dict[int, set[int]] = {}
        for group in groups:
            for job in group.jobs:
                outstanding.setdefault(job.mid, set()).update(r.rid for r in job.recipients)
        idle = [mid for mid in claimed if mid not in outstanding]  # nothing to send now: back at once
        if idle:
            lease.release(token, now=timezone.now(), mids=idle)
        flight = _Flight(token, journal.get(), outstanding, time.monotonic())
        with self._cond:
            self._flights[token] = flight

        def emit(report: outcome.Report) -> None:  # on the runner's loop thread, as soon as a message is through
            flight.journal.note(report)  # a delivery survives this process's death from here on
            self._inbox.put((flight, report))

        try:
            flight.future = runner.get_runner().submit(groups, emit)
        except BaseException:
            with self._cond:
                self._flights.pop(token, None)
            raise
        flight.future.add_done_callback(lambda _: self._inbox.put((flight, None)))  # the batch is through
        return flight

    def drain(self, timeout: float) -> bool:
        """Warm shutdown: the runner finishes what is on the wire and starts nothing new; wait until every batch
        is recorded and released. False if some were still in flight after `timeout` seconds."""
        runner.stop_sending()
        with self._cond:
            return self._cond.wait_for(lambda: not self._flights, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    # --- the recorder thread -------------------------------------------------------------------------------

    def _main(self) -> None:
        renewed = time.monotonic()
        try:
            while True:
                renew_every = max(0.5, settings.ESAROUTES_LEASE_SECONDS / 3)
                items: list[tuple[_Flight, outcome.Report | None]] = []
                stop = False
                try:
                    item = self._inbox.get(timeout=max(0.05, renewed + renew_every - time.monotonic()))
                    while True:
                        if item is _STOP:
                            stop = True
                        else:
                            items.append(item)  # type: ignore[arg-type]
                        item = self._inbox.get_nowait()
                except stdqueue.Empty:
                    pass
                if items:
                    try:
                        self._step(items)
                    except Exception:  # a bug here must not stop recording for the whole process
                        logger.exception("the delivery recorder failed; its batches' leases run out")
                if time.monotonic() - renewed >= renew_every:
                    # not after every commit: a renewal rewrites every message row of the batch
                    self._renew()
                    renewed = time.monotonic()
                if stop:
                    return
        finally:
            connections.close_all()

    def _step(self, items: list[tuple[_Flight, outcome.Report | None]]) -> None:
        reports = [(f, r) for f, r in items if r is not None]
        finished = [f for f, r in items if r is None]
        if reports:
            back = self._through(reports)
            try:
                generated = _record([r for _, r in reports], release=back)
            except Exception as exc:
                self._fail({id(f.journal): f.journal for f, _ in reports}, exc)
                return
            for f, r in reports:
                f.journal.recorded([r])
            self._recorded(reports, generated)
        ended: list[_Flight] = []
        for f in finished:
            with self._cond:
                known = self._flights.get(f.token) is f
            if known:
                self._finish(f)
                ended.append(f)
        with self._cond:
            idle = not self._flights
        if idle:
            close_old_connections()  # nothing in flight: the connection is kept for the next burst unless too old
        for f in ended:
            f.done.set()

    def _through(self, reports: list[tuple[_Flight, outcome.Report]]) -> dict[str, list[int]]:
        """The messages of `reports` whose recipients all have their final now (lease token -> MIDs): they go
        back in the recording transaction, not at the end of the batch (its slowest group's end)."""
        now = time.monotonic()
        back: dict[str, list[int]] = {}
        with self._cond:
            for f, r in reports:
                f.progress = now
                for final in r.finals:
                    rids = f.outstanding.get(final.mid)
                    if rids is None:
                        continue
                    rids.discard(final.rid)
                    if not rids:
                        del f.outstanding[final.mid]
                        back.setdefault(f.token, []).append(final.mid)
        return back

    def _recorded(self, reports: list[tuple[_Flight, outcome.Report]], generated: list[int]) -> None:
        """Committed: the bounces generated ring the doorbell as they commit; the recipients waiting for a
        connection slot are noted."""
        with self._cond:
            flights = {f for f, _ in reports if self._flights.get(f.token) is f}
            for f in flights:
                f.generated += generated
            self._cond.notify_all()
        try:
            wait_for_slots([final for _, r in reports for final in r.finals])
        except Exception:  # they are due again after runner.SLOT_RETRY anyway
            logger.warning("could not note the recipients waiting for a connection slot", exc_info=True)

    def _finish(self, flight: _Flight) -> None:
        """The runner is through with the batch: after a failure of its own, postpone what is unfinished; then
        give the messages back."""
        assert flight.future is not None
        error = None if flight.future.cancelled() else flight.future.exception()
        try:
            if error is not None:
                logger.error("delivery batch %s failed; its messages are retried later", flight.token, exc_info=error)
                flight.error = error
                lease.postpone_unfinished(flight.token, now=timezone.now())
            if error is not None or flight.outstanding:
                # otherwise every message went back (or finished) as its recording committed: nothing is left
                lease.release(flight.token, now=timezone.now())
        except Exception as exc:
            logger.exception("releasing batch %s failed; its lease runs out", flight.token)
            flight.error = flight.error or exc
        with self._cond:
            self._flights.pop(flight.token, None)
            self._cond.notify_all()

    def _fail(self, journals: dict[int, journal.Journal], error: Exception) -> None:
        """Nothing can be recorded (the database is down, say): stop the runner on every batch in flight, or it
        goes on delivering with nobody recording the outcomes, and every one of those messages is sent again."""
        logger.exception("recording delivery outcomes failed; the batches in flight stop and are retried later")
        with self._cond:
            flights, self._flights = list(self._flights.values()), {}
            self._cond.notify_all()
        for f in flights:
            if f.future is not None:
                f.future.cancel()
        # their deliveries not yet recorded are in the journal: recover() records them later
        journals.update((id(f.journal), f.journal) for f in flights)
        for jnl in journals.values():
            jnl.abandon()
        for f in flights:
            try:
                lease.postpone_unfinished(f.token, now=timezone.now())
                lease.release(f.token, now=timezone.now())
            except Exception:
                logger.warning("batch %s: its lease runs out", f.token, exc_info=True)
            f.error = error
        connections.close_all()  # a broken connection is not reused
        for f in flights:
            f.done.set()

    def _renew(self) -> None:
        with self._cond:
            tokens = list(self._flights)
        for token in tokens:
            try:
                lease.renew(token, now=timezone.now())
            except Exception:
                logger.warning("renewing the lease of batch %s failed", token, exc_info=True)


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def recorder() -> Recorder:
    """This process's recorder, started on first use (after Celery's fork, never before it)."""
    global _recorder
    with _recorder_lock:
        if _recorder is None or _recorder.pid != os.getpid() or not _recorder._thread.is_alive():
            _recorder = Recorder()
        return _recorder


def shutdown() -> None:
    """Warm shutdown of this process's deliveries: what is on the wire finishes and is recorded, connections still
    waiting for a greeting are given up (their messages stay queued), then the runner stops."""
    global _recorder
    with _recorder_lock:
        rec, _recorder = _recorder, None
    if rec is not None and rec.pid != os.getpid():
        rec = None  # the parent's, inherited by a fork: not ours to drain
    if rec is not None and not rec.drain(settings.ESAROUTES_DELIVERY_TRANSACTION_TIMEOUT + 10):
        logger.warning("delivery batches still in flight at shutdown are cancelled")
    runner.shutdown_runner()  # cancels what is left: the recorder then gives those messages back
    if rec is not None:
        rec.stop()


def _record(reports: list[outcome.Report], attempts: int = 5, release: dict[str, list[int]] | None = None) -> list[int]:
    """record.record(), again after a deadlock or a serialization failure (the transaction was rolled back and
    the reports are still in hand): the mail went out, so losing its outcome would send it twice. `release`:
    the leases given back in the same transaction (`record.record`).

    Any other failure is the reports' own (a text the database refuses, a bug on one report's path), which no
    retry cures and which must not stop the batch: they are recorded one by one, a report that fails alone
    with safe texts, then reduced to its facts (record.record_apart), so what a peer accepted is never sent again;
    the messages of `release` go back after that.
    """
    for attempt in range(1, attempts + 1):
        try:
            return record.record(reports, release=release)
        except OperationalError:
            if attempt == attempts:
                raise
            logger.warning("recording a delivery outcome failed (attempt %s); trying again", attempt, exc_info=True)
            time.sleep(0.05 * attempt)
        except lease.DATABASE_GONE:
            raise
        except Exception:
            logger.warning(
                "recording %s delivery reports failed; recording them one by one", len(reports), exc_info=True
            )
            generated = record.record_apart(reports)
            for token, mids in (release or {}).items():  # a message already done is not leased any more
                try:
                    lease.release(token, now=timezone.now(), mids=mids)
                except Exception:  # recorded: a short delay at worst, never a second delivery
                    logger.warning("releasing messages of batch %s failed; their lease runs out", token, exc_info=True)
            return generated
    raise AssertionError("unreachable")


# --- waking what waits for a connection slot ----------------------------------------------------------------


def wait_for_slots(finals: Sequence[outcome.Final]) -> None:
    """Recorded and given back: the recipients held back for a connection slot wait in `slots` for the next
    slot of their keys given back (`wake`; with the scope per destination IP, a slot of any address that was
    full). One given back before they were noted wakes them now."""
    waiting: dict[tuple[str, int], set[int]] = {}
    for final in finals:
        if final.slot_wait is not None:
            keys: tuple[str, ...] | str = final.slot_wait[0]  # a str: one key, in a journal of before
            limit = final.slot_wait[1]
            for key in (keys,) if isinstance(keys, str) else keys:
                waiting.setdefault((key, limit), set()).add(final.mid)
    for (key, limit), mids in waiting.items():
        slots.wait(key, mids)
        if engine.connections_allowed(limit, slots.in_use(key)) > 0:
            wake(key, slots.take_waiting(key))


def wake(key: str, mids: Sequence[int]) -> None:
    """A connection slot of `key` was given back: the recipients of `mids` held back for one are due now, and
    the doorbell rings for them (their SLOT_RETRY is only the safety net). They are the recipients of the key's
    domain, found by the function that made the key (`destinations.counting_domain`): an address literal's
    spelling (`[IPv6:::1]`, stored `[ipv6:::1]`, counted as `::1`) matches as a domain does."""
    if not mids:
        return
    domain = key.partition("|")[0]
    now = timezone.now()
    rows = Recipient.objects.filter(message_id__in=list(mids), held=False, next_attempt_at__gt=now)
    pks = [pk for pk, d in rows.values_list("pk", "domain") if destinations.counting_domain(d) == domain]
    if pks:
        doorbell.ring_many(lease.make_due(Recipient.objects.filter(pk__in=pks), now))


runner.on_slot_freed(wake)
