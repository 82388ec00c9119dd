"""Each counter definition on a small fixed data set (no database, no network)."""

from __future__ import annotations

import pytest

from delivery.models import DeliveryAttempt, Recipient
from delivery.monitor import counters

State = Recipient.State
Outcome = DeliveryAttempt.Outcome

#: Ten recipients: 4 delivered, 2 hard bounced, 1 deleted, 1 dropped, 1 delayed, 1 never tried.
STATES: dict[str, int] = {
    State.DELIVERED: 4,
    State.BOUNCED: 2,
    State.DELETED: 1,
    State.DROPPED: 1,
    State.DELAYED: 1,
    State.QUEUED: 1,
}
#: Their attempt rows: 4 delivered, 2 bounced (one a host's 5xx, one an operator's, DCID 0), 3 failovers to
#: the next host, 2 connection errors with a host left to try, 3 delays.
OUTCOMES: dict[str, int] = {
    Outcome.DELIVERED: 4,
    Outcome.BOUNCED: 2,
    Outcome.NEXT_HOST: 3,
    Outcome.CONNECTION_ERROR: 2,
    Outcome.DELAYED: 3,
}


@pytest.mark.parametrize(
    ("figure", "expected"),
    [
        ("recipients", 10),
        ("active", 2),  # queued + delayed
        ("delayed_now", 1),
        ("delivered", 4),
        ("hard_bounced", 2),
        ("deleted", 1),
        ("dropped", 1),
        ("completed", 8),  # delivered + hard bounced + deleted + dropped
    ],
)
def test_recipient_figures_count_each_recipient_once_in_its_state_now(figure, expected):
    assert getattr(counters.from_states(STATES), figure) == expected


@pytest.mark.parametrize(
    ("figure", "expected"),
    [
        ("delivered", 4),
        ("hard_bounced", 2),  # a local decision's row counts as a host's 5xx does
        ("soft_bounced", 8),  # every temporary failure: failovers, connection errors, delays
        ("delayed", 3),  # only the rows that put a recipient back to wait
    ],
)
def test_event_figures_count_attempt_rows_by_outcome(figure, expected):
    assert getattr(counters.from_outcomes(OUTCOMES), figure) == expected


def test_missing_states_and_outcomes_count_zero():
    assert counters.from_states({}) == counters.StateFigures(0, 0, 0, 0, 0, 0, 0, 0)
    assert counters.from_outcomes({}) == counters.EventFigures(0, 0, 0, 0)


def test_the_chart_draws_delivered_delayed_and_bounced_rows_only():
    assert [counters.chart_series(o) for o in Outcome.values] == [
        {"delivered": "delivered", "bounced": "bounced", "delayed": "delayed"}.get(o) for o in Outcome.values
    ]
    assert counters.chart_series(Outcome.NEXT_HOST) is None
    assert counters.chart_series(Outcome.CONNECTION_ERROR) is None


def test_every_definition_names_its_unit_and_where_it_is_shown():
    keys = [d.key for d in counters.DEFINITIONS]
    assert len(keys) == len(set(keys))
    for d in counters.DEFINITIONS:
        assert d.unit in ("messages", "recipients", "events", "connections"), d
        assert d.counts and d.shown, d
    for key in ("received", "delivered", "soft_bounced", "hard_bounced", "delayed", "active", "delayed_now"):
        assert counters.BY_KEY[key].unit in counters.label(key).lower()
