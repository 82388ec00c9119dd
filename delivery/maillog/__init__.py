"""The mail log: `lines` builds the ESA-format lines (pure), `writer` stores them and appends them to `mail.current`.

Callers import the package and name the part: `maillog.lines.rcpt_outcome(...)`, `maillog.writer.write(batch, at=now)`.
"""

from __future__ import annotations

from delivery.maillog import lines, writer

__all__ = ["lines", "writer"]
