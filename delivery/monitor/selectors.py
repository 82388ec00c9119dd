"""Read-side queries of the operator pages: counters, rates, destinations, log search, tracking, queue, hosts.

Every query here is bounded: by an index range on a time column (`received_at`, `DeliveryAttempt.at`,
`MailLogLine.at`), by a keyset cursor on the mail log ("lines after id N", never an OFFSET), or by a LIMIT.
Counts "since start" read the queue tables themselves (the database is the truth; several processes write it),
grouped on indexed columns.
"""

from __future__ import annotations

import contextlib
import email.header
import email.parser
import email.policy
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db.models import BooleanField, Count, Exists, F, Func, Max, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import TruncMinute
from django.http import Http404
from django.shortcuts import get_object_or_404

from delivery import engine
from delivery.models import DeliveryAttempt, DeliverySuspension, HostStatus, MailLogLine, Message, Recipient
from delivery.monitor import counters as count
from delivery.outbound import hosts
from routes import audit, domains, matching
from routes.models import AuditEntry, Route

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler

Outcome = DeliveryAttempt.Outcome
SOFT_OUTCOMES = count.SOFT_OUTCOMES
WINDOWS = (1, 5, 15)  # minutes

# --- Dashboard -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CounterRow:
    label: str  # the figure's name with its unit (delivery.monitor.counters)
    key: str
    total: int | None  # all time: every row the database holds
    windows: tuple[int | None, ...]  # last 1, 5, 15 minutes; None for a gauge
    gauge: bool = False


def counters(now: datetime, states: dict[str, int] | None = None) -> list[CounterRow]:
    """`status detail`: each figure of `delivery.monitor.counters` all time and in the last 1/5/15 minutes, plus
    the two queue gauges.

    Totals of recipients come from the recipients' states (as on the destinations table and the domain page);
    their windows, and every event figure, from the attempt rows by time (indexed `at`); messages from
    `received_at`.
    """
    oldest = now - timedelta(minutes=max(WINDOWS))
    received_total = Message.objects.count()
    received = Message.objects.filter(received_at__gte=oldest).aggregate(
        **{f"m{m}": Count("id", filter=Q(received_at__gte=now - timedelta(minutes=m))) for m in WINDOWS}
    )
    all_time = count.from_outcomes(attempt_outcome_counts())
    per_window: list[dict[str, int]] = [{} for _ in WINDOWS]
    for row in (
        DeliveryAttempt.objects.filter(at__gte=oldest)
        .values("outcome")
        .annotate(**{f"m{m}": Count("id", filter=Q(at__gte=now - timedelta(minutes=m))) for m in WINDOWS})
        .order_by()
    ):
        for i, m in enumerate(WINDOWS):
            per_window[i][row["outcome"]] = row[f"m{m}"]
    windows = [count.from_outcomes(w) for w in per_window]
    figures = count.from_states(recipient_state_counts() if states is None else states)

    def events(key: str, total: int) -> CounterRow:
        return CounterRow(count.label(key), key, total, tuple(getattr(w, key) for w in windows))

    def gauge(key: str, value: int) -> CounterRow:
        return CounterRow(count.label(key), key, value, (None,) * len(WINDOWS), gauge=True)

    return [
        CounterRow(count.label("received"), "received", received_total, tuple(received[f"m{m}"] for m in WINDOWS)),
        events("delivered", figures.delivered),
        events("soft_bounced", all_time.soft_bounced),
        events("hard_bounced", figures.hard_bounced),
        events("delayed", all_time.delayed),
        gauge("active", figures.active),
        gauge("delayed_now", figures.delayed_now),
    ]


def attempt_outcome_counts() -> dict[str, int]:
    """Attempt rows per outcome, all time."""
    return dict(DeliveryAttempt.objects.values_list("outcome").annotate(n=Count("id")).order_by())


def history_start() -> datetime | None:
    """When the oldest message the database holds was received: where "all time" begins."""
    start: datetime | None = Message.objects.aggregate(m=Min("received_at"))["m"]
    return start


def live_connections() -> dict[tuple[str, int], int]:
    """Open outbound connections per (host, port) now, summed over the worker processes' live gauges."""
    return hosts.open_connections()


def live_domain_connections() -> dict[str, int]:
    """Open outbound connections per recipient domain now (each connection carries one domain's mail)."""
    return hosts.open_connections_by_domain()


def with_live_connections(statuses: Iterable[HostStatus]) -> list[HostStatus]:
    """The host statuses with `connections_out` replaced by the live gauge (the stored column lags the sweep)."""
    live = live_connections()
    out = list(statuses)
    for hs in out:
        hs.connections_out = live.get((hs.host, hs.port), 0)
    return out


def recipient_state_counts() -> dict[str, int]:
    return dict(Recipient.objects.values_list("state").annotate(n=Count("id")).order_by())


def recipient_domain_states() -> list[tuple[str, str, int]]:
    """(domain, state, recipients): one grouped scan that feeds both the counters and the destinations."""
    return list(Recipient.objects.values_list("domain", "state").annotate(n=Count("id")).order_by())


def state_totals(domain_states: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for _, state, n in domain_states:
        out[state] += n
    return dict(out)


@dataclass(frozen=True)
class Chart:
    """Recipient events per minute over the last hour as SVG geometry, drawn by the template (no script).

    Each bar is one minute: delivered recipients, delay events and hard bounced recipients (the attempt rows of
    `delivery.monitor.counters.CHART_SERIES`), stacked. `ticks` label the time axis (UTC clock times every 10
    minutes), `scale` the vertical axis (0, half the peak, the peak).
    """

    minutes: list[dict[str, Any]]
    peak: int
    ticks: list[dict[str, Any]] = field(default_factory=list)
    scale: list[dict[str, Any]] = field(default_factory=list)
    width: int = 720
    height: int = 140
    plot_left: int = 36
    plot_bottom: int = 110
    series: tuple[str, ...] = ("delivered", "delayed", "bounced")


def per_minute_chart(now: datetime, minutes: int = 60) -> Chart:
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    rows = (
        DeliveryAttempt.objects.filter(at__gte=start, at__lt=end, outcome__in=list(count.CHART_SERIES))
        .annotate(minute=TruncMinute("at"))
        .values_list("minute", "outcome")
        .annotate(n=Count("id"))
        .order_by()
    )
    buckets: dict[datetime, dict[str, int]] = defaultdict(lambda: {"delivered": 0, "delayed": 0, "bounced": 0})
    for minute, outcome, n in rows:
        kind = count.chart_series(outcome)
        if kind:
            buckets[minute][kind] += n
    out = []
    peak = max((sum(b.values()) for b in buckets.values()), default=0)
    left, bottom, plot_h = 36, 110, 100
    scale = plot_h / peak if peak else 0
    bar = (720 - left) / minutes
    for i in range(minutes):
        minute = start + timedelta(minutes=i)
        b = buckets.get(minute, {"delivered": 0, "delayed": 0, "bounced": 0})
        y = float(bottom)
        rects = []
        for kind in ("delivered", "delayed", "bounced"):
            h = b[kind] * scale
            y -= h
            if h:
                rects.append({"kind": kind, "y": round(y, 2), "h": round(h, 2)})
        out.append({"at": minute, "x": round(left + i * bar, 2), "w": round(bar - 1, 2), "rects": rects, **b})
    ticks = [
        {"x": out[i]["x"], "at": start + timedelta(minutes=i)} for i in range(minutes) if (start.minute + i) % 10 == 0
    ]
    levels = sorted({0, peak // 2, peak}) if peak else [0]
    marks = [{"value": v, "y": round(bottom - v * scale, 2)} for v in levels]
    return Chart(minutes=out, peak=peak, ticks=ticks, scale=marks)


@dataclass
class DestinationRow:
    """One destination domain on the dashboard and in `tophosts`: its counters and its hosts."""

    domain: str
    active: int = 0
    delivered: int = 0
    hard_bounced: int = 0
    soft_bounced: int = 0
    connections_out: int = 0
    host: str = ""
    host_up: bool | None = None
    hosts: list[HostStatus] = field(default_factory=list)
    suspended: bool = False  # an operator suspended its deliveries (suspenddel)


DESTINATION_SORTS = {
    "active": "active recipients",
    "connections": "connections out",
    "delivered": "delivered",
    "soft": "soft bounced",
    "hard": "hard bounced",
}


def destinations(
    now: datetime,
    *,
    sort: str = "active",
    limit: int = 20,
    domain_states: Iterable[tuple[str, str, int]] | None = None,
) -> list[DestinationRow]:
    """`tophosts`: the destination domains with their recipients by state and their latest host status."""
    by_domain: dict[str, DestinationRow] = {}
    for domain, state, n in recipient_domain_states() if domain_states is None else domain_states:
        d = by_domain.setdefault(domain, DestinationRow(domain))
        if state in count.ACTIVE_STATES:
            d.active += n
        elif state == Recipient.State.DELIVERED:
            d.delivered = n
        elif state == Recipient.State.BOUNCED:
            d.hard_bounced = n
    attr = {
        "active": "active",
        "connections": "connections_out",
        "delivered": "delivered",
        "soft": "soft_bounced",
        "hard": "hard_bounced",
    }.get(sort, "active")

    def key(d: DestinationRow) -> tuple[int, str]:
        return (-int(getattr(d, attr)), d.domain)

    # Soft bounces and host statuses cost a query per set of domains: compute them for the rows shown only
    # (for every domain only when sorting by them).
    shown = list(by_domain.values())
    soft = DeliveryAttempt.objects.filter(outcome__in=SOFT_OUTCOMES)
    if attr != "soft_bounced":
        if attr != "connections_out":
            shown = sorted(shown, key=key)[:limit]
        soft = soft.filter(recipient__domain__in=[d.domain for d in shown])
    for domain, n in soft.values_list("recipient__domain").annotate(n=Count("id")).order_by():
        by_domain[domain].soft_bounced = n
    if attr == "soft_bounced":
        shown = sorted(shown, key=key)[:limit]
    live = live_domain_connections()
    for d in shown:
        d.connections_out = live.get(d.domain, 0)  # the connections open for this domain's mail, on any host
    for domain, host_list in _latest_hosts([d.domain for d in shown]).items():
        d = by_domain[domain]
        d.hosts = with_live_connections(host_list)
        if host_list:
            latest = host_list[0]
            d.host = f"{latest.host}:{latest.port}"
            d.host_up = not (latest.down_until and latest.down_until > now)
    suspended = suspended_domains()
    rows = sorted(shown, key=key)[:limit]
    for d in rows:
        d.suspended = engine.is_suspended(d.domain, suspended)
    return rows


def _latest_hosts(domain_names: Sequence[str]) -> dict[str, list[HostStatus]]:
    """Per domain, the status of the host its newest connection went to (one index probe per domain on
    MailLogLine (domain, id): the "New SMTP DCID" line names the host)."""
    latest: dict[str, str] = {}
    for domain in domain_names:
        host = (
            MailLogLine.objects.filter(domain=domain, dcid__isnull=False)
            .exclude(host="")
            .order_by("-id")
            .values_list("host", flat=True)
            .first()
        )
        if host:
            latest[domain] = host
    statuses: dict[str, list[HostStatus]] = defaultdict(list)
    for hs in HostStatus.objects.filter(host__in=set(latest.values())):
        statuses[hs.host].append(hs)
    return {d: statuses.get(h, []) for d, h in latest.items()}


def newest_lines(limit: int = 15) -> list[MailLogLine]:
    return list(MailLogLine.objects.order_by("-id")[:limit])[::-1]


# --- Mail log --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilters:
    mid: int | None = None
    icid: int | None = None
    dcid: int | None = None
    domain: str = ""
    host: str = ""
    level: str = ""
    since: datetime | None = None
    until: datetime | None = None
    q: str = ""


#: The lines that tell what became of a message. A domain or host filter shows them for every message that has
#: a recipient in the domain (or went to the host), so the story stays whole: the domain is in the recipient's
#: `To:` line, not in `Message finished`, and a failover's next host is on lines of another host.
OUTCOME_LINES = (
    Q(text__startswith="Delivery start ")
    | Q(text__startswith="Delayed: ")
    | Q(text__startswith="Bounced: ")
    | Q(text__startswith="Possible Delivery: ")
    | Q(text__startswith="Message done ")
    | Q(text__startswith="Message finished ")
    | (Q(text__startswith="MID ") & Q(text__contains="] Response "))
)


class _MidAmong(Func):
    """`mid IN (subquery)`, written `mid = ANY(ARRAY(subquery))` on PostgreSQL: there the planner ORs the two
    index bitmaps (the domain's or host's lines, the messages' lines) instead of walking the whole log backwards
    with a hashed IN (bench/views.py: 14 ms instead of 470 ms for a domain's newest 500 lines)."""

    output_field = BooleanField()
    conditional = True

    def as_sql(
        self,
        compiler: SQLCompiler,
        connection: BaseDatabaseWrapper,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra_context: Any,
    ) -> tuple[str, tuple[Any, ...]]:
        column, column_params = compiler.compile(self.source_expressions[0])
        subquery, subquery_params = compiler.compile(self.source_expressions[1])
        if connection.vendor == "postgresql":
            return f"{column} = ANY(ARRAY{subquery})", (*column_params, *subquery_params)
        return f"{column} IN {subquery}", (*column_params, *subquery_params)


def log_queryset(f: LogFilters) -> QuerySet[MailLogLine]:
    qs = MailLogLine.objects.all()
    if f.mid is not None:
        qs = qs.filter(mid=f.mid)
    if f.icid is not None:
        qs = qs.filter(icid=f.icid)
    if f.dcid is not None:
        qs = qs.filter(dcid=f.dcid)
    if f.domain:
        domain = f.domain.lower()
        in_domain = Recipient.objects.filter(domain=domain).values("message_id")
        qs = qs.filter(Q(domain=domain) | (Q(_MidAmong(F("mid"), Subquery(in_domain))) & OUTCOME_LINES))
    if f.host:
        on_host = MailLogLine.objects.filter(host=f.host, mid__isnull=False).values("mid")
        qs = qs.filter(Q(host=f.host) | (Q(_MidAmong(F("mid"), Subquery(on_host))) & OUTCOME_LINES))
    if f.level:
        qs = qs.filter(level=f.level)
    if f.since:
        qs = qs.filter(at__gte=f.since)
    if f.until:
        qs = qs.filter(at__lt=f.until)
    if f.q:
        qs = qs.filter(text__icontains=f.q)
    return qs


def log_newest(f: LogFilters, limit: int) -> list[MailLogLine]:
    """The newest `limit` lines matching, oldest first (the page's first view)."""
    return list(log_queryset(f).order_by("-id")[:limit])[::-1]


def log_after(f: LogFilters, after: int, limit: int) -> list[MailLogLine]:
    """Lines after id `after`, oldest first: the live tail's keyset cursor."""
    return list(log_queryset(f).filter(id__gt=after).order_by("id")[:limit])


def log_before(f: LogFilters, before: int, limit: int) -> list[MailLogLine]:
    """The `limit` lines before id `before`, oldest first: paging back through history."""
    return list(log_queryset(f).filter(id__lt=before).order_by("-id")[:limit])[::-1]


def max_log_id() -> int:
    return MailLogLine.objects.aggregate(m=Max("id"))["m"] or 0


# --- Message tracking ------------------------------------------------------------------------------------------


class TrackingOutcome:
    DELIVERED = "delivered"
    SOFT_BOUNCED = "soft_bounced"
    HARD_BOUNCED = "hard_bounced"
    QUEUED = "queued"
    CHOICES = (
        (DELIVERED, "Delivered"),
        (SOFT_BOUNCED, "Soft bounced"),
        (HARD_BOUNCED, "Hard bounced"),
        (QUEUED, "Queued"),
    )


RESOLVE_IDS = 5000


def _text_q(field_name: str, value: str, how: str) -> Q:
    lookup = {"is": "iexact", "begins": "istartswith", "contains": "icontains", "empty": "exact"}.get(how, "icontains")
    if how == "empty":
        return Q(**{field_name: ""})
    return Q(**{f"{field_name}__{lookup}": value})


def tracking_queryset(
    *,
    sender: str = "",
    sender_how: str = "contains",
    recipient: str = "",
    recipient_how: str = "contains",
    subject: str = "",
    subject_how: str = "contains",
    message_id: str = "",
    mid: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    outcomes: Sequence[str] = (),
    domain: str = "",
) -> QuerySet[Message]:
    qs = Message.objects.all()
    if mid is not None:
        qs = qs.filter(pk=mid)
    if since:
        qs = qs.filter(received_at__gte=since)
    if until:
        qs = qs.filter(received_at__lt=until)
    if sender or sender_how == "empty":
        qs = qs.filter(_text_q("sender", sender, sender_how))
    if subject or subject_how == "empty":
        qs = qs.filter(_text_q("subject", subject, subject_how))
    if message_id:
        value = message_id.strip()
        qs = qs.filter(Q(message_id=value) | Q(message_id=f"<{value.strip('<>')}>"))
    rcpt = Recipient.objects.all()
    rcpt_filtered = selective = False
    if recipient:
        rcpt = rcpt.filter(_text_q("address", recipient, recipient_how))
        rcpt_filtered = selective = True
    if domain:
        rcpt = rcpt.filter(domain=matching.recipient_domain(domain) or domain.lower())  # Unicode or IDNA
        rcpt_filtered = True
    if outcomes:
        cond = Q()
        if TrackingOutcome.DELIVERED in outcomes:
            cond |= Q(state=Recipient.State.DELIVERED)
        if TrackingOutcome.HARD_BOUNCED in outcomes:
            cond |= Q(state=Recipient.State.BOUNCED)
        if TrackingOutcome.QUEUED in outcomes:
            cond |= Q(state__in=Recipient.ACTIVE)
        if TrackingOutcome.SOFT_BOUNCED in outcomes:
            soft_ids = DeliveryAttempt.objects.filter(outcome__in=SOFT_OUTCOMES).values("recipient_id")
            cond |= Q(pk__in=soft_ids)
        rcpt = rcpt.filter(cond)
        rcpt_filtered = True
    if rcpt_filtered and not selective:
        # By outcome or domain only: walk the period's messages (received_at index) and probe each one's
        # recipients (message_id index); resolving every bounced recipient of all time first would cost more.
        return qs.filter(Exists(rcpt.filter(message_id=OuterRef("pk")))).order_by("-received_at", "-id")
    if rcpt_filtered:
        # A selective recipient filter (the usual case: one address) is resolved first, so the planner looks the
        # few messages up by key instead of walking every message of the period against a subquery.
        ids = list(rcpt.values_list("message_id", flat=True)[: RESOLVE_IDS + 1])
        qs = qs.filter(pk__in=ids) if len(ids) <= RESOLVE_IDS else qs.filter(pk__in=rcpt.values("message_id"))
    return qs.order_by("-received_at", "-id")


def tracking_rows(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Per result row: the message and a short summary of its recipients' states (one query for the page)."""
    ids = [m.pk for m in messages]
    by_message: dict[int, list[Recipient]] = defaultdict(list)
    for r in Recipient.objects.filter(message_id__in=ids).only(
        "id", "message_id", "rid", "address", "domain", "state", "last_code", "attempts"
    ):
        by_message[r.message_id].append(r)
    return [{"message": m, "recipients": by_message.get(m.pk, [])} for m in messages]


@dataclass(frozen=True)
class MessageStory:
    message: Message
    headers: list[tuple[str, str]]
    recipients: list[Recipient]
    attempts: list[DeliveryAttempt]
    lines: list[MailLogLine]
    bounces: list[Message]
    lines_capped: bool


def message_story(message: Message, *, max_lines: int = 2000) -> MessageStory:
    """Everything tracking shows about one message: headers, recipients, attempts, log lines, generated bounces.

    The log lines are `Message.log_lines`: the MID's own, plus its ICID's and its DCIDs' connection lines.
    """
    headers = parse_headers(message)
    recipients = list(message.recipients.order_by("rid"))
    attempts = list(message.attempts.select_related("recipient").order_by("at", "id"))
    lines = message.log_lines(max_lines + 1)
    bounces = list(message.generated_bounces.order_by("id"))
    return MessageStory(
        message, headers, recipients, attempts, lines[:max_lines], bounces, lines_capped=len(lines) > max_lines
    )


def raw_message(mid: int) -> tuple[int, bytes]:
    """The stored message as received, for the page's and the API's raw download (administrators): its MID and
    bytes. Http404 when there is no such message or its body is gone."""
    message = get_object_or_404(Message.objects.select_related("body"), pk=mid)
    try:
        return message.pk, bytes(message.body.data)
    except Message.body.RelatedObjectDoesNotExist:
        raise Http404("the message body is gone") from None


def parse_headers(message: Message, max_bytes: int = 256 * 1024) -> list[tuple[str, str]]:
    """The header fields of the stored message, decoded for reading (never HTML: the template escapes them)."""
    try:
        data = bytes(message.body.data)
    except Message.body.RelatedObjectDoesNotExist:
        return []
    head = data[:max_bytes]
    end = head.find(b"\r\n\r\n")
    if end == -1:
        end = head.find(b"\n\n")
    if end != -1:
        head = head[: end + 2]
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    out = []
    # Each field as it was written (unfolded), with RFC 2047 encoded words decoded; no structured parsing, which
    # rewrites addresses and raises on a malformed Message-ID: one odd field must never fail the page.
    for name, raw in parsed.raw_items():
        text = re.sub(r"\r?\n(?=[ \t])", "", str(raw)).strip()
        if "=?" in text:
            with contextlib.suppress(Exception):  # a malformed encoded word: shown as written
                text = str(email.header.make_header(email.header.decode_header(text)))
        out.append((name, text))
    return out


# --- Queue and hosts -------------------------------------------------------------------------------------------


def suspensions() -> list[DeliverySuspension]:
    """The suspended destination domains (`suspenddel`), "ALL" first when every domain is."""
    return sorted(DeliverySuspension.objects.all(), key=lambda s: (s.domain != engine.SUSPEND_ALL, s.domain))


def suspended_domains() -> frozenset[str]:
    return frozenset(DeliverySuspension.objects.values_list("domain", flat=True))


def suspension_of(domain: str) -> DeliverySuspension | None:
    """What suspends the deliveries to `domain`: its own suspension, else "ALL", else None."""
    rows = {s.domain: s for s in DeliverySuspension.objects.filter(domain__in=[domain, engine.SUSPEND_ALL])}
    return rows.get(domain) or rows.get(engine.SUSPEND_ALL)


def queue_domains(limit: int = 100) -> list[dict[str, Any]]:
    """Active recipients per destination domain with the oldest message and the next attempt (`showrecipients`),
    the `limit` domains with the oldest messages first; `suspended` when its deliveries are."""
    suspended = suspended_domains()
    rows = list(
        Recipient.objects.filter(state__in=Recipient.ACTIVE)
        .values("domain")
        .annotate(
            active=Count("id"),
            delayed=Count("id", filter=Q(state=Recipient.State.DELAYED)),
            oldest=Min("message__received_at"),
            next_attempt=Min("next_attempt_at"),
        )
        .order_by("oldest", "domain")[:limit]
    )
    for row in rows:
        row["suspended"] = engine.is_suspended(row["domain"], suspended)
    return rows


def queue_recipients(domain: str = "") -> QuerySet[Recipient]:
    """Queued and delayed recipients, oldest message first."""
    qs = Recipient.objects.filter(state__in=Recipient.ACTIVE).select_related("message")
    if domain:
        qs = qs.filter(domain=matching.recipient_domain(domain) or domain.lower())  # typed in Unicode or IDNA
    return qs.order_by("message__received_at", "message_id", "rid")


def queue_depth(now: datetime) -> tuple[int, float | None]:
    """Active recipients and the age in seconds of the oldest queued message."""
    active = Recipient.objects.filter(state__in=Recipient.ACTIVE).count()
    oldest = Message.objects.filter(state=Message.State.QUEUED).aggregate(m=Min("received_at"))["m"]
    return active, ((now - oldest).total_seconds() if oldest else None)


def domain_status(domain: str, now: datetime) -> dict[str, Any] | None:
    """`hoststatus <domain>`: counters, gauges, the hosts tried, the latest 5xx error. None if never seen.

    Hard bounces are split as the ESA splits them: expired (5.4.7), 5XX (a host's reply), DNS (no reply: the
    domain's MX lookup failed for good) and other (an administrator's bounce). The domain is down when every host
    tried for it is marked down.
    """
    domain = domain.lower()
    recipients = Recipient.objects.filter(domain=domain)
    states = dict(recipients.values_list("state").annotate(n=Count("id")).order_by())
    if not states:
        return None
    attempts = DeliveryAttempt.objects.filter(recipient__domain=domain)
    soft = attempts.filter(outcome__in=SOFT_OUTCOMES).count()
    active = recipients.filter(state__in=Recipient.ACTIVE)
    gauges = active.aggregate(
        active=Count("id"),
        unattempted=Count("id", filter=Q(attempts=0)),
        oldest=Min("message__received_at"),
    )
    expired = Q(dsn_status="5.4.7")
    hard = recipients.filter(state=Recipient.State.BOUNCED).aggregate(
        expired=Count("id", filter=expired),
        fivexx=Count("id", filter=Q(last_code__gte=500) & ~expired),
        dns=Count(
            "id",
            filter=Q(last_code__isnull=True)
            & (Q(dsn_status__startswith="5.1.") | Q(dsn_status__startswith="5.4.4"))
            & ~expired,
        ),
    )
    host_names = set(attempts.values_list("host", flat=True).distinct()[:50])
    host_names |= set(
        MailLogLine.objects.filter(domain=domain, dcid__isnull=False)
        .exclude(host="")
        .values_list("host", flat=True)[:50]
    )
    statuses = with_live_connections(HostStatus.objects.filter(host__in=host_names))
    last_activity = attempts.aggregate(m=Max("at"))["m"]
    last_5xx = attempts.filter(code__gte=500).order_by("-at", "-id").first()
    figures = count.from_states(states)
    delivered, hard_total, deleted = figures.delivered, figures.hard_bounced, figures.deleted
    return {
        "domain": domain,
        "now": now,
        "up": not all(h.down_until and h.down_until > now for h in statuses) if statuses else None,
        "soft_bounced": soft,
        "completed": figures.completed,
        "hard_bounced": hard_total,
        "hard_dns": hard["dns"],
        "hard_5xx": hard["fivexx"],
        "hard_expired": hard["expired"],
        "hard_other": hard_total - hard["dns"] - hard["fivexx"] - hard["expired"],
        "delivered": delivered,
        "deleted": deleted,
        "dropped": figures.dropped,
        "active": gauges["active"],
        "unattempted": gauges["unattempted"],
        "attempted": gauges["active"] - gauges["unattempted"],
        "connections_out": live_domain_connections().get(domain, 0),  # this domain's, on any host
        "oldest": gauges["oldest"],
        "last_activity": last_activity,
        "hosts": statuses,
        "last_5xx": last_5xx,
        "suspension": suspension_of(domain),
    }


def queue_listing(
    *, domain: str = "", sender: str | None = None, limit: int = 100
) -> tuple[list[tuple[str, list[Recipient]]], int]:
    """`showqueue`: active recipients grouped by destination domain, oldest message first (domains in the order
    of their oldest recipient), at most `limit` recipients; and how many active recipients match in all."""
    qs = queue_recipients(domain)
    if sender is not None:  # "" is the null sender <>
        qs = qs.filter(message__sender=sender)
    total = qs.count()
    groups: dict[str, list[Recipient]] = {}
    for r in qs[:limit]:
        groups.setdefault(r.domain, []).append(r)
    return list(groups.items()), total


def selection_size(recipients: QuerySet[Recipient]) -> tuple[int, int]:
    """(recipients, messages) in a selection of active recipients, before an operator acts on it."""
    agg = recipients.aggregate(n=Count("id"), m=Count("message_id", distinct=True))
    return int(agg["n"] or 0), int(agg["m"] or 0)


def message_exists(mid: int) -> bool:
    return Message.objects.filter(pk=mid).exists()


def active_recipient_count(*, mid: int | None = None, domain: str | None = None) -> int:
    """Active recipients of one message, of one domain, or of the whole queue."""
    qs = Recipient.objects.filter(state__in=Recipient.ACTIVE)
    if mid is not None:
        qs = qs.filter(message_id=mid)
    if domain is not None:
        qs = qs.filter(domain=domain)
    return qs.count()


def host_list(*, q: str = "", down_at: datetime | None = None) -> QuerySet[HostStatus]:
    """The hosts page's rows (and the API's): `q` in the host name or its last error; `down_at`: only the hosts
    down at that time. Their `connections_out` is the stored column: `with_live_connections` makes it live."""
    qs = HostStatus.objects.order_by("host", "port")
    if q:
        qs = qs.filter(Q(host__icontains=q) | Q(last_error__icontains=q))
    if down_at is not None:
        qs = qs.filter(down_until__gt=down_at)
    return qs


def host_down(status: HostStatus, now: datetime) -> bool:
    """Whether the host is marked down now (the pages' up/down column)."""
    return bool(status.down_until and status.down_until > now)


@dataclass(frozen=True)
class FirstSteps:
    """What a new installation has done yet, for the dashboard's "what to do first" block."""

    has_route: bool
    has_message: bool

    @property
    def done(self) -> bool:
        return self.has_route and self.has_message


def first_steps() -> FirstSteps:
    return FirstSteps(has_route=Route.objects.exists(), has_message=Message.objects.exists())


# --- the audit log ----------------------------------------------------------------------------------------------


def audit_entries(*, q: str = "", action: str = "", object_type: str = "") -> QuerySet[AuditEntry]:
    """The audit page's rows and the API's (unordered: the page sorts by time, the API pages by id).

    `q` matches the object or the user; a Unicode domain (`bücher.example`) also matches its stored IDNA form.
    `object_type` "route" is the route changes: a route's and the whole table's (import, clear)."""
    rows = AuditEntry.objects.all()
    if q:
        match = Q(object_repr__icontains=q) | Q(actor_name__icontains=q)
        if not q.isascii():
            with contextlib.suppress(ValueError, UnicodeError):
                match |= Q(object_repr__icontains=domains.to_ascii_name(q.lower().strip(".")))
        rows = rows.filter(match)
    if action:
        rows = rows.filter(action=action)
    if object_type == "route":
        rows = rows.filter(object_type__in=audit.ROUTE_OBJECTS)
    elif object_type:
        rows = rows.filter(object_type=object_type)
    return rows
