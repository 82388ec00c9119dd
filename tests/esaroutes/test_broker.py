"""The Redis transport survives closing a channel that holds an unacknowledged task after its connection is gone.

Celery 5.7 reacts to a lost broker connection with `collect()` (which detaches the transport from its client)
and then `close()`. A channel that still holds a task taken with acks_late puts it back on close, through a new
Redis client built from the detached one: kombu's own transport raises AttributeError there, which Celery calls
unrecoverable, and the worker exited after a Redis restart under load (CI, 2026-12-01: 225 of 400 messages
waited until the test gave up). These tests pin that kombu behaviour (when kombu fixes it, the first one fails
and `esaroutes.broker` can go) and that ours turns it into a connection error, which Celery reconnects after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from kombu import Connection, Exchange, Queue

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="REDIS_URL is not set (embedded default pass)")
URL = str(settings.REDIS_URL)

STOCK = "kombu.transport.redis:Transport"
OURS = "esaroutes.broker:Transport"


@pytest.fixture
def queue_name() -> Iterator[str]:
    name = f"esaroutes-test-broker-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(URL)
    client.delete(name, f"_kombu.binding.{name}", "unacked", "unacked_index")
    client.close()


def _detached_channel_holding_a_message(transport: str, queue_name: str) -> tuple[Connection, Any]:
    """A connection whose channel holds one unacknowledged message and whose transport is detached from its
    client, as Celery's collect() leaves it."""
    conn = Connection(URL, transport=transport)
    channel = conn.channel()
    queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)(channel)
    queue.declare()
    conn.Producer(channel).publish({"mids": [1]}, exchange=queue_name, routing_key=queue_name, serializer="json")
    message = queue.get(no_ack=False)
    assert message is not None, "the message did not arrive"
    conn.transport.client = None  # what Connection.collect() does (via _do_close_transport)
    return conn, channel


def test_kombus_own_transport_raises_attribute_error_closing_such_a_channel(queue_name):
    conn, channel = _detached_channel_holding_a_message(STOCK, queue_name)
    with pytest.raises(AttributeError, match="hostname"):
        conn.maybe_close_channel(channel)


def test_ours_makes_it_a_connection_error_that_celery_ignores(queue_name):
    conn, channel = _detached_channel_holding_a_message(OURS, queue_name)
    conn.maybe_close_channel(channel)  # ignores connection and channel errors: no exception
    assert channel.closed


def test_the_configured_broker_uses_ours():
    from esaroutes.celery import app

    with app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "esaroutes.broker"
