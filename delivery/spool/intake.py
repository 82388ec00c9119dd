"""Durable acceptance: the sync functions the listener runs in its worker threads, one transaction each.

`accept()` stores a message, its body, its recipients (RID 0, 1, ...) and every inbound mail-log line of the
message in one transaction; the listener answers `250` only after it returns, and `451 4.3.0` if it raises, in
which case the transaction was rolled back and nothing of the message remains. After commit the delivery
doorbell is rung (`delivery.tasks.deliver` with the MIDs) from a background thread, so neither a slow nor a dead
broker delays a `250`: the beat sweep sends whatever is due, so a lost doorbell costs a delay, never a message.

Connection lines (`New SMTP ICID`, the `RELAY`/`ACCEPT` policy line, TLS, `Rejected by RAT`) are buffered by the
listener and written in the transaction of the connection's next message, or with `ICID n close` in one of the
listener's next group commits when the connection ends (within its `commit.LINGER`): no transaction of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from delivery import ids, maillog
from delivery.models import Message, MessageBody, Recipient
from delivery.spool import doorbell
from esaroutes import bulk


@dataclass(frozen=True)
class Incoming:
    """One message as the listener received it. `sender` is "" for the null sender `<>`."""

    icid: int
    sender: str
    recipients: tuple[tuple[str, str], ...]  # (address, stored-form domain)
    data: bytes
    client_address: str | None = None
    client_helo: str = ""
    auth_user: str = ""
    message_id: str = ""
    subject: str = ""
    pending_lines: tuple[maillog.lines.Line, ...] = ()  # the connection's buffered lines, written first


def accept(incoming: Incoming, *, now: datetime | None = None) -> int:
    """Store one message and its log lines in one transaction; return its MID. Raises on any failure."""
    return accept_many([incoming], now=now)[0]


def accept_many(
    incomings: Sequence[Incoming], lines: Sequence[maillog.lines.Line] = (), *, now: datetime | None = None
) -> list[int]:
    """Store several messages (and loose connection lines) in ONE transaction: the listener's group commit.

    All or nothing: on any failure nothing of any of them remains and the exception propagates. The MIDs come
    back in order. On PostgreSQL the MIDs are taken from the sequence first, then the messages, bodies,
    recipients and log lines go in one statement (`bulk.insert_together`): two round trips whatever the batch
    size. On SQLite one multi-row INSERT per table (messages with RETURNING id) in one transaction.
    """
    now = now or timezone.now()
    at = connection.ops.adapt_datetimefield_value(now)
    messages = [
        (
            inc.icid,
            inc.sender,
            inc.client_address,
            inc.client_helo[:255],
            inc.auth_user[:150],
            inc.message_id[:998],
            inc.subject,
            len(inc.data),
            at,
            at,
        )
        for inc in incomings
    ]
    if connection.vendor == "postgresql":
        mids = _MESSAGES_BY_ID.new_ids(len(incomings)) if incomings else []
        out = _log_lines(mids, incomings, lines)
        bulk.insert_together(
            (_MESSAGES_BY_ID, [(mid, *row) for mid, row in zip(mids, messages, strict=True)]),
            *_rows(mids, incomings, at),
            (maillog.writer.line_insert(), maillog.writer.line_rows(out, at=now)),
        )
        maillog.writer.append_on_commit(out, at=now)  # now, unless in a caller's transaction: then at its commit
        transaction.on_commit(lambda: doorbell.ring_many(mids))
        return mids
    with transaction.atomic():
        mids = _MESSAGES.run(messages)
        if len(mids) != len(incomings):  # pragma: no cover - RETURNING gives one id per row
            raise RuntimeError(f"{len(incomings)} messages inserted, {len(mids)} ids returned")
        for insert, rows in _rows(mids, incomings, at):
            insert.run(rows)
        maillog.writer.write(_log_lines(mids, incomings, lines), at=now)
        transaction.on_commit(lambda: doorbell.ring_many(mids))
    return mids


def _rows(
    mids: Sequence[int], incomings: Sequence[Incoming], at: object
) -> tuple[tuple[bulk.BulkInsert, list[tuple[object, ...]]], ...]:
    """The bodies' and the recipients' rows of the messages MIDs."""
    return (
        (_BODIES, [(mid, inc.data) for mid, inc in zip(mids, incomings, strict=True)]),
        (
            _RECIPIENTS,
            [
                (mid, rid, address, domain[:255], at)
                for mid, inc in zip(mids, incomings, strict=True)
                for rid, (address, domain) in enumerate(inc.recipients)
            ],
        ),
    )


def _log_lines(
    mids: Sequence[int], incomings: Sequence[Incoming], lines: Sequence[maillog.lines.Line]
) -> list[maillog.lines.Line]:
    out = list(lines)
    for mid, inc in zip(mids, incomings, strict=True):
        out += message_lines(mid, inc)
    return out


_MESSAGES = bulk.BulkInsert(
    Message,
    (
        "icid",
        "sender",
        "client_address",
        "client_helo",
        "auth_user",
        "message_id",
        "subject",
        "size",
        "received_at",
        "next_attempt_at",
    ),
    fixed={"state": Message.State.QUEUED},
    returning=True,
)
_MESSAGES_BY_ID = bulk.BulkInsert(
    Message, ("id", *_MESSAGES.given), fixed={"state": Message.State.QUEUED}
)  # PostgreSQL: MIDs taken first (`new_ids`), all the rows in one statement
_BODIES = bulk.BulkInsert(MessageBody, ("message_id", "data"))
_RECIPIENTS = bulk.BulkInsert(
    Recipient, ("message_id", "rid", "address", "domain", "next_attempt_at"), fixed={"state": Recipient.State.QUEUED}
)


def message_lines(mid: int, inc: Incoming) -> list[maillog.lines.Line]:
    """The connection's buffered lines, then the message's: Start MID ... queued for delivery."""
    icid = inc.icid
    lines = [
        *inc.pending_lines,
        maillog.lines.start_mid(mid, icid),
        maillog.lines.mid_from(mid, icid, inc.sender),
        *(
            maillog.lines.mid_to(mid, icid, rid, address, domain)
            for rid, (address, domain) in enumerate(inc.recipients)
        ),
    ]
    if inc.message_id:
        lines.append(maillog.lines.message_id(mid, inc.message_id))
    if inc.subject:
        lines.append(maillog.lines.subject(mid, inc.subject))
    lines += [maillog.lines.ready(mid, len(inc.data), inc.sender), maillog.lines.queued(mid)]
    return lines


def new_icid() -> int:
    return ids.next_id("icid")


def reserve_icids(n: int) -> list[int]:
    """N fresh ICIDs in one statement, for a listener to hand out without a database call per connection.

    Unique across every process (the same sequence or counter row as `ids.next_id`); ICIDs reserved by a process
    that stops are never used, a gap like a rolled-back sequence value.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT nextval('esaroutes_icid_seq') FROM generate_series(1, %s)", [n])
            return sorted(int(row[0]) for row in cursor.fetchall())
        cursor.execute("UPDATE delivery_idcounter SET value = value + %s WHERE name = 'icid' RETURNING value", [n])
        row = cursor.fetchone()
    if row is None:  # pragma: no cover - the migration creates the counter
        raise RuntimeError("the icid counter is missing: run manage.py migrate")
    return list(range(int(row[0]) - n + 1, int(row[0]) + 1))


def stamp(line: maillog.lines.Line, at: datetime | None = None) -> maillog.lines.Line:
    """The line with its event time fixed now, for lines buffered until a later transaction."""
    return replace(line, at=at or timezone.now())


def close_connection() -> None:
    """Close this thread's database connection (worker threads at shutdown, and after a database error)."""
    connection.close()
