"""Sending webhook rows: claim the due ones, POST each signed, record the attempt, retry with back-off.

    webhooks.send.send_due()     # delivery.tasks.send_webhooks, on Celery beat every ESAROUTES_WEBHOOK_INTERVAL s

At least once: a row stays pending until a POST is answered 2xx; a worker killed mid-POST leaves a lease that runs
out (`LEASE`) and the row is sent again, so receivers deduplicate on ``X-Esaroutes-Delivery``. A failure (no answer,
a refused address, any status but 2xx) waits `retry_delay(attempts)` (30 s doubling to an hour); after
`MAX_ATTEMPTS` the row is failed, and stays visible on the webhooks page.

Each POST:

    Content-Type: application/json
    X-Esaroutes-Event: delivered
    X-Esaroutes-Delivery: 1234                    (the row's id: the same on every retry)
    X-Esaroutes-Timestamp: 1764689000             (Unix seconds of this attempt)
    X-Esaroutes-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

The URL's host is resolved here and the address checked against ESAROUTES_DELIVERY_ALLOWED_NETWORKS before
connecting (`esaroutes.egress`); the connection goes to that very address (no second lookup). Redirects are not
followed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from delivery.webhooks.models import Webhook, WebhookAttempt, WebhookEvent
from esaroutes import egress, numbers

logger = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for one POST: connect, send, status line
LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 12
BATCH = 50  # rows per run at most


def retry_delay(attempts: int) -> timedelta:
    """Wait after the `attempts`-th failed POST: 30 s, 1 min, 2 min, ... at most an hour."""
    return timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 3600))


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256, keyed by the secret, of ``"<timestamp>.<body>"``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signed: str) -> bool:
    """What a receiver does (constant-time compare); the README shows the same in a few lines."""
    when = numbers.whole(timestamp)
    return when is not None and hmac.compare_digest(signature(secret, when, body), signed)


@dataclass(frozen=True, slots=True)
class Result:
    status: int | None  # None: no HTTP answer
    error: str  # "" for a 2xx
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    networks: Sequence[egress.Network] | None,
    timeout: float = TIMEOUT,
) -> Result:
    """One POST; never raises for network trouble (the error is the Result's)."""
    started = time.monotonic()
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if secure else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        address = next((a for a in addresses if egress.allowed(a, networks)), None)
        if address is None:
            raise egress.Refused(egress.refusal(addresses[0] if addresses else host))
        conn: http.client.HTTPConnection
        if secure:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)

        def connect_to_the_checked_address(
            _: tuple[str, int], timeout: float | None = None, source_address: tuple[str, int] | None = None
        ) -> socket.socket:
            return socket.create_connection((address, port), timeout, source_address)

        conn._create_connection = connect_to_the_checked_address  # type: ignore[attr-defined]
        try:
            path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(4096)
            status = response.status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Result(None, str(exc) or type(exc).__name__, time.monotonic() - started)
    error = "" if 200 <= status < 300 else f"HTTP {status} {http.client.responses.get(status, '')}".strip()
    return Result(status, error, time.monotonic() - started)


def headers_for(row: WebhookEvent, secret: str, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "esaroutes-webhook/1",
        "X-Esaroutes-Event": row.event,
        "X-Esaroutes-Delivery": str(row.pk),
        "X-Esaroutes-Timestamp": str(timestamp),
        "X-Esaroutes-Signature": signature(secret, timestamp, row.payload.encode()),
    }


def _claim(now: datetime, limit: int) -> list[int]:
    free = Q(leased_until__isnull=True) | Q(leased_until__lt=now)
    due = WebhookEvent.objects.filter(free, state=WebhookEvent.State.PENDING, next_attempt_at__lte=now)
    claimed = []
    for pk in due.order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:limit]:
        if WebhookEvent.objects.filter(free, pk=pk, state=WebhookEvent.State.PENDING).update(leased_until=now + LEASE):
            claimed.append(pk)
    return claimed


def send_due(*, now: datetime | None = None, limit: int = BATCH) -> int:
    """Send the due rows (at most `limit`); returns how many were answered 2xx."""
    now = now or timezone.now()
    ids = _claim(now, limit)
    if not ids:
        return 0
    rows = {row.pk: row for row in WebhookEvent.objects.filter(pk__in=ids)}
    hooks = Webhook.objects.in_bulk({row.webhook_id for row in rows.values()})
    sent = 0
    for pk in ids:
        row = rows[pk]
        hook = hooks.get(row.webhook_id)
        if hook is None:  # deleted after the recorder wrote the row
            WebhookEvent.objects.filter(pk=pk).delete()
            continue
        timestamp = int(time.time())
        result = post(
            hook.url,
            row.payload.encode(),
            headers_for(row, hook.secret, timestamp),
            networks=settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS,
        )
        sent += result.ok
        _record(row, hook, result, timezone.now())
    return sent


def _record(row: WebhookEvent, hook: Webhook, result: Result, at: datetime) -> None:
    with transaction.atomic():
        WebhookAttempt.objects.create(
            event=row, webhook=hook, at=at, status=result.status, error=result.error[:2000], seconds=result.seconds
        )
        attempts = row.attempts + 1
        if result.ok:
            change = {"state": WebhookEvent.State.SENT, "sent_at": at, "next_attempt_at": None}
        elif attempts >= MAX_ATTEMPTS:
            change = {"state": WebhookEvent.State.FAILED, "next_attempt_at": None}
        else:
            change = {"next_attempt_at": at + retry_delay(attempts)}
        WebhookEvent.objects.filter(pk=row.pk).update(
            attempts=attempts,
            last_status=result.status,
            last_error=result.error[:2000],
            leased_until=None,
            **change,
        )
    if not result.ok:
        logger.info("webhook %s event %s: attempt %s failed: %s", hook.name, row.pk, attempts, result.error)
