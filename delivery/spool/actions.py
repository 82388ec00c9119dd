"""The operator's actions on the queue: deliver now, bounce or delete recipients, hold and release them, mark a
host up, suspend and resume the deliveries to a domain.

These are the only code the pages, the admin and the commands call to change the queue; each is one
transaction, logged the way the ESA logs it and recorded in the audit log, and rings the doorbell for what it
made due once it commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from delivery import engine, maillog, outcome
from delivery.models import DeliverySuspension, Recipient
from delivery.outbound import hosts
from delivery.spool import doorbell, lease, plan, record
from delivery.webhooks import events as webhook_events
from routes import audit


def _ring(mids: Sequence[int]) -> None:
    if mids:
        doorbell.ring_many(mids)


def deliver_now(
    *, actor: audit.Actor, now: datetime | None = None, domain: str | None = None, mid: int | None = None
) -> int:
    """The ESA's `delivernow`: one message, one domain, or (neither given) everything queued. Returns MIDs kicked."""
    now = now or timezone.now()
    qs = Recipient.objects.all()
    if mid is not None:
        qs = qs.filter(message_id=mid)
    if domain is not None:
        qs = qs.filter(domain=domain)
    what = f"Deliver now MID {mid}" if mid is not None else f"Deliver now {domain or 'all domains'}"
    with transaction.atomic():
        mids = lease.make_due(qs, now)
        maillog.writer.write([maillog.lines.kicking(domain or (f"MID {mid}" if mid is not None else "ALL"))], at=now)
        audit.record_action(actor, "queue", what, {"messages": len(mids), "mids": _listed(mids)})
        transaction.on_commit(lambda: _ring(mids[:1000]))
    return len(mids)


AUDITED_MIDS = 100  # MIDs an audit entry of a queue action lists (the count is always whole)


def _listed(mids: Iterable[int]) -> list[int]:
    return sorted(set(mids))[:AUDITED_MIDS]


def _recipients(n: int) -> str:
    return f"{n} recipient{'s' if n != 1 else ''}"


def select_recipients(
    *,
    mids: Iterable[int] | None = None,
    domain: str | None = None,
    sender: str | None = None,
    recipient_ids: Iterable[int] | None = None,
    everything: bool = False,
) -> QuerySet[Recipient]:
    """Active recipients chosen the ways `bouncerecipients`/`deleterecipients` choose them. Nothing unless asked."""
    qs = Recipient.objects.filter(state__in=lease.ACTIVE)
    if mids is not None:
        qs = qs.filter(message_id__in=list(mids))
    if domain is not None:
        qs = qs.filter(domain=domain)
    if sender is not None:
        qs = qs.filter(message__sender=sender)
    if recipient_ids is not None:
        qs = qs.filter(pk__in=list(recipient_ids))
    if mids is None and domain is None and sender is None and recipient_ids is None and not everything:
        return qs.none()
    return qs


def _actor_name(actor: audit.Actor) -> str:
    return actor if isinstance(actor, str) else getattr(actor, "username", "") or "anonymous"


def bounce_recipients(recipients: QuerySet[Recipient], *, actor: audit.Actor, now: datetime | None = None) -> int:
    """Hard-bounce active recipients now (a DSN goes to each sender). Returns how many."""
    now = now or timezone.now()
    text = f"5.0.0 Bounced by the administrator ({_actor_name(actor)})"
    with transaction.atomic():
        rows = list(recipients.filter(state__in=lease.ACTIVE).select_related("message").select_for_update(of=("self",)))
        report = outcome.Report()
        for r in rows:
            plan.local_final(
                report,
                mid=r.message_id,
                sender=r.message.sender,
                rcpt=outcome.Rcpt(r.rid, r.address, r.domain),
                state=Recipient.State.BOUNCED,
                text=text,
            )
        record.record([report], now=now)  # the bounces it generates ring the doorbell when they commit
        audit.record_action(
            actor,
            "queue",
            f"Bounce {_recipients(len(rows))}",
            {"recipients": len(rows), "mids": _listed(r.message_id for r in rows)},
        )
    return len(rows)


def delete_recipients(recipients: QuerySet[Recipient], *, actor: audit.Actor, now: datetime | None = None) -> int:
    """Delete active recipients from the queue, silently (no DSN), as `deleterecipients` does."""
    now = now or timezone.now()
    with transaction.atomic():
        chosen = _lock(recipients.filter(state__in=lease.ACTIVE))
        chosen.rows.update(state=Recipient.State.DELETED, finished_at=now, next_attempt_at=None)
        lines = [maillog.lines.deleted(mid, rids) for mid, rids in chosen.by_mid.items()]
        lines += record.finish_messages(chosen.by_mid, now, checked=False)
        maillog.writer.write(lines, at=now)
        _audit(actor, f"Delete {_recipients(len(chosen.pks))}", chosen)
    return len(chosen.pks)


def hold_recipients(recipients: QuerySet[Recipient], *, actor: audit.Actor, now: datetime | None = None) -> int:
    """Put active recipients on hold, as Postfix's hold queue (`postsuper -h`): they stay queued, are never tried
    and never expire, until `release_recipients`. Returns how many were put on hold (not those already held)."""
    now = now or timezone.now()
    name = _actor_name(actor)
    with transaction.atomic():
        chosen = _lock(recipients.filter(state__in=lease.ACTIVE, held=False))
        chosen.rows.update(held=True)
        maillog.writer.write([maillog.lines.held(mid, rids, by=name) for mid, rids in chosen.by_mid.items()], at=now)
        _audit(actor, f"Hold {_recipients(len(chosen.pks))}", chosen)
    return len(chosen.pks)


def release_recipients(recipients: QuerySet[Recipient], *, actor: audit.Actor, now: datetime | None = None) -> int:
    """Release held recipients (`postsuper -H`): due now, their messages rung. Returns how many were released."""
    now = now or timezone.now()
    name = _actor_name(actor)
    with transaction.atomic():
        chosen = _lock(recipients.filter(state__in=lease.ACTIVE, held=True))
        chosen.rows.update(held=False)
        mids = lease.make_due(chosen.rows, now)
        lines = [maillog.lines.released(mid, rids, by=name) for mid, rids in chosen.by_mid.items()]
        maillog.writer.write(lines, at=now)
        _audit(actor, f"Release {_recipients(len(chosen.pks))}", chosen)
        transaction.on_commit(lambda: _ring(mids[:1000]))
    return len(chosen.pks)


def redirect_recipients(
    recipients: QuerySet[Recipient],
    relay: tuple[str, int] | None,
    *,
    actor: audit.Actor,
    now: datetime | None = None,
) -> int:
    """The ESA's `redirectrecipients`: active recipients go to `relay` (host, port) instead of their route's
    hosts, from their next connection, which is now; None cancels the redirect (their route again). Returns how
    many recipients were redirected (or given back to their route)."""
    now = now or timezone.now()
    name = _actor_name(actor)
    with transaction.atomic():
        active = recipients.filter(state__in=lease.ACTIVE)
        chosen = _lock(active.exclude(redirect_host="") if relay is None else active)
        host, port = relay if relay is not None else ("", 25)
        chosen.rows.update(redirect_host=host, redirect_port=port)
        mids = lease.make_due(chosen.rows, now)
        if relay is None:
            lines = [maillog.lines.redirect_cancelled(mid, rids, by=name) for mid, rids in chosen.by_mid.items()]
            what = f"Cancel the redirect of {_recipients(len(chosen.pks))}"
        else:
            lines = [maillog.lines.redirected(mid, rids, host, port, by=name) for mid, rids in chosen.by_mid.items()]
            what = f"Redirect {_recipients(len(chosen.pks))} to {host}:{port}"
        maillog.writer.write(lines, at=now)
        _audit(actor, what, chosen)
        transaction.on_commit(lambda: _ring(mids[:1000]))
    return len(chosen.pks)


@dataclass(frozen=True)
class _Locked:
    """Recipients an action has locked: their primary keys, and their RIDs by MID for the log lines."""

    pks: list[int]
    by_mid: dict[int, list[int]]

    @property
    def rows(self) -> QuerySet[Recipient]:
        return Recipient.objects.filter(pk__in=self.pks)


def _lock(recipients: QuerySet[Recipient]) -> _Locked:
    """Lock the chosen recipients for the caller's transaction (an action changes only what it locked)."""
    by_mid: dict[int, list[int]] = defaultdict(list)
    pks = []
    for pk, mid, rid in recipients.select_for_update().values_list("pk", "message_id", "rid"):
        pks.append(pk)
        by_mid[mid].append(rid)
    return _Locked(pks, dict(by_mid))


def _audit(actor: audit.Actor, what: str, chosen: _Locked) -> None:
    """One audit entry for an action on recipients, with the MIDs; none when it found nothing to change."""
    if chosen.pks:
        audit.record_action(actor, "queue", what, {"recipients": len(chosen.pks), "mids": _listed(chosen.by_mid)})


def mark_host_up(host: str, port: int, *, actor: audit.Actor, now: datetime | None = None) -> int:
    """The hosts page's "retry now": the host is up, and its routes' backlog goes now. Returns MIDs kicked."""
    now = now or timezone.now()
    with transaction.atomic():
        hosts.mark_up(host, port)
        mids = lease.kick_hosts([(host, port)], now)
        audit.record_action(
            actor, "queue", f"Mark host up {host}:{port}", {"messages": len(mids), "mids": _listed(mids)}
        )
        transaction.on_commit(lambda: _ring(mids[:1000]))
    return len(mids)


def suspend_delivery(domains: Sequence[str], *, actor: audit.Actor, now: datetime | None = None) -> list[str]:
    """The ESA's `suspenddel`: the domains' mail (every domain's, with "ALL") stays queued, delivering nothing,
    until `resume_delivery`. Returns the domains newly suspended (one already suspended is left as it is)."""
    now = now or timezone.now()
    name = _actor_name(actor)
    wanted = list(dict.fromkeys(domains))
    with transaction.atomic():
        have = set(DeliverySuspension.objects.filter(domain__in=wanted).values_list("domain", flat=True))
        new = [d for d in wanted if d not in have]
        DeliverySuspension.objects.bulk_create(
            [DeliverySuspension(domain=d, suspended_at=now, suspended_by=name[:200]) for d in new]
        )
        if new:
            maillog.writer.write([maillog.lines.suspension_changed(d, suspended=True, by=name) for d in new], at=now)
            audit.record_action(actor, "queue", f"Suspend delivery to {', '.join(new)}", {"domains": new})
            webhook_events.write_suspended(new, by=name, now=now)
    return new


def resume_delivery(domains: Sequence[str], *, actor: audit.Actor, now: datetime | None = None) -> list[str]:
    """The ESA's `resumedel`: lift the suspensions of these domains ("ALL": every suspension) and send their
    backlog now, not at its retry times. Returns the domains resumed (those that were suspended)."""
    now = now or timezone.now()
    name = _actor_name(actor)
    rows = DeliverySuspension.objects.all()
    if engine.SUSPEND_ALL not in domains:
        rows = rows.filter(domain__in=list(domains))
    with transaction.atomic():
        resumed = list(rows.select_for_update().values_list("domain", flat=True))
        if not resumed:
            return []
        DeliverySuspension.objects.filter(domain__in=resumed).delete()
        still = lease.suspended_domains()
        backlog = Recipient.objects.none()
        if engine.SUSPEND_ALL not in still:
            backlog = Recipient.objects.exclude(domain__in=still)
            if engine.SUSPEND_ALL not in resumed:
                backlog = backlog.filter(domain__in=resumed)
        mids = lease.make_due(backlog, now)
        maillog.writer.write([maillog.lines.suspension_changed(d, suspended=False, by=name) for d in resumed], at=now)
        audit.record_action(
            actor,
            "queue",
            f"Resume delivery to {', '.join(resumed)}",
            {"domains": resumed, "messages": len(mids), "mids": _listed(mids)},
        )
        transaction.on_commit(lambda: _ring(mids[:1000]))
    return resumed
