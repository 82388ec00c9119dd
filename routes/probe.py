"""The "Test route" page's optional live check: connect to each host, EHLO, QUIT, and report what it answered.

No message is sent. Only aiosmtplib and asyncio here, no ORM, so `asyncio.run(probe_all(...))` is safe from a
view or a command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib


@dataclass(frozen=True)
class ProbeResult:
    host: str
    port: int
    ok: bool
    lines: tuple[str, ...]  # what was said, in order: "220 ...", "250 ...", "221 ..." or the failure
    seconds: float


async def probe(host: str, port: int, *, helo: str, seconds: float) -> ProbeResult:
    started = time.monotonic()
    lines: list[str] = []
    smtp = aiosmtplib.SMTP(hostname=host, port=port, local_hostname=helo, timeout=seconds, start_tls=False)
    ok = False
    try:
        greeting = await smtp.connect()
        lines.append(f"{greeting.code} {greeting.message}")
        ehlo = await smtp.ehlo()
        lines.append(f"{ehlo.code} {ehlo.message}")
        ok = True
        quit_reply = await smtp.quit()
        lines.append(f"{quit_reply.code} {quit_reply.message}")
    except aiosmtplib.SMTPResponseException as exc:
        lines.append(f"{exc.code} {exc.message}")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        lines.append(f"no answer: {type(exc).__name__}: {exc}")
    finally:
        smtp.close()
    return ProbeResult(host=host, port=port, ok=ok, lines=tuple(lines), seconds=time.monotonic() - started)


async def probe_all(targets: Sequence[tuple[str, int]], *, helo: str, seconds: float = 5.0) -> list[ProbeResult]:
    """Probe every (host, port) at once; results in the order given."""
    return list(await asyncio.gather(*(probe(h, p, helo=helo, seconds=seconds) for h, p in targets)))
