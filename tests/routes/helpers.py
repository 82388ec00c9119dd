"""Small builders for route tests (no factory library)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from routes import domains, services


def make_route(domain: str = "example.com", hosts: str = "mx1.example.com", *, actor: Any = "test", **kw: Any):
    return services.route_create(
        data=services.RouteData(domain=domain, destination=domains.parse_hosts(hosts), **kw), actor=actor
    )


def form_data(domain: str, rows: Sequence[tuple[str, ...]], **extra: Any) -> dict[str, Any]:
    """POST data for the add/edit form: rows of (priority, destination, port[, weight])."""
    data: dict[str, Any] = {
        "domain": domain,
        "tls": "opportunistic",
        "hosts-TOTAL_FORMS": str(len(rows)),
        "hosts-INITIAL_FORMS": "0",
        "hosts-MIN_NUM_FORMS": "0",
        "hosts-MAX_NUM_FORMS": "1000",
    }
    for i, (priority, destination, port, *weight) in enumerate(rows):
        data[f"hosts-{i}-priority"] = priority
        data[f"hosts-{i}-destination"] = destination
        data[f"hosts-{i}-port"] = port
        if weight:
            data[f"hosts-{i}-weight"] = weight[0]
    data.update(extra)
    return data


def closed_port() -> int:
    """A loopback port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
