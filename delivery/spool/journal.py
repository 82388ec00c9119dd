"""The delivery journal: deliveries a worker process has seen answered 250 but has not yet recorded.

A worker records outcomes by group commit (`delivery.worker`): everything that came back since the last commit
goes in one transaction. A process killed between a 250 and that commit used to leave its messages leased and
queued, and after the lease ran out they were sent again (1.5 to 3.9 duplicates per SIGKILL under load). Now the
report of every delivery is appended to this process's journal file the moment the runner has it, before it goes
to the recorder: one `write()` to a local file, which survives the death of the process (not of the machine: no
fsync, a power cut still means the old window).

    var/journal/<pid>-<random>-<n>.jnl     length-prefixed pickles of `outcome.Report`, flock'ed by their live owner

* A process holds an exclusive `flock` on each of its journal files for as long as it lives; the kernel drops it
  when the process dies, SIGKILL included. A file whose lock can be taken belongs to a dead process.
* :func:`recover` (at the start of every batch and every sweep) records the reports of dead processes'
  files whose recipients are still active in the database (a report is recorded in one transaction, so one
  active recipient means it was not), then deletes the files. That runs within seconds of a kill, long before
  the lease (ESAROUTES_LEASE_SECONDS) runs out and the message could be claimed again.
* A live process whose recording failed (the database went away) lets go of its files (:meth:`Journal.abandon`):
  the next :func:`recover`, its own next batch's included, records them once the database is back.
* Files rotate every 1,000 entries or 60 s; one is deleted when every report in it is recorded.
* Recovery never loops on an entry: reports are recorded through the recorder its caller passes in
  (`record.record_safely`: one by one, with safe texts, reduced to their facts if need be); an entry that still
  fails, or a file the database keeps refusing (QUARANTINE_AFTER times) while it answers, is set aside in
  ``<name>.bad`` with an application-log error.

The window left is the time between the peer's 250 leaving it and the runner reading it: a kill inside it sends
that message again (at most one per open connection of the killed process). Nothing else can be closed from this
side of the SMTP conversation (RFC 1047).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import logging
import os
import pickle
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from delivery import outcome
from delivery.models import Recipient
from delivery.spool import lease

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
ROTATE_ENTRIES = 1000
ROTATE_SECONDS = 60.0


def directory() -> Path:
    return Path(settings.JOURNAL_DIR)


@dataclasses.dataclass
class _Segment:
    number: int
    path: Path
    fd: int
    opened: float
    entries: int = 0
    outstanding: int = 0  # entries not yet recorded


class Journal:
    """This process's journal files. Thread-safe: the runner appends, batch threads mark reports recorded."""

    def __init__(self, where: Path) -> None:
        self.pid = os.getpid()
        self.where = where
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._next = 0
        self._tag = secrets.token_hex(4)

    # -- writing -------------------------------------------------------------------------------------------

    def note(self, report: outcome.Report) -> None:
        """Journal REPORT if it delivers anything; tags it with its file for :meth:`recorded`."""
        if not any(f.state == "delivered" for f in report.finals):
            return
        now = timezone.now()
        stamped = dataclasses.replace(
            report, lines=[line if line.at else dataclasses.replace(line, at=now) for line in report.lines]
        )
        data = pickle.dumps(stamped, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            segment = self._segment()
            os.write(segment.fd, _HEADER.pack(len(data)) + data)  # one write: a reader sees all of it or a torn tail
            segment.entries += 1
            segment.outstanding += 1
            report.journal = segment.number

    def recorded(self, reports: Iterable[outcome.Report]) -> None:
        """These reports are committed: a file with nothing outstanding (and no longer written) goes."""
        with self._lock:
            for report in reports:
                segment = self._segments.get(report.journal) if report.journal else None
                if segment is not None:
                    segment.outstanding -= 1
                    report.journal = 0
            for segment in [s for s in self._segments.values() if s.outstanding <= 0 and s is not self._current]:
                self._drop(segment)

    def abandon(self) -> None:
        """Recording failed (the database went away): leave every file with outstanding entries to
        :func:`recover` (this process's next batch runs it too) and start new ones."""
        self.close()

    def close(self) -> None:
        """Stop journaling (process shutdown): files with outstanding entries stay for :func:`recover`."""
        with self._lock:
            for segment in list(self._segments.values()):
                if segment.outstanding <= 0:
                    self._drop(segment)
                else:
                    os.close(segment.fd)
            self._segments.clear()
            self._current = None

    def _segment(self) -> _Segment:
        current = self._current
        if current is not None and (
            current.entries >= ROTATE_ENTRIES or time.monotonic() - current.opened > ROTATE_SECONDS
        ):
            if current.outstanding <= 0:
                self._drop(current)
            current = self._current = None
        if current is None:
            self.where.mkdir(parents=True, exist_ok=True)
            self._next += 1
            # A random part: a later process with the same PID must never replace a file not yet recovered
            path = self.where / f"{self.pid}-{self._tag}-{self._next}.jnl"
            # Locked under a name recover() does not look at, then renamed: never an unlocked .jnl of a live process
            building = path.with_suffix(".new")
            fd = os.open(building, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            building.rename(path)
            current = self._current = self._segments[self._next] = _Segment(self._next, path, fd, time.monotonic())
        return current

    def _drop(self, segment: _Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
        os.close(segment.fd)
        self._segments.pop(segment.number, None)
        if self._current is segment:
            self._current = None


_journal: Journal | None = None
_journal_lock = threading.Lock()


def get() -> Journal:
    """This process's journal (a new one after a fork: a child never writes its parent's files)."""
    global _journal
    with _journal_lock:
        if _journal is None or _journal.pid != os.getpid() or _journal.where != directory():
            if _journal is not None and _journal.pid == os.getpid():
                _journal.close()  # the directory changed (tests): what is outstanding stays for recover()
            _journal = Journal(directory())
        return _journal


def shutdown() -> None:
    global _journal
    with _journal_lock:
        if _journal is not None and _journal.pid == os.getpid():
            _journal.close()
        _journal = None


# -- reading back --------------------------------------------------------------------------------------------


#: Where the types a journal holds lived before the layout of 2026-12 (issue 18): a journal a process left
#: behind just before an upgrade still reads, so its deliveries are recorded rather than sent again.
MOVED = {
    ("delivery.runner", "Report"): ("delivery.outcome", "Report"),
    ("delivery.runner", "Final"): ("delivery.outcome", "Final"),
    ("delivery.runner", "Attempt"): ("delivery.outcome", "Attempt"),
    ("delivery.runner", "Rcpt"): ("delivery.outcome", "Rcpt"),
    ("delivery.hosts", "HostEvent"): ("delivery.outcome", "HostEvent"),
    ("delivery.maillog", "Line"): ("delivery.maillog.lines", "Line"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module, name = MOVED.get((module, name), (module, name))
        return super().find_class(module, name)


def read(path: Path) -> list[outcome.Report]:
    """The reports in a journal file; a torn last entry (the process died inside its write) is left out."""
    data = path.read_bytes()
    out: list[outcome.Report] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        (size,) = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        if start + size > len(data):
            break
        entry = io.BytesIO(data[start : start + size])
        out.append(_Unpickler(entry).load())  # our own file (mode 0600, in DATA_DIR), never input
        offset = start + size
    return out


def recover(record: Callable[[list[outcome.Report]], object]) -> int:
    """Record what dead processes of this machine journaled and did not record; returns reports recorded.

    Never raises: a file that cannot be recorded now (the database is down) stays for the next call.
    """
    where = directory()
    if not where.is_dir():
        return 0
    for building in where.glob("*.new"):  # a process died between creating its file and naming it: empty
        with contextlib.suppress(FileNotFoundError):
            if time.time() - building.stat().st_mtime > ROTATE_SECONDS:
                building.unlink()
    total = 0
    for path in sorted(where.glob("*.jnl")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # recovered by another process meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            try:
                if os.fstat(fd).st_ino != path.stat().st_ino:
                    continue  # deleted (and maybe reused) since we opened it
            except FileNotFoundError:
                continue
            try:
                reports = read(path)
            except Exception:
                logger.exception("journal %s cannot be read; set aside as %s.bad", path, path.name)
                path.rename(path.with_suffix(".bad"))
                continue
            try:
                total += record_unrecorded(reports, record)
            except Exception as exc:
                if not _quarantine_due(path, exc):
                    logger.warning("journal %s: recording failed, will try again", path, exc_info=True)
                    continue
                total += _quarantine(path, reports, record)
            _failures.pop(path.name, None)
            path.unlink()
        finally:
            os.close(fd)
    if total:
        logger.warning("recorded %s deliveries journaled by worker processes that died before recording them", total)
    return total


#: Failed recoveries of a journal file, by name: after QUARANTINE_AFTER of them with the database answering,
#: its entries are recorded one by one and those that still fail are set aside (never an endless retry).
_failures: dict[str, int] = {}
QUARANTINE_AFTER = 3


def _quarantine_due(path: Path, exc: BaseException) -> bool:
    """Whether a file whose recording failed with EXC is to be dealt with entry by entry now."""
    if not isinstance(exc, lease.DATABASE_GONE):
        return True  # record_safely() already reduced each report to its facts: another try changes nothing
    failures = _failures[path.name] = _failures.get(path.name, 0) + 1
    if failures < QUARANTINE_AFTER:
        return False
    try:  # the database is there, and still this file cannot be recorded: something in it
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return False
    return True


def _quarantine(path: Path, reports: Sequence[outcome.Report], record: Callable[[list[outcome.Report]], object]) -> int:
    """Record the file's entries one at a time; those that cannot be go to ``<name>.bad``, with an error in the
    application log (an operator's matter: their recipients are still queued and will be sent again)."""
    recorded = 0
    bad: list[outcome.Report] = []
    for report in reports:
        try:
            recorded += record_unrecorded([report], record)
        except Exception:
            logger.exception("journal %s: a delivery of MID %s cannot be recorded", path, _mids(report))
            bad.append(report)
    if bad:
        aside = path.with_suffix(".bad")
        with aside.open("ab") as out:
            for report in bad:
                data = pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL)
                out.write(_HEADER.pack(len(data)) + data)
        logger.error(
            "journal %s: %s deliveries (MID %s) could not be recorded and are set aside in %s; their recipients "
            "stay queued and are sent again unless recorded by hand",
            path,
            len(bad),
            ", ".join(_mids(r) for r in bad),
            aside,
        )
    return recorded


def _mids(report: outcome.Report) -> str:
    return ", ".join(str(mid) for mid in sorted({f.mid for f in report.finals})) or "-"


def record_unrecorded(reports: Sequence[outcome.Report], record: Callable[[list[outcome.Report]], object]) -> int:
    """Record the reports not recorded yet; returns how many. Raises if recording does.

    A report is recorded in one transaction, so it is not recorded yet if a recipient it delivers is still
    active (its other recipients may be active either way: delayed is active). Recording goes through RECORD,
    `record.record_safely()` in the callers: a report that cannot be recorded as it is is recorded with safe
    texts, or reduced to its facts, so a bad entry never fails the file over and over.
    """
    if not reports:
        return 0
    pairs = {(f.mid, f.rid) for r in reports for f in r.finals}
    active = set(
        Recipient.objects.filter(message_id__in={mid for mid, _ in pairs}, state__in=lease.ACTIVE).values_list(
            "message_id", "rid"
        )
    )
    todo = [r for r in reports if any(f.state == "delivered" and (f.mid, f.rid) in active for f in r.finals)]
    if todo:
        record(todo)
    return len(todo)
