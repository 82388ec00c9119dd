"""Recording outcomes: delivery reports become recipient states, attempt rows, mail-log lines and host health.

`record()` applies reports in one transaction: a recipient moves to delivered / bounced / dropped, or to
delayed with its retry time from its bounce profile; a message with no active recipient left is finished; a
hard bounce generates a DSN to the envelope sender (a new message, accepted through `intake`), and a delay may
generate a delay warning (`engine.delay_warning_due`, the bounce profile's "Send Delay Warning Messages"); a host that
came back has its routes' backlog made due. `record_safely()` and `record_apart()` make sure a report that
cannot be recorded as it is (a reply no database takes) still records who was delivered, so it is never sent
again.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from delivery import dsn, engine, maillog, outcome
from delivery.models import BounceProfile, DeliveryAttempt, Message, MessageBody, Recipient
from delivery.outbound import hosts, smtp_client
from delivery.spool import intake, lease, plan
from delivery.webhooks import events as webhook_events
from esaroutes import bulk
from routes import matching, snapshot

logger = logging.getLogger(__name__)


def _retry_at(
    recipient: Recipient,
    table: matching.RouteTable,
    profiles: dict[int | None, BounceProfile],
    now: datetime,
    sender: str | None = None,
) -> datetime:
    profile = plan.profile_of(table, recipient.domain, profiles, sender)
    wait = engine.retry_delay(
        recipient.attempts, timedelta(seconds=profile.initial_retry), timedelta(seconds=profile.max_retry_timeout)
    )
    return now + wait


def record(
    reports: Sequence[outcome.Report],
    *,
    now: datetime | None = None,
    release: Mapping[str, Collection[int]] | None = None,
) -> list[int]:
    """Apply reports in one transaction. Returns the MIDs of bounce messages generated (to ring for delivery).

    A final for a recipient that is no longer active (an operator bounced or deleted it meanwhile) is ignored;
    its attempt and log lines are kept, since they happened.

    `release` (lease token -> MIDs): messages whose recipients are all through, given back in the same
    transaction (`lease.release`). A message this recording finished has no lease left: only the others are
    released, so a batch whose messages all finish pays no statement for it.
    """
    now = now or timezone.now()
    finals = [f for r in reports for f in r.finals]
    attempts = [a for r in reports for a in r.attempts]
    lines = [line for r in reports for line in r.lines]
    events = [e for r in reports for e in r.host_events]
    mids = {f.mid for f in finals} | {a.mid for a in attempts}
    came_back: set[hosts.HostKey] = set()
    generated: list[int] = []
    with transaction.atomic():
        # every recipient of the messages concerned: the outcome's rows, and whether a message is now done
        by_key = {(row.message_id, row.rid): row for row in _locked_recipients(mids)} if mids else {}
        table = snapshot.current_table()
        profiles = plan.bounce_profiles()
        senders: dict[int, str] = {}  # a sender route's bounce profile decides the retry: the planner's lookup
        if table.by_sender and mids:
            senders = dict(Message.objects.filter(pk__in=mids).values_list("pk", "sender"))
        changed: list[Recipient] = []
        hooked: list[webhook_events.Change] = []
        bounced: dict[int, list[tuple[Recipient, outcome.Final]]] = defaultdict(list)
        delayed: dict[int, list[tuple[Recipient, outcome.Final]]] = defaultdict(list)  # for delay warnings
        for f in finals:
            r = by_key.get((f.mid, f.rid))
            if r is None or r.state not in lease.ACTIVE:
                continue
            if f.state == outcome.THROTTLED:  # held back by a destination limit: not an attempt, same state
                r.next_attempt_at = f.until
                changed.append(r)
                continue
            r.attempts += int(f.attempt)
            r.last_code, r.last_response, r.last_host = f.code, f.text[:4000], f.host[:300]
            r.dsn_status = f.dsn_status[:16]
            r.state = f.state
            if f.state == Recipient.State.DELAYED:
                r.next_attempt_at = _retry_at(r, table, profiles, now, senders.get(r.message_id))
                if f.attempt:
                    delayed[f.mid].append((r, f))
            else:
                r.next_attempt_at = None
                r.finished_at = now
                if f.state == Recipient.State.BOUNCED:
                    bounced[f.mid].append((r, f))
            changed.append(r)
            hooked.append(
                webhook_events.Change(
                    f.mid, f.rid, r.address, r.domain, f.state, f.code, f.text, f.host, f.dsn_status, r.attempts
                )
            )
        _update_recipients(changed)
        webhook_events.write(hooked, now)  # the events' rows, with the states they tell (no HTTP here)
        at = connection.ops.adapt_datetimefield_value(now)
        _ATTEMPTS.run(
            [
                (
                    by_key[(a.mid, a.rid)].pk,
                    a.mid,
                    a.dcid,
                    at,
                    a.host[:255],
                    a.ip[:64],
                    a.port,
                    a.code if a.code is not None and 0 <= a.code < 1000 else None,
                    a.response[:4000],
                    str(a.outcome),
                )
                for a in attempts
                if (a.mid, a.rid) in by_key
            ]
        )
        healthy, events = hosts.split_healthy(events)
        came_back = hosts.apply_events(events, now)
        if healthy:
            transaction.on_commit(functools.partial(_count_healthy, healthy, now), robust=True)
        still_active = {mid for (mid, _), r in by_key.items() if r.state in lease.ACTIVE}
        finished = finish_messages(mids - still_active, now)
        for token, back in (release or {}).items():
            rest = set(back) - {line.mid for line in finished}
            if rest:
                lease.release(token, now=now, mids=rest)
        lines = _after_their_story(lines, finished)
        maillog.writer.write(lines, at=now)
        generated = _generate_bounces(bounced, profiles, table, now)
        generated += _generate_delay_warnings(delayed, profiles, table, now)
        if came_back:
            lease.kick_hosts(came_back, now)
    return generated


_RECIPIENT_FIELDS = list(Recipient._meta.concrete_fields)
_DATETIMES = [i for i, f in enumerate(_RECIPIENT_FIELDS) if f.get_internal_type() == "DateTimeField"]


def _locked_recipients(mids: Collection[int]) -> list[Recipient]:
    """Every recipient of these messages, locked for the transaction (on SQLite its IMMEDIATE transaction holds
    the one write lock already), in (message, rid) order as every locker takes them: one statement written
    once, where the ORM built its query for every recording."""
    chosen, ids = lease.among("message_id", sorted(mids))
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    columns = ", ".join(f.column for f in _RECIPIENT_FIELDS)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM delivery_recipient WHERE {chosen} ORDER BY message_id, rid{lock}", [ids])
        rows = cursor.fetchall()
    names = [f.attname for f in _RECIPIENT_FIELDS]
    out: list[Recipient] = []
    for row in rows:
        values = list(row)
        for i in _DATETIMES:  # naive from SQLite's driver: stored in UTC
            if values[i] is not None and values[i].tzinfo is None:
                values[i] = values[i].replace(tzinfo=UTC)
        out.append(Recipient.from_db(connection.alias, names, values))
    return out


def _after_their_story(lines: list[maillog.lines.Line], finished: list[maillog.lines.Line]) -> list[maillog.lines.Line]:
    """Each `Message finished` right after its message's last line, at that line's time: the message finished
    when its last outcome was known, not when the commit happened (a connection's close may come between)."""
    if not finished:
        return lines
    last = {line.mid: i for i, line in enumerate(lines) if line.mid is not None}
    after: dict[int, list[maillog.lines.Line]] = defaultdict(list)
    out = list(lines)
    tail: list[maillog.lines.Line] = []
    for line in finished:
        i = last.get(line.mid) if line.mid is not None else None
        if i is None:
            tail.append(line)
        else:
            after[i].append(replace(line, at=lines[i].at))
    for i in sorted(after, reverse=True):
        out[i + 1 : i + 1] = after[i]
    return out + tail


def record_safely(reports: Sequence[outcome.Report], *, now: datetime | None = None) -> list[int]:
    """record(), and when that fails for a reason of the reports' own (not DATABASE_GONE), record_apart()."""
    try:
        return record(reports, now=now)
    except lease.DATABASE_GONE:
        raise
    except Exception:
        logger.warning("recording %s delivery reports failed; recording them one by one", len(reports), exc_info=True)
        return record_apart(reports, now=now)


def record_apart(reports: Sequence[outcome.Report], *, now: datetime | None = None) -> list[int]:
    """Record reports one at a time, after recording them together failed for a reason that is not the database's.

    A report that fails alone is recorded again with its texts made safe (safe_report()), then, if that fails
    too, reduced to its essential facts (essential_report()), with an application-log error: what a peer
    accepted is recorded as delivered, so it is never sent again, whatever else came with it. Raises
    DATABASE_GONE errors as they come, and whatever recording the essential facts raises.
    """
    generated: list[int] = []
    for report in reports:
        try:
            generated += record([report], now=now)
            continue
        except lease.DATABASE_GONE:
            raise
        except Exception:
            logger.warning("recording a delivery report failed; recording it with safe texts", exc_info=True)
        try:
            generated += record([safe_report(report)], now=now)
            continue
        except lease.DATABASE_GONE:
            raise
        except Exception as exc:
            logger.exception(
                "recording a delivery report of MID %s failed even with safe texts; recording only its essential facts",
                ", ".join(str(mid) for mid in sorted({f.mid for f in report.finals})) or "-",
            )
            reduced = essential_report(report, exc)
        generated += record([reduced], now=now)
    return generated


def safe_report(report: outcome.Report) -> outcome.Report:
    """The report with every text made safe for any database (smtp_client.safe_text: no NUL, no undecodable
    byte, no control character, capped)."""
    safe = smtp_client.safe_text
    return outcome.Report(
        finals=[
            replace(f, text=safe(f.text), host=safe(f.host, 300), dsn_status=safe(f.dsn_status, 16))
            for f in report.finals
        ],
        attempts=[
            replace(a, host=safe(a.host, 255), ip=safe(a.ip, 64), response=safe(a.response)) for a in report.attempts
        ],
        lines=[
            replace(
                line,
                text=safe(line.text, 4 * smtp_client.TEXT_LIMIT),
                domain=safe(line.domain, 255),
                host=safe(line.host, 255),
            )
            for line in report.lines
        ],
        host_events=[replace(e, host=safe(e.host, 255), error=safe(e.error)) for e in report.host_events],
        journal=report.journal,
    )


_KEPT_STATES = (Recipient.State.DELIVERED, Recipient.State.DROPPED)


def essential_report(report: outcome.Report, error: BaseException) -> outcome.Report:
    """What must never be lost of a report that cannot be recorded as it is: who was delivered (or dropped).

    Everyone else is delayed (retried later; a bounce is not made from a report whose texts cannot be read),
    the attempts keep their codes and outcomes but no text, host events are left out, and the log keeps its
    Delivery start / Message done lines plus one Warning line per message saying what happened.
    """
    why = f"reply not recorded: recording failed ({type(error).__name__}), see the application log"
    finals = [
        replace(
            f,
            state=f.state if f.state in _KEPT_STATES else Recipient.State.DELAYED,
            text="" if f.state in _KEPT_STATES else why,
            host=smtp_client.safe_text(f.host, 300),
            dsn_status="",
        )
        for f in report.finals
    ]
    attempts = [replace(a, host=smtp_client.safe_text(a.host, 255), ip="", response=why) for a in report.attempts]
    lines = [
        replace(line, text=smtp_client.safe_text(line.text), domain="", host="")
        for line in report.lines
        if line.text.startswith(("Delivery start DCID ", "Message done DCID "))
    ]
    lines += [
        maillog.lines.recorded_without_details(mid, type(error).__name__) for mid in sorted({f.mid for f in finals})
    ]
    return outcome.Report(finals=finals, attempts=attempts, lines=lines, journal=report.journal)


def _count_healthy(events: list[outcome.HostEvent], now: datetime) -> None:
    came_back = hosts.count_healthy(events, now)
    if came_back:
        with transaction.atomic():
            lease.kick_hosts(came_back, now)


_ATTEMPTS = bulk.BulkInsert(
    DeliveryAttempt, ("recipient_id", "message_id", "dcid", "at", "host", "ip", "port", "code", "response", "outcome")
)

_RECIPIENT_UPDATE = (
    "UPDATE delivery_recipient SET attempts = %s, last_code = %s, last_response = %s, last_host = %s, "
    "dsn_status = %s, state = %s, next_attempt_at = %s, finished_at = %s WHERE id = %s"
)


def _update_recipients(rows: Sequence[Recipient]) -> None:
    """Save recipients' outcome columns: one prepared UPDATE run for every row (pipelined by psycopg).

    `bulk_update()` builds a CASE WHEN per column and row, which cost a fifth of a worker's CPU at full load.
    """
    if not rows:
        return
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.executemany(
            _RECIPIENT_UPDATE,
            [
                (
                    r.attempts,
                    r.last_code,
                    r.last_response,
                    r.last_host,
                    r.dsn_status,
                    r.state,
                    adapt(r.next_attempt_at),
                    adapt(r.finished_at),
                    r.pk,
                )
                for r in rows
            ],
        )


def finish_messages(mids: Iterable[int], now: datetime, *, checked: bool = True) -> list[maillog.lines.Line]:
    """Messages with no active recipient left are done: `Message finished MID n done`.

    `checked`: the caller knows these messages have no active recipient left (it holds their rows locked).
    """
    mids = set(mids)
    if mids and not checked:
        mids -= set(
            Recipient.objects.filter(message_id__in=mids, state__in=lease.ACTIVE).values_list("message_id", flat=True)
        )
    if not mids:
        return []
    chosen, ids = lease.among("id", sorted(mids))
    with connection.cursor() as cursor:  # one UPDATE ... RETURNING: which were still queued, and done now
        cursor.execute(
            "UPDATE delivery_message SET state = %s, finished_at = %s, next_attempt_at = NULL, leased_by = '', "
            f"leased_until = NULL WHERE {chosen} AND state = %s RETURNING id",
            [
                Message.State.DONE.value,
                connection.ops.adapt_datetimefield_value(now),
                ids,
                Message.State.QUEUED.value,
            ],
        )
        done = sorted(row[0] for row in cursor.fetchall())
    return [maillog.lines.message_finished(mid) for mid in done]


def _reported(pairs: list[tuple[Recipient, outcome.Final]], now: datetime) -> list[dsn.BouncedRecipient]:
    """The recipients as a DSN reports them (a bounce's or a delay warning's): status, reply, host."""
    return [
        dsn.BouncedRecipient(
            address=r.address,
            status=f.dsn_status or engine.enhanced_status(f.code, f.text)[0],
            diagnostic=f"{f.code} {f.text}" if f.code is not None else f.text,
            remote_mta=f.host,
            last_attempt=now,
        )
        for r, f in pairs
    ]


def _notice(
    message: Message,
    original: bytes,
    pairs: list[tuple[Recipient, outcome.Final]],
    now: datetime,
    subject: str,
    will_retry_until: datetime | None = None,
) -> intake.Incoming:
    """The DSN (a bounce, or with `will_retry_until` a delay warning) to `message`'s envelope sender, from `<>`."""
    data = dsn.build_dsn(
        original=original,
        sender=message.sender,
        recipients=_reported(pairs, now),
        reporting_mta=settings.ESAROUTES_DELIVERY_EHLO,
        arrival=message.received_at,
        now=now,
        mid=message.pk,
        will_retry_until=will_retry_until,
    )
    sender_domain = matching.recipient_domain(message.sender) or ""
    return intake.Incoming(icid=0, sender="", recipients=((message.sender, sender_domain),), data=data, subject=subject)


def _generate_bounces(
    bounced: dict[int, list[tuple[Recipient, outcome.Final]]],
    profiles: dict[int | None, BounceProfile],
    table: matching.RouteTable,
    now: datetime,
) -> list[int]:
    """A DSN to the envelope sender for each message with hard-bounced recipients (never for `<>`)."""
    if not bounced:
        return []
    messages = {m.pk: m for m in Message.objects.filter(pk__in=bounced)}
    bodies = dict(MessageBody.objects.filter(message_id__in=bounced).values_list("message_id", "data"))
    incoming: list[intake.Incoming] = []
    origins: list[int] = []
    for mid, pairs in bounced.items():
        message = messages.get(mid)
        if message is None or not dsn.should_bounce(message.sender):
            continue
        if not any(plan.profile_of(table, r.domain, profiles, message.sender).send_bounces for r, _ in pairs):
            continue
        original = bytes(bodies.get(mid, b""))
        incoming.append(_notice(message, original, pairs, now, "Delivery Status Notification (Failure)"))
        origins.append(mid)
    new_mids = _queue_notices(maillog.lines.BOUNCE, incoming, origins, now)
    for new_mid, mid in zip(new_mids, origins, strict=True):
        Message.objects.filter(pk=new_mid).update(bounce_of_id=mid)
    return new_mids


def _generate_delay_warnings(
    delayed: dict[int, list[tuple[Recipient, outcome.Final]]],
    profiles: dict[int | None, BounceProfile],
    table: matching.RouteTable,
    now: datetime,
) -> list[int]:
    """A delay warning (RFC 3464, `Action: delayed`) to the envelope sender of each message whose delayed
    recipients' bounce profile sends them, when `engine.delay_warning_due` says one is due now."""
    if not delayed:
        return []
    messages = {m.pk: m for m in Message.objects.filter(pk__in=delayed)}
    incoming: list[intake.Incoming] = []
    origins: list[int] = []
    for mid, pairs in delayed.items():
        message = messages.get(mid)
        if message is None:
            continue
        candidates = (plan.profile_of(table, r.domain, profiles, message.sender) for r, _ in pairs)
        profile = next((p for p in candidates if p.send_warnings), None)
        if profile is None:
            continue
        due = engine.delay_warning_due(
            enabled=profile.send_warnings,
            null_sender=not dsn.should_bounce(message.sender),
            attempts=max(r.attempts for r, _ in pairs),
            sent=message.warnings_sent,
            maximum=profile.warning_max,
            last_sent_at=message.last_warning_at,
            interval=timedelta(seconds=profile.warning_interval),
            now=now,
        )
        # compare-and-set on the count: a warning is counted, and sent, once whoever records the message
        if not due or not Message.objects.filter(pk=mid, warnings_sent=message.warnings_sent).update(
            warnings_sent=F("warnings_sent") + 1, last_warning_at=now
        ):
            continue
        body = MessageBody.objects.filter(message_id=mid).values_list("data", flat=True).first()
        until = message.received_at + timedelta(seconds=profile.max_queue_lifetime)
        incoming.append(_notice(message, bytes(body or b""), pairs, now, dsn.DELAY_SUBJECT, will_retry_until=until))
        origins.append(mid)
    return _queue_notices(maillog.lines.DELAY_WARNING, incoming, origins, now)


def _queue_notices(kind: str, notices: list[intake.Incoming], origins: list[int], now: datetime) -> list[int]:
    """Queue the DSNs (`kind`: BOUNCE or DELAY_WARNING, `maillog.lines`) to the senders of the MIDs `origins`, each
    logged as `MID n was generated for ... of MID m`; return their MIDs."""
    if not notices:
        return []
    new_mids = intake.accept_many(notices, now=now)
    maillog.writer.write([maillog.lines.generated(kind, n, m) for n, m in zip(new_mids, origins, strict=True)], at=now)
    return new_mids
