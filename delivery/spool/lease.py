"""Leases and due times: who holds a message, when it is tried next, and kicking a backlog to go now.

A message is delivered by whoever holds its lease (`Message.leased_by/leased_until`, taken with a conditional
UPDATE that works the same on PostgreSQL and SQLite); the lease is renewed while the worker works, so it runs
out only when the worker died, and then the next sweep hands the message to another.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import Min, OuterRef, Q, QuerySet, Subquery

from delivery import engine
from delivery.models import DeliverySuspension, Message, Recipient
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


def _lease_free(now: datetime) -> Q:
    return Q(leased_until__isnull=True) | Q(leased_until__lte=now)


def claim(mids: Iterable[int], *, token: str, now: datetime) -> list[int]:
    """Take the lease of the given queued messages that nobody holds; returns the ones taken."""
    mids = list(mids)
    if not mids:
        return []
    until = now + timedelta(seconds=settings.ESAROUTES_LEASE_SECONDS)
    Message.objects.filter(pk__in=mids, state=Message.State.QUEUED).filter(_lease_free(now)).update(
        leased_by=token, leased_until=until
    )
    return list(Message.objects.filter(pk__in=mids, leased_by=token).values_list("pk", flat=True))


def due(*, now: datetime, limit: int, exclude: Sequence[int] = ()) -> list[int]:
    """Queued messages whose time has come and whose lease is free, oldest due first."""
    qs = Message.objects.filter(state=Message.State.QUEUED, next_attempt_at__lte=now).filter(_lease_free(now))
    if exclude:
        qs = qs.exclude(pk__in=exclude)
    return list(qs.order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:limit])


def suspended_domains() -> frozenset[str]:
    """The destination domains whose deliveries are suspended ("ALL" among them: every domain)."""
    return frozenset(DeliverySuspension.objects.values_list("domain", flat=True))


def renew(token: str, *, now: datetime) -> None:
    until = now + timedelta(seconds=settings.ESAROUTES_LEASE_SECONDS)
    Message.objects.filter(leased_by=token).update(leased_until=until)


def release(token: str, *, now: datetime, mids: Iterable[int] | None = None) -> None:
    """Give the batch's messages back (or only `mids` of them): each waits for its earliest active recipient
    not on hold and whose domain is not suspended (none: no due time, so no sweep claims it until
    `releaserecipients` or `resumedel` makes it due)."""
    suspended = suspended_domains()
    due_rows = Recipient.objects.filter(message=OuterRef("pk"), state__in=ACTIVE, held=False)
    if suspended:
        due_rows = due_rows.exclude(domain__in=suspended)  # they wait for resumedel, not for a time
    earliest = due_rows.order_by().values("message").annotate(m=Min("next_attempt_at")).values("m")[:1]
    held = Message.objects.filter(leased_by=token)
    if mids is not None:
        held = held.filter(pk__in=list(mids))
    # (an empty queryset in the subquery would make Django skip the whole UPDATE: ALL is spelled out)
    due_at = None if engine.SUSPEND_ALL in suspended else Subquery(earliest)
    held.update(leased_by="", leased_until=None, next_attempt_at=due_at)


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
