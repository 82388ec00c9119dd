"""What the listener knows about one connection, kept across STARTTLS."""

from __future__ import annotations

from dataclasses import dataclass, field

from delivery import maillog
from delivery.spool import intake


@dataclass
class Conn:
    """What the listener knows about one connection, across STARTTLS (which resets aiosmtpd's `session`)."""

    ip: str = ""
    icid: int = 0
    rdns: str = "unknown"
    relay: bool = False
    helo: str = ""
    tls: bool = False
    auth_user: str = ""
    messages: int = 0
    errors: int = 0
    pending: list[maillog.lines.Line] = field(default_factory=list)

    def log(self, line: maillog.lines.Line) -> None:
        self.pending.append(intake.stamp(line))
