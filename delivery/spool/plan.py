"""Planning a batch: claimed messages become groups of jobs per route and recipient domain, with the hosts in the
order to try.

A recipient whose fate is decided here, with no connection (DCID 0: expiry, a /dev/null route, a DNS failure),
goes into the plan's `immediate` report instead. The bounce profiles (retries, lifetime, whether to bounce) are
read here for the recorder too.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import connection

from delivery import engine, maillog, outcome, resolve
from delivery.models import BounceProfile, DeliveryAttempt, Recipient
from delivery.outbound import hosts
from delivery.spool import lease
from routes import auth_profiles, destinations, matching, snapshot


@dataclass
class Plan:
    groups: list[outcome.Group] = field(default_factory=list)
    immediate: outcome.Report = field(default_factory=outcome.Report)  # expiry, /dev/null, DNS failures


_profiles_cache: tuple[float, dict[int | None, BounceProfile]] | None = None


def bounce_profiles() -> dict[int | None, BounceProfile]:
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


def profile_for(
    entry: matching.RouteEntry | None,
    profiles: dict[int | None, BounceProfile],
    limits: destinations.DestinationLimits | None = None,
) -> BounceProfile:
    """The bounce profile that applies: the route's if it names one, else the destination control's, else the
    default profile (a profile deleted meanwhile counts as not named)."""
    for pid in resolve.profile_ids(entry, limits or destinations.BUILTIN_DEFAULT):
        if pid in profiles:
            return profiles[pid]
    return profiles[None]


def profile_of(
    table: matching.RouteTable, domain: str, profiles: dict[int | None, BounceProfile], sender: str | None = None
) -> BounceProfile:
    """`profile_for` a recipient domain (of a message from `sender`, whose route may be a sender route): its route
    and its destination control in one table."""
    return profile_for(table.lookup(domain, sender), profiles, table.destinations.lookup(domain))


def _timeouts() -> outcome.Timeouts:
    return outcome.Timeouts(
        connect=settings.ESAROUTES_DELIVERY_CONNECT_TIMEOUT,
        command=settings.ESAROUTES_DELIVERY_COMMAND_TIMEOUT,
        data=settings.ESAROUTES_DELIVERY_DATA_TIMEOUT,
        transaction=settings.ESAROUTES_DELIVERY_TRANSACTION_TIMEOUT,
    )


def _template(
    host: engine.Host,
    entry: matching.RouteEntry | None,
    auth_cache: dict[int, tuple[str, str] | None],
    profile: BounceProfile,
    limits: destinations.DestinationLimits,
    tls: str,
    domain: str,
) -> outcome.Destination:
    auth = None
    if entry is not None and entry.auth_profile_id is not None:
        if entry.auth_profile_id not in auth_cache:
            auth_cache[entry.auth_profile_id] = auth_profiles.credentials(entry.auth_profile_id)
        auth = auth_cache[entry.auth_profile_id]
    return outcome.Destination(
        host=host,
        helo=(entry.ehlo_name if entry is not None else "") or settings.ESAROUTES_DELIVERY_EHLO,
        tls=outcome.TlsPolicy(tls),  # resolve.Resolution.tls_policy: the route's and the destination's
        auth=auth,
        timeouts=_timeouts(),
        defer_on_4xx=bool(entry and entry.defer_on_4xx),
        count_possible_delivery=profile.after_possible_delivery == BounceProfile.AfterPossibleDelivery.DELIVERED,
        max_messages=limits.max_messages_per_connection,
        ip_preference=limits.ip_preference,
        ca_file=settings.ESAROUTES_DELIVERY_CA_FILE or None,
        source_address=source_address(entry),
        allowed_networks=tuple(settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS),
        domain=domain,
    )


def connection_limits(where: resolve.Resolution, table: matching.RouteTable) -> destinations.DestinationLimits:
    """The destination control entry whose messages per connection, IP preference and bounce profile (its
    after-possible-delivery rule) a group's connections take: its recipient domain's. A redirect goes to the
    operator's relay in one group whatever its domains: it takes the Default entry's, the same for every domain
    (the relay is none of them; the first domain of the batch no longer decides)."""
    if where.kind == resolve.Kind.REDIRECT:
        return table.destinations.default
    return table.destinations.lookup(where.domain)


def _limits(where: resolve.Resolution, table: matching.RouteTable) -> destinations.DestinationLimits | None:
    """The destination control whose connection and recipient limits the group's connections count against
    (`delivery.slots`, in the runner): its recipient domain's. Mail an operator redirected is not counted."""
    if where.kind == resolve.Kind.REDIRECT:
        return None
    return table.destinations.lookup(where.domain)


def source_address(entry: matching.RouteEntry | None) -> str | None:
    """The local address a route's connections come from: its own, else the global one, else the system's choice
    (None). It is also the `interface` of their `New SMTP DCID` and `Connection Error` lines, as on the ESA."""
    return (entry.source_address if entry is not None else "") or settings.ESAROUTES_DELIVERY_SOURCE_ADDRESS or None


def local_final(
    report: outcome.Report,
    *,
    mid: int,
    sender: str,
    rcpt: outcome.Rcpt,
    state: str,
    text: str,
    counts: bool = False,
) -> None:
    """A decision taken here, with no connection (DCID 0): expiry, a DNS failure, a /dev/null route, an
    administrator's bounce. Only a DNS failure `counts` as a delivery attempt (it schedules the retry)."""
    if state == Recipient.State.DROPPED:
        report.finals.append(outcome.Final(mid, rcpt.rid, state, None, text, attempt=False))
        report.lines.append(maillog.lines.message_done(0, mid, [rcpt.rid]))
        report.lines.append(maillog.lines.response(mid, [rcpt.rid], text))
        return
    status, phrase = engine.enhanced_status(None, text)
    report.finals.append(outcome.Final(mid, rcpt.rid, state, None, text, dsn_status=status, attempt=counts))
    kind = maillog.lines.BOUNCED if state == Recipient.State.BOUNCED else maillog.lines.DELAYED
    report.lines.append(
        maillog.lines.rcpt_outcome(
            kind, 0, mid, sender, rcpt.address, rcpt.rid, status, phrase, None, text, domain=rcpt.domain
        )
    )
    # The event's row (DCID 0, no host): the hard bounce and delay counters count these rows, as they count a
    # host's 5xx and 4xx, and tracking lists the decision with the connections.
    row = DeliveryAttempt.Outcome.BOUNCED if state == Recipient.State.BOUNCED else DeliveryAttempt.Outcome.DELAYED
    report.attempts.append(outcome.Attempt(mid, rcpt.rid, 0, "", "", 0, None, text, row))


class _Message(NamedTuple):
    sender: str
    received_at: datetime


#: The recipients due now of the claimed messages, with their message's sender and arrival (held: not tried,
#: never expired while held), in one statement written once: the ORM built two queries for it on every batch.
_DUE_RECIPIENTS = (
    "SELECT r.message_id, r.rid, r.address, r.domain, r.attempts, r.redirect_host, r.redirect_port, m.sender, "
    "m.received_at FROM delivery_recipient r JOIN delivery_message m ON m.id = r.message_id WHERE {chosen} "
    "AND r.state IN (%s, %s) AND NOT r.held AND (r.next_attempt_at IS NULL OR r.next_attempt_at <= %s) "
    "ORDER BY r.message_id, r.rid"
)


def _due_recipients(
    mids: Sequence[int], now: datetime
) -> tuple[dict[int, _Message], list[tuple[int, int, str, str, int, str, int]]]:
    """({mid: its sender and arrival}, [(mid, rid, address, domain, attempts, redirect host, redirect port)])."""
    chosen, ids = lease.among("r.message_id", mids)
    with connection.cursor() as cursor:
        cursor.execute(
            _DUE_RECIPIENTS.format(chosen=chosen),
            [ids, *(state.value for state in lease.ACTIVE), connection.ops.adapt_datetimefield_value(now)],
        )
        rows = cursor.fetchall()
    messages: dict[int, _Message] = {}
    for row in rows:
        if row[0] not in messages:
            received = row[8]  # naive from SQLite's driver: stored in UTC
            messages[row[0]] = _Message(row[7], received if received.tzinfo else received.replace(tzinfo=UTC))
    return messages, [row[:7] for row in rows]


def _bodies(mids: set[int]) -> dict[int, bytes]:
    chosen, ids = lease.among("message_id", sorted(mids))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT message_id, data FROM delivery_messagebody WHERE {chosen}", [ids])
        return {mid: bytes(data) for mid, data in cursor.fetchall()}


def plan(mids: Sequence[int], *, now: datetime) -> Plan:
    """Turn claimed messages into groups of jobs per route and recipient domain, with the hosts in the order to
    try: each group gets its own domain's destination control (connections, messages per connection, recipient
    limit, IP preference, TLS, bounce profile)."""
    out = Plan()
    messages, recipients = _due_recipients(mids, now)
    if not recipients:
        return out
    bodies = _bodies({r[0] for r in recipients})
    resolver = resolve.Resolver(snapshot.current_table())
    profiles = bounce_profiles()
    auth_cache: dict[int, tuple[str, str] | None] = {}
    # (route, recipient domain) -> where that group's mail goes (`Resolution.group_key`)
    routes: dict[tuple[str, str], resolve.Resolution] = {}
    suspended = lease.suspended_domains()
    left: set[str] = set()  # domains with due mail that stays queued: their deliveries are suspended
    jobs: dict[tuple[str, str], dict[int, list[outcome.Rcpt]]] = defaultdict(lambda: defaultdict(list))
    for mid, rid, address, domain, attempts, redirect_host, redirect_port in recipients:
        message = messages[mid]
        sender = message.sender
        if engine.is_suspended(domain, suspended):
            left.add(domain)  # not attempted, not expired; the release leaves it with no due time
            continue
        rcpt = outcome.Rcpt(rid, address, domain)
        profile = profile_of(resolver.table, domain, profiles, sender)
        if attempts and engine.is_expired(
            message.received_at,
            attempts,
            now,
            profile.max_retries,
            timedelta(seconds=profile.max_queue_lifetime),
        ):
            text = "5.4.7 Delivery expired (message too old)"
            local_final(out.immediate, mid=mid, sender=sender, rcpt=rcpt, state=Recipient.State.BOUNCED, text=text)
            continue
        where = (
            resolve.redirected(domain, redirect_host, redirect_port)
            if redirect_host
            else resolver.resolve(domain, sender)
        )
        if where.kind == resolve.Kind.DEVNULL:
            text = "Dropped by the /dev/null route"
            local_final(out.immediate, mid=mid, sender=sender, rcpt=rcpt, state=Recipient.State.DROPPED, text=text)
            continue
        if where.dns_error:
            state = Recipient.State.BOUNCED if where.dns_hard else Recipient.State.DELAYED
            local_final(
                out.immediate, mid=mid, sender=sender, rcpt=rcpt, state=state, text=where.dns_error, counts=True
            )
            continue
        routes.setdefault(where.group_key, where)
        jobs[where.group_key][mid].append(rcpt)
    out.immediate.lines += [maillog.lines.suspended(d) for d in sorted(left)]
    down = hosts.down_hosts({k for where in routes.values() for k in where.host_keys()}, now)
    for group_key, by_mid in jobs.items():
        where = routes[group_key]
        key, domain = group_key  # domain: "" for a redirect (not counted, one relay whatever the domain)
        limits = connection_limits(where, resolver.table)
        per_connection = limits.max_messages_per_connection
        job_list = [
            outcome.Job(mid, messages[mid].sender, bodies.get(mid, b""), tuple(rcpts)) for mid, rcpts in by_mid.items()
        ]
        for start in range(0, len(job_list), per_connection):
            order = where.order(hosts.next_rr_offset(key), down)
            out.groups.append(
                outcome.Group(
                    route_key=key,
                    domain=where.domain,
                    hosts=tuple(order),
                    template=_template(
                        order[0],
                        where.entry,
                        auth_cache,
                        profile_for(where.entry, profiles, limits),
                        limits,
                        where.tls_policy(limits),
                        domain,
                    ),
                    jobs=tuple(job_list[start : start + per_connection]),
                    interface=source_address(where.entry) or settings.ESAROUTES_SMTP_INTERFACE,
                    fallback=where.fallback,
                    limits=_limits(where, resolver.table),
                )
            )
    return out
