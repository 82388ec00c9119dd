"""Group commit: the messages sessions are waiting to have stored go to the database together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from delivery import maillog
from delivery.spool import intake

logger = logging.getLogger(__name__)


#: How long an `ICID n close` line waits for a message's commit to ride along with (each commit costs the listener
#: and the database about as much as its first message): with one message per session, three commits in ten
#: were of close lines alone. They are in memory meanwhile: a listener killed then loses them, as it loses the
#: lines of a connection that has not sent a message yet; stopping writes them.
LINGER = 0.5


class Committer:
    """Group commit: messages waiting for their commit are stored together, in one transaction per batch.

    A session's DATA waits on `submit()`; `writers` tasks each take everything waiting (up to `max_batch`) and
    run `intake.accept_many` in the worker pool, so with 10 sessions committing at once there are a few
    transactions in flight instead of 10, each with one multi-row INSERT per table and one WAL flush. Every
    `250` still follows the commit of the batch that holds its message. When a batch fails, its messages are
    retried one by one, so one bad message never fails its neighbours; a database outage fails each (451).
    Connection lines (`ICID n close`, ...) ride along with the next batch, or go alone when no message waits;
    those logged with `linger` wait up to `LINGER` seconds for a batch to ride along with first.
    """

    def __init__(self, commit: Callable[..., Awaitable[Any]], *, writers: int, max_batch: int = 200) -> None:
        self._commit = commit  # runs a sync function in the listener's commit thread (`Listener.commit`)
        self.max_batch = max_batch
        self._waiting: list[tuple[intake.Incoming, asyncio.Future[int]]] = []
        self._lines: list[maillog.lines.Line] = []
        self._wake = asyncio.Event()
        self._linger: asyncio.TimerHandle | None = None
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        loop = asyncio.get_running_loop()
        self._writers = [loop.create_task(self._writer()) for _ in range(writers)]

    async def submit(self, incoming: intake.Incoming) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((incoming, future))
        self._kick()
        return await future

    def log(self, lines: list[maillog.lines.Line], *, linger: bool = False) -> None:
        """Write these lines with the next batch: at once, or with `linger` within `LINGER` seconds."""
        self._lines += lines
        if not linger:
            self._kick()
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(LINGER, self._kick)

    def _kick(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._idle.clear()
        self._wake.set()

    async def close(self) -> None:
        """Write everything still waiting, then stop the writers."""
        while self._waiting or self._lines or self._busy:
            self._kick()
            await self._idle.wait()
        for task in self._writers:
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            lines, self._lines = self._lines, []
            if not self._waiting and not self._lines:
                self._wake.clear()
            if not batch and not lines:
                if not self._busy:
                    self._idle.set()
                continue
            self._busy += 1
            try:
                await self._write(batch, lines)
            finally:
                self._busy -= 1
                if not self._busy and not self._waiting and not self._lines:
                    self._idle.set()

    async def _write(
        self, batch: list[tuple[intake.Incoming, asyncio.Future[int]]], lines: list[maillog.lines.Line]
    ) -> None:
        try:
            mids = await self._commit(intake.accept_many, [incoming for incoming, _ in batch], lines)
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:
                    await self._write([item], [])
                if lines:
                    await self._write([], lines)
                return
            if not batch:
                logger.warning("%d connection log lines not written", len(lines), exc_info=True)
                return
            self._settle(batch[0][1], exc)
            if lines:
                await self._write([], lines)
            return
        for (_, future), mid in zip(batch, mids, strict=True):
            self._settle(future, mid)

    @staticmethod
    def _settle(future: asyncio.Future[int], outcome: int | BaseException) -> None:
        if future.done():  # the session went away while waiting: the message is stored all the same
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
