"""The delivery loop: one long-lived event loop per worker process, with a pool of open SMTP connections.

A Celery task (see `delivery.tasks`) claims a batch of messages, `delivery.spool.plan.plan()` turns them into
`Group`s (the jobs of one route and recipient domain, with the hosts in the order to try), and `Runner.run()`
delivers them here, in a background thread that owns the event loop. Results come back one `Report` per message
and host chain, as soon as each message is through, through the `emit` callback: the task records them in the
database at once (group commit), so a worker killed in the middle leaves at most the message in flight on each
connection unrecorded.

What happens on the wire follows `delivery.engine` (the decisions) and `delivery.outbound.smtp_client` (the SMTP):

* the group's hosts are tried in order; a host that fails to connect, greet, EHLO or STARTTLS gets a
  ``Connection Error`` line and its recipients go on at once to the next host;
* the first connection to a host this process has not seen greeting lately carries one message of its group
  (``engine.probe_alone``: the others go on at once, a group of their own); while it waits for its connect or
  greeting, or for the first host-down period after a connection failed to greet, the host is passed over for the
  route's next host (``engine.before_connecting``: one ``skipped host`` line per message, no Connection Error,
  not marked down, no attempt): a host that accepts TCP and never greets holds one message for its timeout, not
  one connection per message; once it greets it takes its turns again;
* on a connection, each message is one transaction for all its recipients of this route; a 4xx after MAIL
  FROM sends the recipients concerned to the next host (or, with defer_on_4xx, to their retry); a 5xx bounces;
* when every host of the route failed a recipient and the group has a fallback relay (the route's, or the one in
  settings for mail delivered by MX), the fallback is tried last, after a ``to fallback relay`` line, with the
  route's TLS policy and no AUTH (``engine.with_fallback``);
* when no host is left, what is still pending is ``Delayed`` with the last reply, for its retry;
* a connection carries at most ``max_messages`` messages, then a new one is opened to the same host; an idle
  connection stays in the pool for ``ESAROUTES_DELIVERY_IDLE`` seconds for the next batch, then QUITs (at once
  when another runner was refused a slot of its destination: ``slots.wanted``). The pool
  is keyed by the whole `Destination`, its recipient domain included: a connection opened under one domain's
  destination control (its slot, TLS, messages per connection) never carries another domain's mail.

No ORM on the event loop: DCIDs and the ``DCID n close`` lines of idle connections are handled in a one-thread
executor.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.db import close_old_connections, connections, transaction
from django.utils import timezone

from delivery import engine, ids, maillog, outcome, slots
from delivery.engine import Verdict
from delivery.models import DeliveryAttempt
from delivery.outbound import dns, hosts, smtp_client
from esaroutes import eventloop
from routes import destinations

logger = logging.getLogger(__name__)


Emit = Callable[[outcome.Report], None]

#: A verdict that ends this attempt for the recipient: its state, the attempt's outcome, its mail-log line.
_FINAL = {
    Verdict.BOUNCE: ("bounced", DeliveryAttempt.Outcome.BOUNCED, maillog.lines.BOUNCED),
    Verdict.DEFER: ("delayed", DeliveryAttempt.Outcome.DELAYED, maillog.lines.DELAYED),
}


def _now(line: maillog.lines.Line) -> maillog.lines.Line:
    """The line stamped with the moment it happened (the recording commit comes later)."""
    return replace(line, at=timezone.now())


class _Stopped(Exception):
    """The runner is shutting down: a group starts no new connection and no new message."""


#: A recipient that found every connection slot of its destination taken is due again after this many seconds
#: (the slot of a connection that closes meanwhile, or of a dead worker's after slots.SLOT_TTL, is free by then).
SLOT_RETRY = 5.0

Slot = tuple[str, str]  # (counting key, holder)


@dataclass(slots=True)
class _Pooled:
    session: smtp_client.HostSession
    dcid: int
    idle_since: float = 0.0
    slot: Slot | None = None  # the destination's connection slot this connection holds


@dataclass(slots=True)
class _Throttled:
    """A destination limit holds the recipients back: due again at `until`; `lines` say so (once per episode)."""

    until: datetime
    lines: list[maillog.lines.Line] = field(default_factory=list)
    # refused a connection slot: (the counting keys refused, their limit); a slot of any given back wakes them
    slot_wait: tuple[tuple[str, ...], int] | None = None


class _AddressSlots:
    """The gate of a new connection under the limit scope "per destination IP" (`smtp_client.Gate`).

    Asked with each address the session is about to connect to (resolved, in the IP preference's order), it
    takes a connection slot of `domain|address`: the ESA counts per MX IP, so the slot is the connected
    address's, not the host name's. An address whose slots are all held is refused and the session tries the
    next; the slot of an address that then failed to connect is given back before the next is asked. Once the
    session is open, `slot` is its connection's; when no address connected and one was full, `held_back`."""

    def __init__(self, runner: Runner, group: outcome.Group) -> None:
        assert group.limits is not None
        self._runner = runner
        self._group = group
        self._limits = group.limits
        self.slot: Slot | None = None
        self.full: list[str] = []  # the counting keys whose slots were all held

    async def __call__(self, address: str) -> bool:
        runner = self._runner
        runner._free_slot(self.slot)  # the previous address did not connect
        self.slot = None
        key = destinations.counting_key(self._limits, self._group.domain, address)
        slot = (key, slots.holder(runner._token, next(runner._slot_names)))
        loop = asyncio.get_running_loop()
        try:
            taken = await loop.run_in_executor(runner._executor, _try_slot, slot, self._limits.max_connections)
        except Exception:  # the shared counters are gone (Redis down): deliver rather than hold mail forever
            logger.warning("connection limit of %s not applied: the counters are unavailable", key, exc_info=True)
            return True
        if not taken:
            self.full.append(key)
            return False
        self.slot = slot
        runner._slots.add(slot)
        return True

    async def held_back(self) -> _Throttled:
        """Every address that could be tried had its slots held: the mail waits for a slot of any of them."""
        limit, domain = self._limits.max_connections, self._group.domain
        loop = asyncio.get_running_loop()
        try:
            lines = await loop.run_in_executor(self._runner._executor, _slots_full, self.full, limit, domain)
        except Exception:
            logger.warning("could not mark the connection slots of %s wanted", domain, exc_info=True)
            lines = []
        until = timezone.now() + timedelta(seconds=SLOT_RETRY)
        return _Throttled(until, lines, (tuple(self.full), limit))


class _PassedOver:
    """`_acquire` opened nothing: a connection to the host is waiting for its first greeting (`engine.Opening.PASS`)."""


_PASSED = _PassedOver()


@dataclass(slots=True)
class _Connecting:
    """One new connection counted in `Runner._connecting` until its greeting (or failure) is known."""

    key: hosts.HostKey
    counted: bool = True


@dataclass(slots=True)
class _Last:
    """The last failure a recipient met, for its Delayed line when no host is left."""

    dcid: int = 0
    code: int | None = None
    text: str = "no host could be tried"
    host: str = ""
    ip: str = ""
    port: int = 0
    logged: bool = False  # a Delayed: line already says it (a reply in a transaction), none is due at the end


class Runner:
    """Owns one event loop thread and its connection pool. One per process: use :func:`get_runner`."""

    def __init__(self, *, idle: float, down: float = 60.0) -> None:
        self.idle = idle
        self.down = down  # the host-down period of a first failure (ESAROUTES_HOST_DOWN_INITIAL)
        self._pool: dict[outcome.Destination, list[_Pooled]] = {}
        # Open connections per host and recipient domain, published for the hosts page, the dashboard and
        # tophosts (hosts.publish_connections) every few seconds
        self._open: collections.Counter[hosts.GaugeKey] = collections.Counter()
        self._published: tuple[float, dict[hosts.GaugeKey, int]] | None = None
        self._token = f"{os.getpid()}:{id(self):x}"
        # The connection slots this process holds (delivery.slots), refreshed by the reaper while they live
        self._slots: set[Slot] = set()
        self._slot_names = itertools.count(1)
        self._slots_refreshed = time.monotonic()
        # The recipient charges whose RCPTs are on their way (slots.Charge): re-stamped with the slots
        self._charges: set[slots.Charge] = set()
        # Shutting down: no new connection and no new message; group tasks waiting on a connect or a greeting
        # (nothing of theirs on the wire) are cancelled, their messages stay queued for a later retry.
        self._stopping = False
        # The group tasks opening a connection: the host, and since when (read by other threads: the lock)
        self._opening: dict[asyncio.Task[Any], tuple[hosts.HostKey, float]] = {}
        self._opening_lock = threading.Lock()
        # What this process knows of each host's greeting (loop thread only, engine.before_connecting): its
        # connections on their way (counted from the decision to open, so that two groups deciding in the same
        # instant see each other), when one last saw it greet (time.monotonic(); gone when one failed to), when
        # one last failed to (gone when one greets), and the event set by the next outcome of any of them (for
        # the messages that wait: engine.Opening.WAIT)
        self._connecting: collections.Counter[hosts.HostKey] = collections.Counter()
        self._greeted: dict[hosts.HostKey, float] = {}
        self._failed: dict[hosts.HostKey, float] = {}
        self._greeting_news = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="esaroutes-runner-db")
        self._loop = eventloop.new_loop()
        self._thread = threading.Thread(target=self._main, name="esaroutes-runner", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._reaper_task = self._loop.create_task(self._reaper())
        self._loop.run_forever()

    # --- the sync side ---------------------------------------------------------------------------------------

    def submit(self, groups: Sequence[outcome.Group], emit: Emit) -> concurrent.futures.Future[None]:
        """Start delivering `groups` on the loop thread; `emit` is called (on the loop thread) per report."""
        return self._call(self.run(groups, emit))

    def stalled_hosts(self, after: float) -> set[hosts.HostKey]:
        """Hosts with a connection of ours that has waited `after` seconds or more for its connect, greeting, EHLO
        or STARTTLS (any thread)."""
        now = time.monotonic()
        with self._opening_lock:
            return {key for key, since in self._opening.values() if now - since >= after}

    def stop_sending(self) -> None:
        """Warm shutdown: finish the messages on the wire, start nothing new, give up connections being opened.

        Every group's recipients not yet tried stay queued (no report): the batch's release makes them due again.
        """
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._call(self._stop_sending()).result(10)

    async def _stop_sending(self) -> None:
        self._stopping = True
        with self._opening_lock:
            opening = list(self._opening)
        for task in opening:
            task.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """QUIT every pooled connection and stop the loop (tests and worker shutdown)."""
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._call(self._close_all()).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        with contextlib.suppress(Exception):  # the database thread's connection, or it lingers until collected
            self._executor.submit(connections.close_all).result(timeout)
        self._executor.shutdown(wait=True)

    def _call(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # --- delivering ------------------------------------------------------------------------------------------

    async def run(self, groups: Sequence[outcome.Group], emit: Emit) -> None:
        failed_now: set[hosts.HostKey] = set()  # hosts that failed during this run: skipped if others remain
        results = await asyncio.gather(*(self._run_group(g, emit, failed_now) for g in groups), return_exceptions=True)
        for group, result in zip(groups, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                logger.info("delivery of route %s cancelled; its messages stay queued", group.route_key)
            elif isinstance(result, BaseException):
                logger.error("delivery of route %s failed", group.route_key, exc_info=result)

    async def _run_group(
        self,
        group: outcome.Group,
        emit: Emit,
        failed_now: set[hosts.HostKey],
        start: int = 0,
        last: dict[tuple[int, int], _Last] | None = None,
    ) -> None:
        """Deliver a group along its chain of hosts, from the `start`-th (`last`: its recipients' failures so far)."""
        carry = outcome.Report()  # connection lines waiting for the next job's report
        spun_off: list[asyncio.Task[None]] = []  # the rest of the group, while its first message probes a host
        try:
            await self._run_group_on(group, emit, failed_now, carry, spun_off, start, last or {})
        except (_Stopped, asyncio.CancelledError) as exc:
            # Shutting down: what has no report stays queued. The connection errors met so far happened.
            if carry:
                emit(carry)
            if isinstance(exc, asyncio.CancelledError):
                raise
            logger.info("delivery of route %s stopped by the shutdown; its messages stay queued", group.route_key)
        finally:  # the batch is through only when they are (a cancellation of this task cancels them too)
            for result in await asyncio.gather(*spun_off, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    logger.error("delivery of route %s failed", group.route_key, exc_info=result)

    async def _run_group_on(
        self,
        group: outcome.Group,
        emit: Emit,
        failed_now: set[hosts.HostKey],
        carry: outcome.Report,
        spun_off: list[asyncio.Task[None]],
        start: int,
        last: dict[tuple[int, int], _Last],
    ) -> None:
        pending: list[tuple[outcome.Job, list[outcome.Rcpt]]] = [(job, list(job.recipients)) for job in group.jobs]
        # The recipients whose attempt row of this run already says "delayed" (the last host's failure): every
        # recipient put back to wait gets exactly one such row, the delay event the counters count.
        delayed: set[tuple[int, int]] = set()
        chain = engine.with_fallback(group.hosts, group.fallback)
        for index, host in enumerate(chain):
            if not pending:
                break
            if index < start:
                continue
            later = chain[index + 1 :]
            final_host = not later  # the last host is never skipped: after it, what is left waits for its retry
            if host.key in failed_now and any(h.key not in failed_now for h in later):
                continue
            destination = replace(group.template, host=host)
            if index >= len(group.hosts):  # the fallback relay: every host of the route failed these recipients
                destination = replace(destination, auth=None)  # the route's credentials are for its own hosts
                carry.lines += [
                    _now(
                        maillog.lines.fallback_relay(
                            job.mid,
                            [r.rid for r in rcpts],
                            host.address,
                            host.port,
                            domain=group.domain,
                            tried=len(group.hosts),
                        )
                    )
                    for job, rcpts in pending
                ]
            remaining, pending = pending, []
            # The route's hosts after this one that this run may still try (the fallback relay is no alternative)
            alternatives = [h for h in chain[index + 1 : len(group.hosts)] if h.key not in failed_now]
            while remaining:
                if len(remaining) > 1 and self._probes(destination, alternatives):
                    # Its first connection carries one message until it greets; the rest go on from here at once,
                    # a group of their own (past this host, as other groups' messages go)
                    rest, remaining = remaining[1:], remaining[:1]
                    jobs = tuple(replace(job, recipients=tuple(rcpts)) for job, rcpts in rest)
                    mids = {job.mid for job in jobs}
                    theirs = {k: v for k, v in last.items() if k[0] in mids}
                    spun = self._run_group(replace(group, jobs=jobs), emit, failed_now, index, theirs)
                    spun_off.append(asyncio.create_task(spun))
                pooled = await self._acquire(destination, group, carry, alternatives)
                if isinstance(pooled, _PassedOver):  # its first connection has not greeted: the next host, now
                    carry.lines += [
                        _now(
                            maillog.lines.skipped_host(
                                job.mid, [r.rid for r in rcpts], host.address, host.port, domain=group.domain
                            )
                        )
                        for job, rcpts in remaining
                    ]
                    pending += remaining
                    remaining = []
                    break
                if isinstance(pooled, _Throttled):  # every slot of the destination taken: all of it waits
                    self._hold(group, remaining + pending, pooled, carry, emit)
                    return
                if isinstance(pooled, _Last):  # the host failed: everything goes on to the next host
                    failed_now.add(host.key)
                    kind = DeliveryAttempt.Outcome.DELAYED if final_host else DeliveryAttempt.Outcome.CONNECTION_ERROR
                    tried = sum(len(rcpts) for _, rcpts in remaining)
                    if carry.host_events:  # the failure's event (from _acquire): its recipients failed here
                        carry.host_events[-1] = replace(carry.host_events[-1], failed=tried)
                    for job, rcpts in remaining:
                        for r in rcpts:
                            last[(job.mid, r.rid)] = pooled
                            if final_host:
                                delayed.add((job.mid, r.rid))
                            carry.attempts.append(
                                outcome.Attempt(
                                    job.mid,
                                    r.rid,
                                    pooled.dcid,
                                    host.address,
                                    pooled.ip,
                                    host.port,
                                    pooled.code,
                                    pooled.text,
                                    kind,
                                )
                            )
                    pending += remaining
                    remaining = []
                    break
                broke = False
                try:
                    while remaining and pooled.session.usable and not self._stopping:
                        job, rcpts = remaining.pop(0)
                        charge: slots.Charge | None = None
                        if group.limits is not None and group.limits.recipient_limit:
                            rcpts, throttled, charge = await self._take_recipients(group, pooled, rcpts, carry)
                            if throttled is not None:  # the window is full: this message's rest and what follows
                                held_back, rest_of_job = throttled
                                rest = [(job, rest_of_job)] if rest_of_job else []
                                if not rcpts:
                                    rest += remaining
                                    remaining = []
                                self._hold(group, rest, held_back, carry, emit)
                                if not rcpts:
                                    break
                        report, carried, broke = await self._send(pooled, group, job, rcpts, last, final_host, charge)
                        if final_host:
                            delayed.update((job.mid, r.rid) for r in carried)
                        report.lines[:0] = carry.lines
                        report.attempts[:0] = carry.attempts
                        report.host_events[:0] = carry.host_events
                        carry.lines, carry.attempts, carry.host_events = [], [], []
                        if carried:
                            pending.append((job, carried))
                        emit(report)
                        if broke:
                            failed_now.add(host.key)
                            break
                except asyncio.CancelledError:  # the runner is stopping with this message on the wire
                    self._abort(pooled, carry)
                    raise
                await self._release(destination, pooled, carry)
                if self._stopping:
                    raise _Stopped
                if broke:
                    pending += remaining
                    remaining = []
        # No host left: what is still pending waits for its retry.
        report = carry
        for job, rcpts in pending:
            for r in rcpts:
                info = last.get((job.mid, r.rid), _Last())
                status, phrase = engine.enhanced_status(info.code, info.text)
                if (job.mid, r.rid) not in delayed:  # not tried on the last host (its connection broke first)
                    report.attempts.append(
                        outcome.Attempt(
                            job.mid,
                            r.rid,
                            info.dcid,
                            info.host,
                            info.ip,
                            info.port,
                            info.code,
                            info.text,
                            DeliveryAttempt.Outcome.DELAYED,
                        )
                    )
                report.finals.append(outcome.Final(job.mid, r.rid, "delayed", info.code, info.text, info.host, status))
                if info.logged:
                    continue
                line = _rcpt_line(
                    maillog.lines.DELAYED, info.dcid, job, r, (status, phrase), info.code, info.text, info.host
                )
                report.lines.append(_now(line))
        if report:
            emit(report)

    def _hold(
        self,
        group: outcome.Group,
        held: Sequence[tuple[outcome.Job, Sequence[outcome.Rcpt]]],
        throttled: _Throttled,
        carry: outcome.Report,
        emit: Emit,
    ) -> None:
        """Recipients a destination limit holds back: no attempt, no host marked down, due again at `until`."""
        report = outcome.Report()
        report.lines += [_now(line) for line in throttled.lines]
        for job, rcpts in held:
            for r in rcpts:
                report.finals.append(
                    outcome.Final(
                        job.mid,
                        r.rid,
                        outcome.THROTTLED,
                        None,
                        "",
                        attempt=False,
                        until=throttled.until,
                        slot_wait=throttled.slot_wait,
                    )
                )
        report.lines[:0] = carry.lines
        report.attempts[:0] = carry.attempts
        report.host_events[:0] = carry.host_events
        carry.lines, carry.attempts, carry.host_events = [], [], []
        if report:
            emit(report)

    def _counting_key(self, limits: destinations.DestinationLimits, domain: str, ip: str) -> str:
        return destinations.counting_key(limits, domain, ip if limits.limit_scope == destinations.SCOPE_IP else None)

    async def _take_recipients(
        self, group: outcome.Group, pooled: _Pooled, rcpts: list[outcome.Rcpt], carry: outcome.Report
    ) -> tuple[list[outcome.Rcpt], tuple[_Throttled, list[outcome.Rcpt]] | None, slots.Charge | None]:
        """(the recipients of a message the recipient limit lets go now, (when the rest may go, the rest) or None,
        their pending charge: `_send` settles it). A `Recipient limit expired` line goes into `carry`, before the
        message's own lines."""
        limits = group.limits
        assert limits is not None and limits.recipient_limit and limits.recipient_minutes
        ip = pooled.session.connection.peer_ip if pooled.session.connection else pooled.session.destination.host.address
        key = self._counting_key(limits, group.domain, ip)
        loop = asyncio.get_running_loop()
        try:
            charge, until, lines = await loop.run_in_executor(
                self._executor, _take_recipients, key, len(rcpts), limits, group.domain, group.interface
            )
        except Exception:  # the shared counters are gone (Redis down): deliver rather than hold mail forever
            logger.warning("recipient limit of %s not applied: the shared counters are unavailable", key, exc_info=True)
            return rcpts, None, None
        if charge.count:
            self._charges.add(charge)
        resumed = [line for line in lines if line.text.startswith("Recipient limit expired")]
        carry.lines += [_now(line) for line in resumed]
        if until is None:
            return rcpts, None, charge
        held = _Throttled(until, [line for line in lines if line not in resumed])
        return rcpts[: charge.count], (held, rcpts[charge.count :]), charge

    def _settle(self, charge: slots.Charge | None, kept: int, at: datetime) -> None:
        """A charge's RCPTs are answered (at `at`): it counts `kept` recipients from then on; never waits."""
        if charge is None or not charge.count:
            return
        self._charges.discard(charge)
        future = self._executor.submit(_settle_charge, charge, kept, at)
        future.add_done_callback(_log_charge_error)

    async def _send(
        self,
        pooled: _Pooled,
        group: outcome.Group,
        job: outcome.Job,
        rcpts: list[outcome.Rcpt],
        last: dict[tuple[int, int], _Last],
        final_host: bool,
        charge: slots.Charge | None = None,
    ) -> tuple[outcome.Report, list[outcome.Rcpt], bool]:
        """One message over one open connection: (report, recipients for the next host, connection broke).

        The report's lines tell every outcome as it happened: `Delivery start`, then a `Delayed:` line for each
        recipient sent on to the next host or back to its retry (a 4xx, or no reply), `Bounced:` for each hard
        bounce, `Possible Delivery:` when the connection was lost after the final dot, `Message done` and
        `Response` for the recipients delivered, and the `Connection Error` of a connection that broke.
        On the `final_host` a temporary failure's attempt says "delayed": no next host, the recipient waits.
        The recipient limit's `charge` is settled when the replies are in: what the peer took stays counted.
        """
        session, dcid = pooled.session, pooled.dcid
        host = session.destination.host
        ip = session.connection.peer_ip if session.connection else ""
        by_rid = {r.rid: r for r in rcpts}
        domains = {r.domain for r in rcpts}
        where = {"domain": domains.pop() if len(domains) == 1 else "", "host": host.address}
        envelope = smtp_client.Envelope(job.mid, job.sender, tuple((r.rid, r.address) for r in rcpts), job.body)
        report = outcome.Report(lines=[_now(maillog.lines.delivery_start(dcid, job.mid, by_rid, **where))])
        try:
            result = await session.send(envelope)
        except BaseException:  # cut off (a shutdown): whatever was sent may have been counted by the peer
            self._settle(charge, len(rcpts), timezone.now())
            raise
        at = timezone.now()
        self._settle(charge, sum(engine.counts_at_peer(o.stage, o.code, o.verdict) for o in result.outcomes), at)
        carried: list[outcome.Rcpt] = []
        delivered: list[int] = []
        lines: list[maillog.lines.Line] = []
        for o in result.outcomes:
            r = by_rid[o.rid]
            status, phrase = o.status
            if o.verdict is Verdict.DELIVERED:
                delivered.append(o.rid)
                report.finals.append(outcome.Final(job.mid, o.rid, "delivered", o.code, o.text, host.address, status))
                kind = DeliveryAttempt.Outcome.DELIVERED
                line_kind = ""
            elif o.verdict in _FINAL:
                state, kind, line_kind = _FINAL[o.verdict]
                report.finals.append(outcome.Final(job.mid, o.rid, state, o.code, o.text, host.address, status))
                line_kind = line_kind
            else:
                carried.append(r)
                last[(job.mid, o.rid)] = _Last(dcid, o.code, o.text, host.address, ip, host.port, logged=True)
                kind = DeliveryAttempt.Outcome.DELAYED if final_host else DeliveryAttempt.Outcome.NEXT_HOST
                line_kind = maillog.lines.DELAYED
            if line_kind:
                lines.append(_rcpt_line(line_kind, dcid, job, r, (status, phrase), o.code, o.text, host.address))
            report.attempts.append(
                outcome.Attempt(job.mid, o.rid, dcid, host.address, ip, host.port, o.code, o.text, kind)
            )
        if result.possible_rids:
            lines.insert(0, maillog.lines.possible_delivery(dcid, job.mid, result.possible_rids, **where))
            logger.warning(
                "DCID %s MID %s: connection lost after the final dot; %s",
                dcid,
                job.mid,
                "counted delivered"
                if session.destination.count_possible_delivery
                else "sending again to the next host",
            )
        if delivered:
            lines.append(maillog.lines.message_done(dcid, job.mid, delivered, **where))
            if result.data_reply or not result.possible_rids:
                lines.append(maillog.lines.response(job.mid, delivered, result.data_reply, **where))
        failure = result.failure
        report.host_events.append(
            outcome.HostEvent(
                host.address,
                host.port,
                ok=failure is None or not failure.marks_host_down,
                error=failure.text if failure else "",
                marks_down=bool(failure and failure.marks_host_down),
                delivered=len(delivered),
                failed=len(result.outcomes) - len(delivered),
            )
        )
        if failure is not None:
            lines.append(
                maillog.lines.connection_error(
                    dcid,
                    group.domain,
                    failure.peer_ip or host.address,
                    host.port,
                    _details(failure),
                    group.interface,
                    failure.reason,
                )
            )
        report.lines += [replace(line, at=at) for line in lines]
        return report, carried, failure is not None

    # --- the pool --------------------------------------------------------------------------------------------

    async def _acquire(
        self,
        destination: outcome.Destination,
        group: outcome.Group,
        carry: outcome.Report,
        alternatives: Sequence[engine.Host] = (),
    ) -> _Pooled | _Last | _Throttled | _PassedOver:
        """An idle pooled connection to the destination, else a new one (its lines go into `carry`).

        When the connection failed: the Connection Error line and the host event are in `carry`, and the
        returned `_Last` describes the failure for the recipients' attempts and their Delayed lines. `_Throttled`:
        every connection slot of the group's destination is taken (`delivery.slots`), nothing was opened.
        `_PassedOver`: a connection to the host is waiting for its first greeting, and one of the `alternatives`
        (the route's next hosts) is free (`engine.before_connecting`): nothing was opened.
        """
        key = destination.host.key
        while True:
            idle = self._pool.get(destination)
            while idle:
                pooled = idle.pop()
                if pooled.session.usable:
                    return pooled
                await self._close(pooled)
            if self._stopping:
                raise _Stopped
            now = time.monotonic()
            choice = engine.before_connecting(
                self._greeting(key, now), [self._greeting(h.key, now) for h in alternatives], down=self.down
            )
            if choice is engine.Opening.PASS:
                return _PASSED
            if choice is engine.Opening.OPEN:
                break
            await self._greeting_news.wait()  # WAIT: the first greeting (or failure) among them decides
        ticket = _Connecting(key)
        self._connecting[key] += 1
        try:
            return await self._connect(destination, group, carry, ticket)
        finally:
            self._settle_greeting(ticket, None)

    def _probes(self, destination: outcome.Destination, alternatives: Sequence[engine.Host]) -> bool:
        """Whether the next connection to the destination is the first to a host nothing is known of
        (`engine.probe_alone`): no idle connection of the pool, none on its way, not seen greeting lately."""
        if any(p.session.usable for p in self._pool.get(destination, ())):
            return False
        now = time.monotonic()
        later = [self._greeting(h.key, now) for h in alternatives]
        return engine.probe_alone(self._greeting(destination.host.key, now), later, down=self.down)

    def _greeting(self, key: hosts.HostKey, now: float) -> engine.Greeting:
        seen, failed = self._greeted.get(key), self._failed.get(key)
        return engine.Greeting(
            self._connecting[key], None if seen is None else now - seen, None if failed is None else now - failed
        )

    def _settle_greeting(self, ticket: _Connecting, greeted: bool | None) -> None:
        """A connection counted in `_connecting` greeted or failed to (`greeted`, `engine.greeted`), or ended
        before either (None: every slot held, or cancelled): it counts out, the first time only, and whoever waits
        for news of a greeting decides again."""
        if greeted is not None:
            (self._greeted if greeted else self._failed)[ticket.key] = time.monotonic()
            (self._failed if greeted else self._greeted).pop(ticket.key, None)
        if not ticket.counted:
            return
        ticket.counted = False
        self._connecting[ticket.key] -= 1
        if self._connecting[ticket.key] <= 0:
            del self._connecting[ticket.key]
        news, self._greeting_news = self._greeting_news, asyncio.Event()
        news.set()

    async def _connect(
        self, destination: outcome.Destination, group: outcome.Group, carry: outcome.Report, ticket: _Connecting
    ) -> _Pooled | _Last | _Throttled:
        """A new connection to the destination, under its destination control's connection slots."""
        slot: Slot | None = None
        gate: _AddressSlots | None = None
        loop = asyncio.get_running_loop()
        if group.limits is not None and group.limits.limit_scope == destinations.SCOPE_IP:
            gate = _AddressSlots(self, group)  # per destination IP: the slot of the address about to be connected
        elif group.limits is not None:
            key = destinations.counting_key(group.limits, group.domain)
            slot = (key, slots.holder(self._token, next(self._slot_names)))
            try:
                taken, lines = await loop.run_in_executor(
                    self._executor, _take_slot, slot, group.limits.max_connections, group.domain
                )
            except Exception:  # the shared counters are gone (Redis down): deliver rather than hold mail forever
                logger.warning("connection limit of %s not applied: the counters are unavailable", key, exc_info=True)
                taken, lines, slot = True, [], None
            if not taken:
                until = timezone.now() + timedelta(seconds=SLOT_RETRY)
                return _Throttled(until, lines, ((key,), group.limits.max_connections))
            if slot is not None:
                self._slots.add(slot)
        try:
            return await self._open_new(destination, group, carry, slot, gate, ticket)
        except BaseException:
            self._free_slot(gate.slot if gate is not None else slot)
            raise

    async def _open_new(
        self,
        destination: outcome.Destination,
        group: outcome.Group,
        carry: outcome.Report,
        slot: Slot | None,
        gate: _AddressSlots | None = None,
        ticket: _Connecting | None = None,
    ) -> _Pooled | _Last | _Throttled:
        """A new connection holding `slot`, the destination's connection slot. With a `gate` (the limit scope per
        destination IP), the slot is taken per address as the session connects, and `_Throttled` says that the
        addresses had their slots held and none connected: nothing was opened, no DCID spent."""
        task = asyncio.current_task()
        assert task is not None
        with self._opening_lock:  # nothing of this group is on the wire: a shutdown may cancel it here
            self._opening[task] = (destination.host.key, time.monotonic())
        try:
            loop = asyncio.get_running_loop()
            session = smtp_client.HostSession(destination, lookup=dns.host_addresses, gate=gate)
            opened = await session.open()
            if ticket is not None:
                self._settle_greeting(ticket, _greeted(opened))
            if gate is not None:
                slot = gate.slot
            if isinstance(opened, smtp_client.Failure) and opened.slots_full:
                assert gate is not None
                self._free_slot(slot)
                return await gate.held_back()
            try:  # once the connection is made or has failed (a host held back for a slot spends none)
                dcid = await loop.run_in_executor(self._executor, _next_dcid)
            except BaseException:
                session.abort()
                raise
        finally:
            with self._opening_lock:
                self._opening.pop(task, None)
        host = destination.host
        if isinstance(opened, smtp_client.Failure):
            ip = opened.peer_ip or host.address
            connected = opened.stage is not engine.Stage.CONNECT  # TCP was up: a connection that opened and ended
            failed = [
                maillog.lines.connection_error(
                    dcid, group.domain, ip, host.port, _details(opened), group.interface, opened.reason
                )
            ]
            if opened.tls_handshake:
                failed.insert(0, maillog.lines.dcid_tls_failed(dcid, opened.text))
            if opened.tls_required:
                failed.append(maillog.lines.tls_required_failed(dcid, ip))
            if connected:
                new = maillog.lines.new_dcid(
                    dcid, group.interface, ip, host.port, domain=group.domain, host=host.address
                )
                why = engine.close_reason(opened.code, timed_out=opened.timed_out, stage=opened.stage)
                failed = [new, *failed, maillog.lines.dcid_close(dcid, why)]
            carry.lines += [_now(line) for line in failed]
            carry.host_events.append(
                outcome.HostEvent(
                    host.address, host.port, ok=False, error=_details(opened), marks_down=opened.marks_host_down
                )
            )
            self._free_slot(slot)
            return _Last(dcid, opened.code, opened.text or opened.reason, host.address, ip, host.port)
        carry.lines.append(
            _now(
                maillog.lines.new_dcid(
                    dcid, group.interface, opened.peer_ip, host.port, domain=group.domain, host=host.address
                )
            )
        )
        if opened.tls_protocol:
            carry.lines.append(_now(maillog.lines.dcid_tls(dcid, opened.tls_protocol, opened.tls_cipher or "")))
        carry.host_events.append(outcome.HostEvent(host.address, host.port, ok=True))
        self._open[_gauge_key(destination)] += 1
        return _Pooled(session, dcid, slot=slot)

    def _free_slot(self, slot: Slot | None) -> None:
        """Give a connection slot back (its connection closed, or never opened); never waits, never raises."""
        if slot is None:
            return
        self._slots.discard(slot)
        future = self._executor.submit(_free_slot, slot)
        future.add_done_callback(_log_slot_error)

    async def _release(self, destination: outcome.Destination, pooled: _Pooled, carry: outcome.Report) -> None:
        if pooled.session.usable and self.idle > 0:
            pooled.idle_since = time.monotonic()
            self._pool.setdefault(destination, []).append(pooled)
            return
        why = pooled.session.close_reason()
        await pooled.session.close()
        self._open[_gauge_key(pooled.session.destination)] -= 1
        self._free_slot(pooled.slot)
        carry.lines.append(_now(maillog.lines.dcid_close(pooled.dcid, why)))

    def _abort(self, pooled: _Pooled, carry: outcome.Report) -> None:
        """Drop a connection whose delivery was cancelled; its close line goes with the group's last report."""
        pooled.session.abort()
        self._open[_gauge_key(pooled.session.destination)] -= 1
        self._free_slot(pooled.slot)
        carry.lines.append(_now(maillog.lines.dcid_close(pooled.dcid, engine.CLOSE_CANCELLED)))

    async def _close(self, pooled: _Pooled) -> None:
        why = pooled.session.close_reason()  # an idle connection the peer closed says so
        await pooled.session.close()
        self._open[_gauge_key(pooled.session.destination)] -= 1
        self._free_slot(pooled.slot)
        loop = asyncio.get_running_loop()
        line = _now(maillog.lines.dcid_close(pooled.dcid, why))
        await loop.run_in_executor(self._executor, _write_lines, [line])

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(max(0.2, min(self.idle, 1.0)))
            now = time.monotonic()
            for destination, idle in list(self._pool.items()):
                keep = [p for p in idle if p.session.usable and now - p.idle_since < self.idle]
                stale = [p for p in idle if p not in keep]
                self._pool[destination] = keep
                for pooled in stale:
                    try:
                        await self._close(pooled)
                    except Exception:
                        logger.exception("closing idle DCID %s", pooled.dcid)
            self._greeted = {k: at for k, at in self._greeted.items() if now - at <= engine.GREETED_RECENTLY}
            self._failed = {k: at for k, at in self._failed.items() if now - at <= self.down}
            await self._give_back_wanted()
            await self._publish()
            await self._refresh_slots()

    async def _give_back_wanted(self) -> None:
        """Close at once the idle pooled connections whose slot another runner waits for (`slots.wanted`)."""
        keys = {p.slot[0] for idle in self._pool.values() for p in idle if p.slot is not None}
        if not keys:
            return
        try:
            wanted = await asyncio.get_running_loop().run_in_executor(self._executor, _wanted, keys)
        except Exception:
            logger.warning("could not read which connection slots are wanted", exc_info=True)
            return
        if not wanted:
            return
        for destination, idle in list(self._pool.items()):
            give = [p for p in idle if p.slot is not None and p.slot[0] in wanted]
            self._pool[destination] = [p for p in idle if p not in give]
            for pooled in give:
                try:
                    await self._close(pooled)
                except Exception:
                    logger.exception("closing idle DCID %s", pooled.dcid)

    async def _refresh_slots(self) -> None:
        """The heartbeat of this process's connection slots (renewed every third of their lease) and of its
        recipient charges still pending (re-stamped: their RCPTs are still on the way)."""
        if time.monotonic() - self._slots_refreshed < slots.SLOT_TTL / 3:
            return
        self._slots_refreshed = time.monotonic()
        held, pending = list(self._slots), list(self._charges)
        if not held and not pending:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, _refresh_slots, held, pending)
        except Exception:
            logger.warning("could not renew this worker's connection slots", exc_info=True)

    async def _publish(self, *, force: bool = False) -> None:
        """Tell the other processes how many connections this one has open (when it changed, or every 5 s)."""
        counts = {key: n for key, n in self._open.items() if n > 0}
        now = time.monotonic()
        if not force and self._published and self._published[1] == counts and now - self._published[0] < 5:
            return
        self._published = (now, counts)
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, hosts.publish_connections, self._token, counts
            )
        except Exception:  # a gauge: never let it stop deliveries
            logger.warning("could not publish the open connections gauge", exc_info=True)

    async def _close_all(self) -> None:
        self._reaper_task.cancel()
        # Batches still running (a shutdown normally drains them first: see worker.shutdown) end here, so their
        # recorder gives their messages back instead of holding the lease until it runs out.
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t is not self._reaper_task]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        pools, self._pool = self._pool, {}
        for idle in pools.values():
            for pooled in idle:
                with contextlib.suppress(Exception):
                    await self._close(pooled)
        self._open.clear()
        await self._publish(force=True)


def _rcpt_line(
    kind: str,
    dcid: int,
    job: outcome.Job,
    r: outcome.Rcpt,
    status: tuple[str, str],
    code: int | None,
    text: str,
    host: str,
) -> maillog.lines.Line:
    """The `Delayed:` or `Bounced:` line of one recipient: its enhanced status (code, phrase) and the reply."""
    return maillog.lines.rcpt_outcome(
        kind, dcid, job.mid, job.sender, r.address, r.rid, *status, code, text, domain=r.domain, host=host
    )


def _gauge_key(destination: outcome.Destination) -> hosts.GaugeKey:
    """What an open connection counts by in the open connections gauge: its host and its recipient domain."""
    return (destination.host.address, destination.host.port, destination.domain)


def _greeted(opened: smtp_client.Connection | smtp_client.Failure) -> bool | None:
    """Whether a new connection saw its host greet; None when it says nothing of the host (our policy refused
    every address, or their connection slots were all held)."""
    if not isinstance(opened, smtp_client.Failure):
        return True
    if opened.refused or opened.slots_full:
        return None
    return engine.greeted(opened.stage, opened.code)


def _details(failure: smtp_client.Failure) -> str:
    if failure.code is not None:
        return f"{failure.code}-{failure.text}"
    return failure.text or failure.reason


def _next_dcid() -> int:
    close_old_connections()
    return ids.next_id("dcid")


def _take_slot(slot: Slot, limit: int, domain: str) -> tuple[bool, list[maillog.lines.Line]]:
    """(a connection slot was taken, the log line of a limit that starts holding `domain` back)."""
    if _try_slot(slot, limit):
        return True, []
    return False, _slots_full([slot[0]], limit, domain)


def _try_slot(slot: Slot, limit: int) -> bool:
    """Take a connection slot of the key if one is free."""
    close_old_connections()
    key, name = slot
    held = slots.acquire(key, name, limit)
    if not held:
        return False
    slots.unwant(key)
    if engine.connection_episode_ends(engine.SlotChange.TAKEN, limit=limit, held=held):
        slots.end_episode(key, slots.CONNECTIONS)  # room left: a new episode may start
    return True


def _slots_full(keys: Sequence[str], limit: int, domain: str) -> list[maillog.lines.Line]:
    """Mail of `domain` waits for a slot of `keys` (each with every slot held): the `Maximum outbound connections`
    line when this starts an episode of one of them (once, whatever the number of keys)."""
    close_old_connections()
    started = False
    for key in keys:
        slots.want(key)  # the other runners' idle connections of the key close and give their slots back
        started = slots.start_episode(key, slots.CONNECTIONS) or started
    return [maillog.lines.max_connections_reached(limit, domain)] if started else []


def _wanted(keys: set[str]) -> set[str]:
    close_old_connections()
    return slots.wanted(keys)


#: Called (on the runner's executor thread) with the counting key of every connection slot given back, when
#: recipients were held back for a slot of it (`slots.take_waiting`): the worker makes them due and rings.
_slot_freed: Callable[[str, list[int]], None] | None = None


def on_slot_freed(callback: Callable[[str, list[int]], None]) -> None:
    """Register what wakes the recipients held back for a slot of a key when one is given back."""
    global _slot_freed
    _slot_freed = callback


def _free_slot(slot: Slot) -> None:
    """Give a slot back, wake what waits for one of its key, and end the key's episode when nothing waits."""
    close_old_connections()
    key = slot[0]
    slots.release(*slot)
    mids: list[int] = []
    if _slot_freed is not None:
        mids = slots.take_waiting(key)
        if mids:
            _slot_freed(key, mids)
    waiting = bool(mids) or bool(slots.wanted([key]))
    if engine.connection_episode_ends(engine.SlotChange.GIVEN_BACK, waiting=waiting):
        slots.end_episode(key, slots.CONNECTIONS)


def _refresh_slots(held: list[Slot], pending: list[slots.Charge]) -> None:
    close_old_connections()
    slots.refresh(held)
    slots.hold(pending)


def _settle_charge(charge: slots.Charge, kept: int, at: datetime) -> None:
    close_old_connections()
    slots.settle(charge, kept, now=at)


def _log_charge_error(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("could not settle a recipient charge; it counts as reserved", exc_info=future.exception())


def _log_slot_error(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("could not give a connection slot back; it runs out by itself", exc_info=future.exception())


def _take_recipients(
    key: str, wanted: int, limits: destinations.DestinationLimits, domain: str, interface: str
) -> tuple[slots.Charge, datetime | None, list[maillog.lines.Line]]:
    """(the recipients granted, when the rest may go or None when all may, the episode's log lines)."""
    close_old_connections()
    limit, minutes = limits.recipient_limit or 0, limits.recipient_minutes or 1
    charge = slots.reserve(key, wanted, limit=limit, minutes=minutes)
    lines: list[maillog.lines.Line] = []
    if charge.count and slots.end_episode(key, slots.RECIPIENTS):
        lines.append(maillog.lines.recipient_limit_expired(domain, interface))
    if charge.count == wanted:
        return charge, None, lines
    if slots.start_episode(key, slots.RECIPIENTS):
        lines.append(maillog.lines.recipient_limit_throttled(domain, interface))
    return charge, slots.window_frees_at(key, limit=limit, minutes=minutes), lines


def _write_lines(lines: list[maillog.lines.Line]) -> None:
    close_old_connections()
    with transaction.atomic():
        maillog.writer.write(lines, at=timezone.now())


_runner: Runner | None = None
_runner_lock = threading.Lock()


def get_runner() -> Runner:
    """This process's runner, started on first use (after Celery's fork, never before it)."""
    global _runner
    from django.conf import settings

    with _runner_lock:
        if _runner is None or not _runner._thread.is_alive():
            _runner = Runner(idle=settings.ESAROUTES_DELIVERY_IDLE, down=settings.ESAROUTES_HOST_DOWN_INITIAL)
        return _runner


def stop_sending() -> None:
    """This process's runner, if it has one, finishes what is on the wire and starts nothing new (shutdown)."""
    with _runner_lock:
        current = _runner
    if current is not None:
        current.stop_sending()


def shutdown_runner() -> None:
    global _runner
    with _runner_lock:
        if _runner is not None:
            _runner.close()
            _runner = None
