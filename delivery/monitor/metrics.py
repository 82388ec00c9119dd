"""`/metrics` in the Prometheus text format, computed from the database at scrape time.

Why from the database and not from in-process counters: the web server, the listener and every Celery worker
are separate processes (often on several machines), and each restarts on its own. prometheus-client counters
kept in one process would only count that process's events and restart from zero; the database already holds
every message, recipient, attempt and host, and is what the dashboard shows, so /metrics agrees with it. Each
scrape runs a handful of grouped queries (about as costly as one dashboard refresh): scrape every 15-60 s.

The counters are "since the history began" (rows the database still holds); Prometheus' `rate()` and
`increase()` handle a decrease after old rows are purged like a counter reset.

Access: clients in `ESAROUTES_METRICS_NETWORKS` (default loopback), or any client sending
`Authorization: Bearer <ESAROUTES_METRICS_TOKEN>`. Nothing else, and no login.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from delivery.models import DeliveryAttempt, HostStatus, Message, Recipient
from delivery.monitor import counters, selectors

LATENCY_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)  # seconds


class DatabaseCollector:
    """A prometheus-client collector reading the queue tables (registered on a fresh registry per scrape)."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        received = CounterMetricFamily(
            "esaroutes_recipients_received", "Recipients received, by destination domain", labels=["domain"]
        )
        delivered = CounterMetricFamily(
            "esaroutes_recipients_delivered", "Recipients delivered, by destination domain", labels=["domain"]
        )
        bounced = CounterMetricFamily(
            "esaroutes_recipients_bounced", "Recipients hard bounced, by destination domain", labels=["domain"]
        )
        delayed = GaugeMetricFamily(
            "esaroutes_recipients_delayed",
            "Recipients waiting for a retry after a temporary failure, by destination domain",
            labels=["domain"],
        )
        by_domain: dict[str, dict[str, int]] = {}
        for domain, state, n in Recipient.objects.values_list("domain", "state").annotate(n=Count("id")).order_by():
            by_domain.setdefault(domain, {})[state] = n
        for domain, states in sorted(by_domain.items()):
            figures = counters.from_states(states)
            received.add_metric([domain], figures.recipients)
            delivered.add_metric([domain], figures.delivered)
            bounced.add_metric([domain], figures.hard_bounced)
            delayed.add_metric([domain], figures.delayed_now)
        yield received
        yield delivered
        yield bounced
        yield delayed

        messages = CounterMetricFamily("esaroutes_messages_received", "Messages received (and generated bounces)")
        messages.add_metric([], Message.objects.count())
        yield messages

        outcomes = selectors.attempt_outcome_counts()
        attempts = CounterMetricFamily(
            "esaroutes_delivery_attempts", "Attempt rows (events), by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(outcomes.items()):
            attempts.add_metric([outcome], n)
        yield attempts
        events = counters.from_outcomes(outcomes)
        soft = CounterMetricFamily(
            "esaroutes_soft_bounce_events", "Soft bounce events: failovers, connection errors and delays"
        )
        soft.add_metric([], events.soft_bounced)
        yield soft
        delays = CounterMetricFamily("esaroutes_delay_events", "Delay events: recipients put back to wait for a retry")
        delays.add_metric([], events.delayed)
        yield delays

        conn_errors = CounterMetricFamily(
            "esaroutes_host_failures",
            "Recipients not delivered by a host (a 4xx, a 5xx or the connection failing), by destination host",
            labels=["host", "port"],
        )
        host_delivered = CounterMetricFamily(
            "esaroutes_host_delivered", "Recipients delivered, by destination host", labels=["host", "port"]
        )
        host_down = GaugeMetricFamily("esaroutes_host_down", "1 while a host is marked down", labels=["host", "port"])
        host_conns = GaugeMetricFamily(
            "esaroutes_host_connections_out", "Outbound connections open now", labels=["host", "port"]
        )
        for h in selectors.with_live_connections(HostStatus.objects.order_by("host", "port")):
            labels = [h.host, str(h.port)]
            conn_errors.add_metric(labels, h.failed)
            host_delivered.add_metric(labels, h.delivered)
            host_down.add_metric(labels, 1 if h.down_until and h.down_until > now else 0)
            host_conns.add_metric(labels, max(0, h.connections_out))
        yield conn_errors
        yield host_delivered
        yield host_down
        yield host_conns

        depth, oldest_age = selectors.queue_depth(now)
        g = GaugeMetricFamily("esaroutes_queue_recipients", "Recipients queued or delayed (queue depth)")
        g.add_metric([], depth)
        yield g
        g = GaugeMetricFamily("esaroutes_queue_oldest_age_seconds", "Age of the oldest queued message, 0 if none")
        g.add_metric([], oldest_age or 0.0)
        yield g

        suspended = GaugeMetricFamily(
            "esaroutes_delivery_suspended",
            'Deliveries suspended by an operator (suspenddel): 1 per suspended domain ("ALL": every domain)',
            labels=["domain"],
        )
        for domain in sorted(selectors.suspended_domains()):
            suspended.add_metric([domain], 1)
        yield suspended

        yield latency_histogram()


def latency_histogram() -> HistogramMetricFamily:
    """Seconds from reception to delivery of each delivered recipient, in cumulative buckets (one query).

    Plain SQL per vendor: Django's duration arithmetic on SQLite runs a Python function per row and expression
    (seconds at 100,000 messages); julianday() and EXTRACT(EPOCH ...) keep it in the database engine.
    """
    if connection.vendor == "postgresql":
        latency = "EXTRACT(EPOCH FROM (a.at - m.received_at))"
    else:
        latency = "(julianday(a.at) - julianday(m.received_at)) * 86400.0"
    buckets_sql = ", ".join(f"SUM(CASE WHEN lat <= {float(b)} THEN 1 ELSE 0 END)" for b in LATENCY_BUCKETS)
    sql = (
        f"SELECT COUNT(*), COALESCE(SUM(lat), 0), {buckets_sql} FROM ("  # table names and numbers only
        f"SELECT {latency} AS lat FROM {DeliveryAttempt._meta.db_table} a "
        f"JOIN {Message._meta.db_table} m ON m.id = a.message_id WHERE a.outcome = %s) t"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [DeliveryAttempt.Outcome.DELIVERED.value])
        row = cursor.fetchone()
    total, total_seconds, *counts = row
    buckets = [(str(float(b)), int(n or 0)) for b, n in zip(LATENCY_BUCKETS, counts, strict=True)]
    buckets.append(("+Inf", int(total)))
    h = HistogramMetricFamily(
        "esaroutes_delivery_latency_seconds", "Seconds from reception to delivery, per delivered recipient"
    )
    h.add_metric([], buckets, sum_value=float(total_seconds))
    return h


def allowed(request: HttpRequest) -> bool:
    token = settings.ESAROUTES_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header[7:].strip().encode(), token.encode())
    try:
        client = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(client in net for net in settings.ESAROUTES_METRICS_NETWORKS)


@require_GET
@login_not_required
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
