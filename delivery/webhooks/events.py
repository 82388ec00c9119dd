"""The webhook rows the delivery side writes: one per event and subscribed webhook, in the state change's transaction.

    webhooks.events.write(changes, now)            # the recorder (delivery.spool.record), after the recipients
    webhooks.events.write_suspended(domains, by=, now=)   # delivery.spool.actions.suspend_delivery

Cheap by design, since it runs inside delivery's group commit: which webhooks want which event is read at most
every `REFRESH` seconds per process (and at once after a change made in this process, `forget()`), nothing is
read or written when no webhook wants the event, and the rows go in one bulk INSERT. Sending them is
`delivery.webhooks.send`'s job, later, from another task: no HTTP here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from delivery.models import Message
from delivery.webhooks.models import Webhook, WebhookEvent
from esaroutes import bulk

#: Seconds a process keeps its list of webhooks before reading it again.
REFRESH = 5.0

EVENTS = tuple(Webhook.Event.values)

# The planner's text for an expired recipient (delivery.spool.plan): a bounce, but its own event.
_EXPIRED = "5.4.7 Delivery expired"


def event_for(state: str, text: str) -> str | None:
    """The event a recipient's new state makes: delivered, delayed, bounced or expired (dropped: none)."""
    if state == "bounced":
        return Webhook.Event.EXPIRED if text.startswith(_EXPIRED) else Webhook.Event.BOUNCED
    if state in (Webhook.Event.DELIVERED, Webhook.Event.DELAYED):
        return state
    return None


@dataclass(frozen=True, slots=True)
class Change:
    """One recipient's new state, as the recorder has it."""

    mid: int
    rid: int
    address: str
    domain: str
    state: str
    code: int | None
    text: str
    host: str
    dsn_status: str
    attempts: int


_lock = threading.Lock()
_cache: tuple[float, dict[str, tuple[int, ...]]] | None = None


def forget() -> None:
    """Read the webhooks again next time (after a registration changed)."""
    global _cache
    with _lock:
        _cache = None


def subscribers() -> dict[str, tuple[int, ...]]:
    """Event name → ids of the enabled webhooks that want it (read at most every REFRESH seconds)."""
    global _cache
    with _lock:
        if _cache is not None and time.monotonic() - _cache[0] < REFRESH:
            return _cache[1]
    wanted: dict[str, list[int]] = {}
    for pk, events in Webhook.objects.filter(enabled=True).values_list("pk", "events"):
        for event in events or ():
            wanted.setdefault(str(event), []).append(pk)
    table = {event: tuple(ids) for event, ids in wanted.items()}
    with _lock:
        _cache = (time.monotonic(), table)
    return table


def _body(event: str, at: datetime, data: dict[str, object]) -> str:
    return json.dumps({"event": event, "at": at.isoformat(), **data}, sort_keys=True, separators=(",", ":"))


def write(changes: Sequence[Change], now: datetime) -> int:
    """The rows for the recipients' new states; returns how many. Call inside the recording transaction."""
    wanted = subscribers()
    picked = [(c, e) for c in changes if (e := event_for(c.state, c.text)) is not None and wanted.get(e)]
    if not picked:
        return 0
    messages = {
        pk: (sender, message_id, subject)
        for pk, sender, message_id, subject in Message.objects.filter(pk__in={c.mid for c, _ in picked}).values_list(
            "pk", "sender", "message_id", "subject"
        )
    }
    rows = []
    for c, event in picked:
        sender, message_id, subject = messages.get(c.mid, ("", "", ""))
        body = _body(
            event,
            now,
            {
                "mid": c.mid,
                "rid": c.rid,
                "recipient": c.address,
                "domain": c.domain,
                "sender": sender,
                "message_id": message_id,
                "subject": subject,
                "code": c.code,
                "response": c.text,
                "host": c.host,
                "dsn_status": c.dsn_status,
                "attempts": c.attempts,
            },
        )
        rows += [(hook, event, body) for hook in wanted[event]]
    return _insert(rows, now)


def write_suspended(domains: Sequence[str], *, by: str, now: datetime) -> int:
    """A `suspended` row per domain whose deliveries were just suspended ("ALL": every domain)."""
    hooks = subscribers().get(Webhook.Event.SUSPENDED)
    if not hooks or not domains:
        return 0
    rows = [(hook, "suspended", _body("suspended", now, {"domain": d, "by": by})) for d in domains for hook in hooks]
    return _insert(rows, now)


_ROWS = bulk.BulkInsert(WebhookEvent, ("webhook_id", "event", "payload", "created_at", "next_attempt_at"))


def _insert(rows: Sequence[tuple[int, str, str]], now: datetime) -> int:
    at = connection.ops.adapt_datetimefield_value(now)
    _ROWS.run([(hook, event, body, at, at) for hook, event, body in rows])
    return len(rows)
