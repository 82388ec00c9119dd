"""The group commit (`commit.Committer`): what goes in one commit, without a database."""

from __future__ import annotations

import asyncio
from typing import Any

from delivery import maillog
from delivery.listener import commit
from delivery.spool import intake


def _incoming(icid: int) -> intake.Incoming:
    return intake.Incoming(
        icid=icid, sender="alice@sender.test", recipients=(("bob@dest.test", "dest.test"),), data=b"x"
    )


class Recorder:
    def __init__(self) -> None:
        self.commits: list[tuple[list[int], list[str]]] = []
        self.done = asyncio.Event()

    async def __call__(self, fn: Any, incomings: list[intake.Incoming], lines: list[maillog.lines.Line]) -> list[int]:
        assert fn is intake.accept_many
        self.commits.append(([i.icid for i in incomings], [line.text for line in lines]))
        self.done.set()
        return [100 + i.icid for i in incomings]


def test_close_lines_ride_along_with_the_next_message_or_go_alone_after_the_linger(monkeypatch):
    monkeypatch.setattr(commit, "LINGER", 0.2)

    async def run() -> list[tuple[list[int], list[str]]]:
        recorder = Recorder()
        committer = commit.Committer(recorder, writers=1)
        committer.log([maillog.lines.icid_close(1)], linger=True)
        await asyncio.sleep(0)
        assert recorder.commits == []  # waiting for a message to go with
        assert await committer.submit(_incoming(2)) == 102
        committer.log([maillog.lines.icid_close(2)], linger=True)
        recorder.done.clear()
        await asyncio.wait_for(recorder.done.wait(), 5)  # no message comes: alone, after the linger
        monkeypatch.setattr(commit, "LINGER", 60.0)
        committer.log([maillog.lines.auth_failed(3, "mallory", "PLAIN")])  # not lingering: at once
        recorder.done.clear()
        await asyncio.wait_for(recorder.done.wait(), 5)
        committer.log([maillog.lines.icid_close(3)], linger=True)
        await committer.close()  # stopping writes what still lingers
        return recorder.commits

    assert asyncio.run(run()) == [
        ([2], ["ICID 1 close"]),
        ([], ["ICID 2 close"]),
        ([], ["SMTP Auth: (ICID 3) failed for user: mallory using AUTH mechanism: PLAIN"]),
        ([], ["ICID 3 close"]),
    ]
