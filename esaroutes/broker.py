"""The Redis broker transport: kombu's, made to survive losing the server while a task is unacknowledged.

Celery 5.7 handles a lost broker connection by collecting the connection (which detaches its transport from
its client) and then closing it. Closing a channel that still holds an unacknowledged message (a task taken
with acks_late) asks for a new Redis client to put the message back, and kombu builds one from the detached
client: `AttributeError: 'NoneType' object has no attribute 'hostname'`. That is not a connection error, so
Celery calls it unrecoverable and the worker exits: a Redis restart under load left no worker delivering (the
mail stayed queued, nothing moved until someone restarted it).

Here a channel whose connection is gone says so with Redis's own ConnectionError, which kombu and Celery treat
as what it is: the worker reconnects once Redis is back. The unacknowledged message is not put back by this
process (its Redis is gone); the lease in the database and the beat sweep deliver it, as they do for
everything a broker forgets.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
        return params


class Transport(kombu_redis.Transport):
    Channel = Channel
