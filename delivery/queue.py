"""The queue: leases, planning a batch, recording outcomes, retries and bounces, and the operator's actions.

The database is the truth. A message is delivered by whoever holds its lease (`Message.leased_by/leased_until`,
taken with a conditional UPDATE that works the same on PostgreSQL and SQLite); the lease is renewed while the
worker works, so it runs out only when the worker died, and then the next sweep hands the message to another.
A recipient moves queued → delivered / bounced / dropped / deleted, or → delayed (with its next attempt time)
and back. Everything that changes a recipient is one transaction with its attempts, its mail-log lines and the
host health it taught us, so the queue, the dashboard and `mail.current` always agree.

The operator's actions (`deliver_now`, `bounce_recipients`, `delete_recipients`, `mark_host_up`) are the only
code the pages, the admin and the commands call to change the queue, and each is logged the way the ESA logs it
and recorded in the audit log.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Min, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from delivery import engine, hosts, intake, maillog, runner, smtp_client
from delivery.models import BounceProfile, DeliveryAttempt, Message, MessageBody, Recipient
from routes import audit, auth_profiles, domains, matching, snapshot

logger = logging.getLogger("delivery.queue")

ACTIVE = [Recipient.State.QUEUED, Recipient.State.DELAYED]


# --- leases -------------------------------------------------------------------------------------------------


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


def renew(token: str, *, now: datetime) -> None:
    until = now + timedelta(seconds=settings.ESAROUTES_LEASE_SECONDS)
    Message.objects.filter(leased_by=token).update(leased_until=until)


def release(token: str, *, now: datetime, mids: Iterable[int] | None = None) -> None:
    """Give the batch's messages back (or only `mids` of them): each waits for its earliest active recipient."""
    earliest = (
        Recipient.objects.filter(message=OuterRef("pk"), state__in=ACTIVE)
        .order_by()
        .values("message")
        .annotate(m=Min("next_attempt_at"))
        .values("m")[:1]
    )
    held = Message.objects.filter(leased_by=token)
    if mids is not None:
        held = held.filter(pk__in=list(mids))
    held.update(leased_by="", leased_until=None, next_attempt_at=Subquery(earliest))


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


# --- planning a batch ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    groups: list[runner.Group] = field(default_factory=list)
    immediate: runner.Report = field(default_factory=runner.Report)  # expiry, /dev/null, DNS failures


_profiles_cache: tuple[float, dict[int | None, BounceProfile]] | None = None


def _profiles() -> dict[int | None, BounceProfile]:
    """Bounce profiles by id (None: the default), read at most every ESAROUTES_ROUTE_REFRESH seconds."""
    global _profiles_cache
    if _profiles_cache is not None and time.monotonic() - _profiles_cache[0] < settings.ESAROUTES_ROUTE_REFRESH:
        return _profiles_cache[1]
    profiles = _read_profiles()
    _profiles_cache = (time.monotonic(), profiles)
    return profiles


def _read_profiles() -> dict[int | None, BounceProfile]:
    profiles: dict[int | None, BounceProfile] = {p.pk: p for p in BounceProfile.objects.all()}
    default = next((p for p in profiles.values() if p.name == BounceProfile.DEFAULT_NAME), None)
    profiles[None] = default or BounceProfile(name=BounceProfile.DEFAULT_NAME)
    return profiles


def _profile_for(entry: matching.RouteEntry | None, profiles: dict[int | None, BounceProfile]) -> BounceProfile:
    pid = entry.bounce_profile_id if entry is not None else None
    return profiles.get(pid) or profiles[None]


def _timeouts() -> smtp_client.Timeouts:
    return smtp_client.Timeouts(
        connect=settings.ESAROUTES_DELIVERY_CONNECT_TIMEOUT,
        command=settings.ESAROUTES_DELIVERY_COMMAND_TIMEOUT,
        data=settings.ESAROUTES_DELIVERY_DATA_TIMEOUT,
        transaction=settings.ESAROUTES_DELIVERY_TRANSACTION_TIMEOUT,
    )


def _template(
    host: engine.Host, entry: matching.RouteEntry | None, auth_cache: dict[int, tuple[str, str] | None]
) -> smtp_client.Destination:
    auth = None
    if entry is not None and entry.auth_profile_id is not None:
        if entry.auth_profile_id not in auth_cache:
            auth_cache[entry.auth_profile_id] = auth_profiles.credentials(entry.auth_profile_id)
        auth = auth_cache[entry.auth_profile_id]
    return smtp_client.Destination(
        host=host,
        helo=settings.ESAROUTES_DELIVERY_EHLO,
        tls=smtp_client.TlsPolicy(entry.tls if entry is not None and not entry.special else "opportunistic"),
        auth=auth,
        timeouts=_timeouts(),
        defer_on_4xx=bool(entry and entry.defer_on_4xx),
        max_messages=settings.ESAROUTES_DELIVERY_MAX_MESSAGES_PER_CONNECTION,
        ca_file=settings.ESAROUTES_DELIVERY_CA_FILE or None,
        source_address=settings.ESAROUTES_DELIVERY_SOURCE_ADDRESS or None,
    )


def _local_final(
    report: runner.Report,
    *,
    mid: int,
    sender: str,
    rcpt: runner.Rcpt,
    state: str,
    text: str,
    counts: bool = False,
) -> None:
    """A decision taken here, with no connection (DCID 0): expiry, a DNS failure, a /dev/null route, an
    administrator's bounce. Only a DNS failure `counts` as a delivery attempt (it schedules the retry)."""
    if state == Recipient.State.DROPPED:
        report.finals.append(runner.Final(mid, rcpt.rid, state, None, text, attempt=False))
        report.lines.append(maillog.message_done(0, mid, [rcpt.rid]))
        report.lines.append(maillog.response(mid, [rcpt.rid], text))
        return
    status, phrase = engine.enhanced_status(None, text)
    report.finals.append(runner.Final(mid, rcpt.rid, state, None, text, dsn_status=status, attempt=counts))
    build = maillog.bounced if state == Recipient.State.BOUNCED else maillog.delayed
    report.lines.append(build(0, mid, sender, rcpt.address, rcpt.rid, status, phrase, None, text, domain=rcpt.domain))


def plan(mids: Sequence[int], *, now: datetime) -> Plan:
    """Turn claimed messages into groups of jobs per route, with the hosts in the order to try."""
    from delivery import dns

    out = Plan()
    messages = {m["pk"]: m for m in Message.objects.filter(pk__in=mids).values("pk", "sender", "received_at", "state")}
    recipients = list(
        Recipient.objects.filter(message_id__in=mids, state__in=ACTIVE)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .order_by("message_id", "rid")
        .values_list("message_id", "rid", "address", "domain", "attempts")
    )
    if not recipients:
        return out
    bodies = dict(
        MessageBody.objects.filter(message_id__in={r[0] for r in recipients}).values_list("message_id", "data")
    )
    table = snapshot.current_table()
    profiles = _profiles()
    mx_cache: dict[str, list[engine.Host] | Exception] = {}
    auth_cache: dict[int, tuple[str, str] | None] = {}
    exchanges: dict[str, list[str]] = {}  # route host name -> its MX exchanges, best first
    # route key -> (entry, hosts, domain) and route key -> mid -> recipients
    routes: dict[str, tuple[matching.RouteEntry | None, list[engine.Host], str]] = {}
    jobs: dict[str, dict[int, list[runner.Rcpt]]] = defaultdict(lambda: defaultdict(list))
    for mid, rid, address, domain, attempts in recipients:
        message = messages[mid]
        sender = message["sender"]
        rcpt = runner.Rcpt(rid, address, domain)
        entry = table.lookup(domain)
        profile = _profile_for(entry, profiles)
        if attempts and engine.is_expired(
            message["received_at"],
            attempts,
            now,
            profile.max_retries,
            timedelta(seconds=profile.max_queue_lifetime),
        ):
            text = "5.4.7 Delivery expired (message too old)"
            _local_final(out.immediate, mid=mid, sender=sender, rcpt=rcpt, state=Recipient.State.BOUNCED, text=text)
            continue
        if entry is not None and entry.special == "devnull":
            text = "Dropped by the /dev/null route"
            _local_final(out.immediate, mid=mid, sender=sender, rcpt=rcpt, state=Recipient.State.DROPPED, text=text)
            continue
        if entry is None or entry.special == "usedns":
            key = f"mx:{domain}"
            if domain not in mx_cache:
                try:
                    mx_cache[domain] = dns.mx_hosts(domain, port=settings.ESAROUTES_DELIVERY_MX_PORT)
                except (dns.DnsHardFailure, dns.DnsTempFailure) as exc:
                    mx_cache[domain] = exc
            found = mx_cache[domain]
            if isinstance(found, Exception):
                state = Recipient.State.BOUNCED if isinstance(found, dns.DnsHardFailure) else Recipient.State.DELAYED
                _local_final(
                    out.immediate, mid=mid, sender=sender, rcpt=rcpt, state=state, text=str(found), counts=True
                )
                continue
            routes.setdefault(key, (entry, found, domain))
        else:
            key = f"route:{entry.id}"
            if key not in routes:
                routes[key] = (entry, [engine.Host(h.host, h.port, h.priority) for h in entry.hosts], domain)
                for h in entry.hosts:
                    if _wants_mx(h) and h.host not in exchanges:
                        exchanges[h.host] = _exchanges(h.host)
        jobs[key][mid].append(rcpt)
    all_keys = {h.key for _, host_list, _ in routes.values() for h in host_list}
    all_keys |= {
        (x, h.port) for _, host_list, _ in routes.values() for h in host_list for x in exchanges.get(h.address, ())
    }
    down = hosts.down_hosts(all_keys, now)
    per_connection = settings.ESAROUTES_DELIVERY_MAX_MESSAGES_PER_CONNECTION
    for key, by_mid in jobs.items():
        entry, host_list, domain = routes[key]
        job_list = [
            runner.Job(mid, messages[mid]["sender"], bytes(bodies.get(mid, b"")), tuple(rcpts))
            for mid, rcpts in by_mid.items()
        ]
        route_key = str(entry.id) if entry is not None and key.startswith("route:") else key
        for start in range(0, len(job_list), per_connection):
            order = engine.expand_exchanges(
                engine.order_hosts(host_list, hosts.next_rr_offset(route_key), down), exchanges, down
            )
            out.groups.append(
                runner.Group(
                    route_key=route_key,
                    domain=domain,
                    hosts=tuple(order),
                    template=_template(order[0], entry, auth_cache),
                    jobs=tuple(job_list[start : start + per_connection]),
                    interface=settings.ESAROUTES_SMTP_INTERFACE,
                )
            )
    return out


def _wants_mx(spec: domains.HostSpec) -> bool:
    """A route's host name is looked up by MX first, as the ESA does, unless written `[name]` (A/AAAA only).
    IP addresses, and `localhost` names (RFC 6761: never sent to DNS), are used as they are."""
    name = spec.host.lower().rstrip(".")
    return not spec.a_only and spec.ip is None and name != "localhost" and not name.endswith(".localhost")


def _exchanges(name: str) -> list[str]:
    """The MX exchanges of a route's host name, best first; [] when it has none (its own A/AAAA are used) or
    when DNS fails (the name is then tried as it is, and a failure shows as a Connection Error)."""
    from delivery import dns

    try:
        found = [h.address for h in dns.mx_hosts(name)]
    except (dns.DnsHardFailure, dns.DnsTempFailure):
        return []
    return [] if found == [name.lower().rstrip(".")] else found


# --- recording outcomes -------------------------------------------------------------------------------------


def _retry_at(
    recipient: Recipient, entry: matching.RouteEntry | None, profiles: dict[int | None, BounceProfile], now: datetime
) -> datetime:
    profile = _profile_for(entry, profiles)
    wait = engine.retry_delay(
        recipient.attempts, timedelta(seconds=profile.initial_retry), timedelta(seconds=profile.max_retry_timeout)
    )
    return now + wait


def record(reports: Sequence[runner.Report], *, now: datetime | None = None) -> list[int]:
    """Apply reports in one transaction. Returns the MIDs of bounce messages generated (to ring for delivery).

    A final for a recipient that is no longer active (an operator bounced or deleted it meanwhile) is ignored;
    its attempt and log lines are kept, since they happened.
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
        by_key: dict[tuple[int, int], Recipient] = {}
        if mids:
            for row in Recipient.objects.filter(message_id__in=mids).select_for_update():
                by_key[(row.message_id, row.rid)] = row
        table = snapshot.current_table()
        profiles = _profiles()
        changed: list[Recipient] = []
        bounced: dict[int, list[tuple[Recipient, runner.Final]]] = defaultdict(list)
        for f in finals:
            r = by_key.get((f.mid, f.rid))
            if r is None or r.state not in ACTIVE:
                continue
            r.attempts += int(f.attempt)
            r.last_code, r.last_response, r.last_host = f.code, f.text[:4000], f.host[:300]
            r.dsn_status = f.dsn_status[:16]
            r.state = f.state
            if f.state == Recipient.State.DELAYED:
                r.next_attempt_at = _retry_at(r, table.lookup(r.domain), profiles, now)
            else:
                r.next_attempt_at = None
                r.finished_at = now
                if f.state == Recipient.State.BOUNCED:
                    bounced[f.mid].append((r, f))
            changed.append(r)
        _update_recipients(changed)
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
        still_active = {mid for (mid, _), r in by_key.items() if r.state in ACTIVE}
        lines += _finish_messages(mids - still_active, now)
        maillog.write(lines, at=now)
        generated = _generate_bounces(bounced, profiles, table, now)
        if came_back:
            _kick_hosts(came_back, now)
    return generated


#: What the database raises when it is not there (down, restarting, a dropped connection, a deadlock): the
#: reports are fine and are recorded again later, as they are. Anything else is the reports' own fault.
DATABASE_GONE = (OperationalError, InterfaceError)


def record_safely(reports: Sequence[runner.Report], *, now: datetime | None = None) -> list[int]:
    """record(), and when that fails for a reason of the reports' own (not DATABASE_GONE), record_apart()."""
    try:
        return record(reports, now=now)
    except DATABASE_GONE:
        raise
    except Exception:
        logger.warning("recording %s delivery reports failed; recording them one by one", len(reports), exc_info=True)
        return record_apart(reports, now=now)


def record_apart(reports: Sequence[runner.Report], *, now: datetime | None = None) -> list[int]:
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
        except DATABASE_GONE:
            raise
        except Exception:
            logger.warning("recording a delivery report failed; recording it with safe texts", exc_info=True)
        try:
            generated += record([safe_report(report)], now=now)
            continue
        except DATABASE_GONE:
            raise
        except Exception as exc:
            logger.exception(
                "recording a delivery report of MID %s failed even with safe texts; recording only its essential facts",
                ", ".join(str(mid) for mid in sorted({f.mid for f in report.finals})) or "-",
            )
            reduced = essential_report(report, exc)
        generated += record([reduced], now=now)
    return generated


def safe_report(report: runner.Report) -> runner.Report:
    """The report with every text made safe for any database (smtp_client.safe_text: no NUL, no undecodable
    byte, no control character, capped)."""
    safe = smtp_client.safe_text
    return runner.Report(
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


def essential_report(report: runner.Report, error: BaseException) -> runner.Report:
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
    lines += [maillog.recorded_without_details(mid, type(error).__name__) for mid in sorted({f.mid for f in finals})]
    return runner.Report(finals=finals, attempts=attempts, lines=lines, journal=report.journal)


def _count_healthy(events: list[hosts.HostEvent], now: datetime) -> None:
    came_back = hosts.count_healthy(events, now)
    if came_back:
        with transaction.atomic():
            _kick_hosts(came_back, now)


_ATTEMPTS = maillog.BulkInsert(
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


def _finish_messages(mids: Iterable[int], now: datetime, *, checked: bool = True) -> list[maillog.Line]:
    """Messages with no active recipient left are done: `Message finished MID n done`.

    `checked`: the caller knows these messages have no active recipient left (it holds their rows locked).
    """
    mids = set(mids)
    if mids and not checked:
        mids -= set(
            Recipient.objects.filter(message_id__in=mids, state__in=ACTIVE).values_list("message_id", flat=True)
        )
    if not mids:
        return []
    done = sorted(Message.objects.filter(pk__in=mids, state=Message.State.QUEUED).values_list("pk", flat=True))
    if not done:
        return []
    Message.objects.filter(pk__in=done).update(
        state=Message.State.DONE, finished_at=now, next_attempt_at=None, leased_by="", leased_until=None
    )
    return [maillog.message_finished(mid) for mid in done]


def _generate_bounces(
    bounced: dict[int, list[tuple[Recipient, runner.Final]]],
    profiles: dict[int | None, BounceProfile],
    table: matching.RouteTable,
    now: datetime,
) -> list[int]:
    """A DSN to the envelope sender for each message with hard-bounced recipients (never for `<>`)."""
    if not bounced:
        return []
    from delivery import dsn

    messages = {m.pk: m for m in Message.objects.filter(pk__in=bounced)}
    bodies = dict(MessageBody.objects.filter(message_id__in=bounced).values_list("message_id", "data"))
    incoming: list[intake.Incoming] = []
    origins: list[int] = []
    for mid, pairs in bounced.items():
        message = messages.get(mid)
        if message is None or not dsn.should_bounce(message.sender):
            continue
        if not any(_profile_for(table.lookup(r.domain), profiles).send_bounces for r, _ in pairs):
            continue
        sender_domain = matching.recipient_domain(message.sender) or ""
        data = dsn.build_dsn(
            original=bytes(bodies.get(mid, b"")),
            sender=message.sender,
            recipients=[
                dsn.BouncedRecipient(
                    address=r.address,
                    status=f.dsn_status or engine.enhanced_status(f.code, f.text)[0],
                    diagnostic=f"{f.code} {f.text}" if f.code is not None else f.text,
                    remote_mta=f.host,
                    last_attempt=now,
                )
                for r, f in pairs
            ],
            reporting_mta=settings.ESAROUTES_DELIVERY_EHLO,
            arrival=message.received_at,
            now=now,
            mid=mid,
        )
        incoming.append(
            intake.Incoming(
                icid=0,
                sender="",
                recipients=((message.sender, sender_domain),),
                data=data,
                subject="Delivery Status Notification (Failure)",
            )
        )
        origins.append(mid)
    if not incoming:
        return []
    new_mids = intake.accept_many(incoming, now=now)
    for new_mid, mid in zip(new_mids, origins, strict=True):
        Message.objects.filter(pk=new_mid).update(bounce_of_id=mid)
    maillog.write([maillog.generated_bounce(n, m) for n, m in zip(new_mids, origins, strict=True)], at=now)
    return new_mids


# --- kicking: send now, not at the retry time ---------------------------------------------------------------


def _make_due(recipients: QuerySet[Recipient], now: datetime) -> list[int]:
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


def _kick_hosts(keys: Iterable[hosts.HostKey], now: datetime) -> list[int]:
    """A host came back: its routes' backlog goes now, not at its retry times (the sweep sends it)."""
    return _make_due(Recipient.objects.filter(_route_domains_q(keys, snapshot.current_table())), now)


def _ring(mids: Sequence[int]) -> None:
    if mids:
        intake.ring_many(mids)


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
    what = f"deliver now MID {mid}" if mid is not None else f"deliver now {domain or 'all domains'}"
    with transaction.atomic():
        mids = _make_due(qs, now)
        maillog.write([maillog.kicking(domain or (f"MID {mid}" if mid is not None else "ALL"))], at=now)
        audit.record_action(actor, "queue", what, {"messages": len(mids)})
        transaction.on_commit(lambda: _ring(mids[:1000]))
    return len(mids)


def select_recipients(
    *,
    mids: Iterable[int] | None = None,
    domain: str | None = None,
    sender: str | None = None,
    recipient_ids: Iterable[int] | None = None,
    everything: bool = False,
) -> QuerySet[Recipient]:
    """Active recipients chosen the ways `bouncerecipients`/`deleterecipients` choose them. Nothing unless asked."""
    qs = Recipient.objects.filter(state__in=ACTIVE)
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


def bounce_recipients(recipients: QuerySet[Recipient], *, actor: audit.Actor, now: datetime | None = None) -> int:
    """Hard-bounce active recipients now (a DSN goes to each sender). Returns how many."""
    now = now or timezone.now()
    name = actor if isinstance(actor, str) else getattr(actor, "username", "") or "anonymous"
    text = f"5.0.0 Bounced by the administrator ({name})"
    with transaction.atomic():
        rows = list(recipients.filter(state__in=ACTIVE).select_related("message").select_for_update(of=("self",)))
        report = runner.Report()
        for r in rows:
            _local_final(
                report,
                mid=r.message_id,
                sender=r.message.sender,
                rcpt=runner.Rcpt(r.rid, r.address, r.domain),
                state=Recipient.State.BOUNCED,
                text=text,
            )
        generated = record([report], now=now)
        audit.record_action(actor, "queue", "bounce recipients", {"recipients": len(rows)})
        transaction.on_commit(lambda: _ring(generated))
    return len(rows)


def delete_recipients(recipients: QuerySet[Recipient], *, actor: audit.Actor, now: datetime | None = None) -> int:
    """Delete active recipients from the queue, silently (no DSN), as `deleterecipients` does."""
    now = now or timezone.now()
    with transaction.atomic():
        rows = list(recipients.filter(state__in=ACTIVE).select_for_update().values_list("pk", "message_id", "rid"))
        by_mid: dict[int, list[int]] = defaultdict(list)
        for _, mid, rid in rows:
            by_mid[mid].append(rid)
        Recipient.objects.filter(pk__in=[pk for pk, _, _ in rows]).update(
            state=Recipient.State.DELETED, finished_at=now, next_attempt_at=None
        )
        lines = [maillog.deleted(mid, rids) for mid, rids in by_mid.items()]
        lines += _finish_messages(by_mid, now, checked=False)
        maillog.write(lines, at=now)
        audit.record_action(actor, "queue", "delete recipients", {"recipients": len(rows)})
    return len(rows)


def mark_host_up(host: str, port: int, *, actor: audit.Actor, now: datetime | None = None) -> int:
    """The hosts page's "retry now": the host is up, and its routes' backlog goes now. Returns MIDs kicked."""
    now = now or timezone.now()
    with transaction.atomic():
        hosts.mark_up(host, port)
        mids = _kick_hosts([(host, port)], now)
        audit.record_action(actor, "queue", f"mark host up {host}:{port}", {"messages": len(mids)})
        transaction.on_commit(lambda: _ring(mids[:1000]))
    return len(mids)
