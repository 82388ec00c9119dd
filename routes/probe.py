"""The "Test route" page's optional live check: connect to each host, EHLO, QUIT, and report what it answered.

No message is sent. Only aiosmtplib and asyncio here, no ORM, so `asyncio.run(probe_all(...))` is safe from a
view or a command. The host name is resolved here and each address checked against the allowed networks
(`esaroutes.egress`) before connecting: a refused one is never connected to, and the answer says why.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from esaroutes import egress


@dataclass(frozen=True)
class ProbeResult:
    host: str
    port: int
    ok: bool
    lines: tuple[str, ...]  # what was said, in order: "220 ...", "250 ...", "221 ..." or the failure
    seconds: float


async def _allowed_address(host: str, port: int, networks: Sequence[egress.Network] | None) -> str:
    """The first address of `host` the egress setting allows; raises egress.Refused (or a lookup's OSError)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if egress.allowed(address, networks):
            return address
    raise egress.Refused(egress.refusal(addresses[0] if addresses else host))


async def probe(
    host: str, port: int, *, helo: str, seconds: float, networks: Sequence[egress.Network] | None = None
) -> ProbeResult:
    started = time.monotonic()
    lines: list[str] = []
    try:
        async with asyncio.timeout(seconds):
            address = await _allowed_address(host, port, networks)
    except egress.Refused as exc:
        lines.append(f"refused: {exc}")
        return ProbeResult(host=host, port=port, ok=False, lines=tuple(lines), seconds=time.monotonic() - started)
    except (OSError, TimeoutError) as exc:
        lines.append(f"no answer: {type(exc).__name__}: {exc}")
        return ProbeResult(host=host, port=port, ok=False, lines=tuple(lines), seconds=time.monotonic() - started)
    smtp = aiosmtplib.SMTP(hostname=address, port=port, local_hostname=helo, timeout=seconds, start_tls=False)
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


async def probe_all(
    targets: Sequence[tuple[str, int]],
    *,
    helo: str,
    seconds: float = 5.0,
    networks: Sequence[egress.Network] | None = None,
) -> list[ProbeResult]:
    """Probe every (host, port) at once; results in the order given."""
    return list(await asyncio.gather(*(probe(h, p, helo=helo, seconds=seconds, networks=networks) for h, p in targets)))
