"""Leases and due times: who holds a message, when it is tried next, and kicking a backlog to go now.

A message is delivered by whoever holds its lease (`Message.leased_by/leased_until`, taken with a conditional
UPDATE that works the same on PostgreSQL and SQLite); the lease is renewed while the worker works, so it runs
out only when the worker died, and then the next sweep hands the message to another.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import Q, QuerySet

from delivery import engine
from delivery.models import Message, Recipient
from delivery.outbound import hosts
from routes import matching, snapshot

#: The states of a recipient still to be delivered.
ACTIVE = [Recipient.State.QUEUED, Recipient.State.DELAYED]

#: What the database raises when it is not there (down, restarting, a dropped connection, a deadlock): the
#: reports are fine and are recorded again later, as they are. Anything else is the reports' own fault.
DATABASE_GONE = (OperationalError, InterfaceError)


def new_token() -> str:
    """A lease holder name: which worker, and which batch of it."""
    return f"{settings.ESAROUTES_HOSTNAME}:{os.getpid()}:{uuid.uuid4().hex[:10]}"


def among(column: str, ids: Sequence[int]) -> tuple[str, list[int] | str]:
    """SQL for `column` among `ids`, and its one parameter whatever their number, so the statement's text is the
    same on every call (the driver parses it once): an array on PostgreSQL, a JSON list on SQLite."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s)", list(ids)
    return f"{column} IN (SELECT value FROM json_each(%s))", json.dumps(list(ids))


#: A message's lease is free: nobody holds it, or its holder's time ran out.
_LEASE_FREE = "(leased_until IS NULL OR leased_until <= %s)"


def claim(mids: Iterable[int], *, token: str, now: datetime) -> list[int]:
    """Take the lease of the given queued messages that nobody holds; returns the ones taken.

    One conditional UPDATE ... RETURNING (PostgreSQL; SQLite since 3.35): the compare-and-set and the answer.
    """
    mids = list(mids)
    if not mids:
        return []
    until = now + timedelta(seconds=settings.ESAROUTES_LEASE_SECONDS)
    adapt = connection.ops.adapt_datetimefield_value
    chosen, ids = among("id", mids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE delivery_message SET leased_by = %s, leased_until = %s "
            f"WHERE {chosen} AND state = %s AND {_LEASE_FREE} RETURNING id",
            [token, adapt(until), ids, Message.State.QUEUED.value, adapt(now)],
        )
        return sorted(row[0] for row in cursor.fetchall())


def due(*, now: datetime, limit: int, exclude: Sequence[int] = ()) -> list[int]:
    """Queued messages whose time has come and whose lease is free, oldest due first."""
    at = connection.ops.adapt_datetimefield_value(now)
    params: list[Any] = [Message.State.QUEUED.value, at, at]
    left_out = ""
    if exclude:
        left_out, ids = among("id", exclude)
        params.append(ids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM delivery_message WHERE state = %s AND next_attempt_at <= %s AND {_LEASE_FREE} "
            f"{f'AND NOT ({left_out}) ' if left_out else ''}ORDER BY next_attempt_at, id LIMIT %s",
            [*params, limit],
        )
        return [row[0] for row in cursor.fetchall()]


def suspended_domains() -> frozenset[str]:
    """The destination domains whose deliveries are suspended ("ALL" among them: every domain)."""
    with connection.cursor() as cursor:  # read for every batch: no query built each time
        cursor.execute("SELECT domain FROM delivery_deliverysuspension")
        return frozenset(row[0] for row in cursor.fetchall())


def renew(token: str, *, now: datetime) -> None:
    until = now + timedelta(seconds=settings.ESAROUTES_LEASE_SECONDS)
    Message.objects.filter(leased_by=token).update(leased_until=until)


#: A message's new due time as it goes back: its earliest active recipient not on hold and whose domain is not
#: suspended ("ALL": none is); NULL when there is none.
_RELEASE = (
    "UPDATE delivery_message SET leased_by = '', leased_until = NULL, next_attempt_at = ("
    "SELECT MIN(r.next_attempt_at) FROM delivery_recipient r WHERE r.message_id = delivery_message.id "
    "AND r.state IN (%s, %s) AND NOT r.held AND NOT EXISTS ("
    "SELECT 1 FROM delivery_deliverysuspension s WHERE s.domain = r.domain OR s.domain = %s)) "
    "WHERE leased_by = %s"
)


def release(token: str, *, now: datetime, mids: Iterable[int] | None = None) -> None:
    """Give the batch's messages back (or only `mids` of them): each waits for its earliest active recipient
    not on hold and whose domain is not suspended (none: no due time, so no sweep claims it until
    `releaserecipients` or `resumedel` makes it due). One statement, the suspensions read in it."""
    params: list[Any] = [*(s.value for s in ACTIVE), engine.SUSPEND_ALL, token]
    sql = _RELEASE
    if mids is not None:
        chosen, ids = among("id", list(mids))
        sql += f" AND {chosen}"
        params.append(ids)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def postpone_recipients(pairs: Iterable[tuple[int, int]], *, until: datetime) -> None:
    """Recipients (MID, RID) not tried in this batch (their hosts are not greeting this worker): due at `until`."""
    rids: dict[int, list[int]] = defaultdict(list)
    for mid, rid in pairs:
        rids[mid].append(rid)
    if not rids:
        return
    chosen = Q()
    for mid, some in rids.items():
        chosen |= Q(message_id=mid, rid__in=some)
    Recipient.objects.filter(chosen, state__in=ACTIVE).update(next_attempt_at=until)


def postpone_unfinished(token: str, *, now: datetime) -> None:
    """After a crash of the batch itself (a bug, not a host): do not hammer; try again after the first retry."""
    later = now + timedelta(seconds=60)
    Recipient.objects.filter(message__leased_by=token, state__in=ACTIVE, next_attempt_at__lte=now).update(
        next_attempt_at=later
    )


# --- kicking: send now, not at the retry time ---------------------------------------------------------------


def make_due(recipients: QuerySet[Recipient], now: datetime) -> list[int]:
    """Make active recipients (and their messages) due now; returns the MIDs."""
    rows = recipients.filter(state__in=ACTIVE)
    mids = sorted(set(rows.values_list("message_id", flat=True)))
    if not mids:
        return []
    rows.update(next_attempt_at=now)
    Message.objects.filter(pk__in=mids, state=Message.State.QUEUED).update(next_attempt_at=now)
    return mids


def _route_domains_q(keys: Iterable[hosts.HostKey], table: matching.RouteTable) -> Q:
    """Recipients whose route sends them to one of the hosts `keys`, or who last failed on one of them."""
    keys = set(keys)
    q = Q(last_host__in={h for h, _ in keys})
    for entry in table.entries():
        if not any((h.host, h.port) in keys for h in entry.hosts):
            continue
        if entry.domain == "ALL":
            return Q()  # the default route: every queued recipient may be waiting for it
        if entry.domain.startswith("."):
            q |= Q(domain__endswith=entry.domain)
        else:
            q |= Q(domain=entry.domain)
    return q


def kick_hosts(keys: Iterable[hosts.HostKey], now: datetime) -> list[int]:
    """A host came back: its routes' backlog goes now, not at its retry times (the sweep sends it)."""
    return make_due(Recipient.objects.filter(_route_domains_q(keys, snapshot.current_table())), now)
