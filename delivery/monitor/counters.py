"""What each figure on the operator pages counts: one definition per figure, used by every page and command.

The dashboard, the destinations table (`tophosts`), the domain status page (`hoststatus`), the hosts page,
message tracking and `/metrics` all take their numbers from the functions below, applied to what
`delivery.monitor.selectors` reads (grouped counts of the queue tables). Each figure names its unit, as the ESA
does ("Soft Bounced Events"): **messages** (one per message received, whatever its recipients), **recipients**
(one per recipient of a message, counted once, in the state it is in now), **events** (one per attempt row: a
recipient meeting a host, or a decision taken here) or **connections**.

The events are `DeliveryAttempt` rows, one per recipient and host tried, plus one per decision taken without a
connection (DCID 0: an expiry, a DNS failure, an operator's bounce). A row's outcome says what became of the
recipient after it: delivered, hard bounced, failed over to the next host, a connection error with another host
to try, or delayed (put back to wait for its retry: the last host's 4xx or connection error, a 4xx on a route
that defers, a temporary DNS failure). So a recipient that is delivered or hard bounced has exactly one such
row, and every delay has one.

Pure: no database, no network (the tests feed them small fixed tables).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from delivery.models import DeliveryAttempt, Recipient

Outcome = DeliveryAttempt.Outcome
State = Recipient.State

#: Attempt outcomes that are soft bounce events: a temporary failure, whatever came next.
SOFT_OUTCOMES: tuple[str, ...] = (Outcome.DELAYED, Outcome.NEXT_HOST, Outcome.CONNECTION_ERROR)
#: The delay events: a recipient put back to wait for its retry.
DELAY_OUTCOMES: tuple[str, ...] = (Outcome.DELAYED,)
DELIVERED_OUTCOMES: tuple[str, ...] = (Outcome.DELIVERED,)
HARD_OUTCOMES: tuple[str, ...] = (Outcome.BOUNCED,)
#: Recipients still to deliver.
ACTIVE_STATES: tuple[str, ...] = (State.QUEUED, State.DELAYED)
#: Recipients done with: delivered, hard bounced, deleted or dropped.
COMPLETED_STATES: tuple[str, ...] = (State.DELIVERED, State.BOUNCED, State.DELETED, State.DROPPED)


@dataclass(frozen=True)
class Definition:
    key: str
    label: str  # as the pages show it, unit included
    unit: str  # messages, recipients, events or connections
    counts: str  # what one unit is
    shown: str  # where the figure appears


DEFINITIONS: tuple[Definition, ...] = (
    Definition(
        "received",
        "Messages received",
        "messages",
        "messages accepted by the listener, and DSNs generated here; a window counts by reception time",
        "dashboard; /metrics esaroutes_messages_received",
    ),
    Definition(
        "recipients",
        "Recipients received",
        "recipients",
        "recipients of the messages received, whatever their state",
        "/metrics esaroutes_recipients_received (per domain)",
    ),
    Definition(
        "delivered",
        "Delivered recipients",
        "recipients",
        "recipients a host accepted (250 to the end of data); a window counts the delivered attempt rows by time",
        "dashboard, destinations, domain status, hoststatus, tophosts, tracking (outcome delivered), "
        "/metrics esaroutes_recipients_delivered",
    ),
    Definition(
        "hard_bounced",
        "Hard bounced recipients",
        "recipients",
        "recipients bounced for good: a host's 5xx, an expiry (5.4.7), a DNS failure for good, an operator's "
        "bounce; a window counts the bounced attempt rows by time",
        "dashboard, destinations, domain status, hoststatus, tophosts, tracking (outcome hard bounced), "
        "/metrics esaroutes_recipients_bounced",
    ),
    Definition(
        "soft_bounced",
        "Soft bounced events",
        "events",
        "temporary failures: each attempt row that failed over to the next host, met a connection error or "
        "delayed the recipient (one recipient can have several)",
        "dashboard, destinations, domain status, hoststatus, tophosts, tracking (outcome soft bounced: the "
        "recipients with one), /metrics esaroutes_soft_bounce_events",
    ),
    Definition(
        "delayed",
        "Delayed events",
        "events",
        "times a recipient was put back to wait for its retry: after a 4xx or a connection error on the last "
        "host, a 4xx on a route that defers, a temporary DNS failure (each has a Delayed: log line)",
        "dashboard, chart, /metrics esaroutes_delay_events",
    ),
    Definition(
        "active",
        "Active recipients",
        "recipients",
        "recipients queued or delayed now (a gauge)",
        "dashboard, destinations, domain status, hoststatus, tophosts, /metrics esaroutes_queue_recipients",
    ),
    Definition(
        "delayed_now",
        "Delayed recipients",
        "recipients",
        "recipients waiting for a retry now, after at least one try (a gauge)",
        "dashboard, /metrics esaroutes_recipients_delayed",
    ),
    Definition(
        "deleted",
        "Deleted recipients",
        "recipients",
        "recipients an operator deleted from the queue (no DSN)",
        "domain status, hoststatus",
    ),
    Definition(
        "completed",
        "Completed recipients",
        "recipients",
        "delivered + hard bounced + deleted + dropped (/dev/null) recipients",
        "domain status, hoststatus",
    ),
    Definition(
        "connections_out",
        "Connections out",
        "connections",
        "outbound SMTP connections open now, summed over every worker process (read live: 0 within about a "
        "second of the last DCID close)",
        "dashboard destinations, domain status, hoststatus, tophosts, hosts page, "
        "/metrics esaroutes_host_connections_out",
    ),
    Definition(
        "host_delivered",
        "Recipients delivered (by host)",
        "recipients",
        "recipients this host accepted",
        "hosts page, domain status, hoststatus, /metrics esaroutes_host_delivered",
    ),
    Definition(
        "host_failed",
        "Recipients not delivered (by host)",
        "events",
        "attempt rows on this host that did not deliver: a 4xx, a 5xx, or the connection failing",
        "hosts page, domain status, hoststatus, /metrics esaroutes_host_failures",
    ),
    Definition(
        "host_failures",
        "Failed connections in a row",
        "connections",
        "connections to this host that failed since its last success (what marks it down)",
        "hosts page, domain status",
    ),
    Definition(
        "tries",
        "Tries",
        "events",
        "times a recipient was tried: once per retry, however many hosts that try went through (the retry "
        "schedule and max retries count these); the attempt rows below it list each host",
        "message page",
    ),
)

BY_KEY: dict[str, Definition] = {d.key: d for d in DEFINITIONS}


def label(key: str) -> str:
    return BY_KEY[key].label


@dataclass(frozen=True)
class StateFigures:
    """The recipient figures, from recipients counted by state."""

    recipients: int
    active: int
    delayed_now: int
    delivered: int
    hard_bounced: int
    deleted: int
    dropped: int
    completed: int


def from_states(states: Mapping[str, int]) -> StateFigures:
    """`states`: recipients per Recipient.State value (of one domain, or of all)."""

    def n(*names: str) -> int:
        return sum(int(states.get(s, 0)) for s in names)

    return StateFigures(
        recipients=sum(int(v) for v in states.values()),
        active=n(*ACTIVE_STATES),
        delayed_now=n(State.DELAYED),
        delivered=n(State.DELIVERED),
        hard_bounced=n(State.BOUNCED),
        deleted=n(State.DELETED),
        dropped=n(State.DROPPED),
        completed=n(*COMPLETED_STATES),
    )


@dataclass(frozen=True)
class EventFigures:
    """The event figures, from attempt rows counted by outcome."""

    delivered: int
    hard_bounced: int
    soft_bounced: int
    delayed: int


def from_outcomes(outcomes: Mapping[str, int]) -> EventFigures:
    """`outcomes`: attempt rows per DeliveryAttempt.Outcome value (all time, or one window)."""

    def n(names: tuple[str, ...]) -> int:
        return sum(int(outcomes.get(o, 0)) for o in names)

    return EventFigures(
        delivered=n(DELIVERED_OUTCOMES),
        hard_bounced=n(HARD_OUTCOMES),
        soft_bounced=n(SOFT_OUTCOMES),
        delayed=n(DELAY_OUTCOMES),
    )


#: The chart's series: what one bar segment counts, per attempt outcome (failovers and connection errors that
#: still had a host to try are not drawn: the recipient was neither delivered, bounced nor delayed by them).
CHART_SERIES: dict[str, str] = {
    Outcome.DELIVERED: "delivered",
    Outcome.DELAYED: "delayed",
    Outcome.BOUNCED: "bounced",
}


def chart_series(outcome: str) -> str | None:
    return CHART_SERIES.get(outcome)
