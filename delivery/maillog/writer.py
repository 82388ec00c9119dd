"""The mail log's writer: database rows in the caller's transaction, then `mail.current` after commit.

`write()` stores `delivery.maillog.lines.Line`s in the database inside the caller's transaction (so a log line
exists if and only if the state change it describes was committed) and appends them to the file after commit, in
one batch under a file lock, rolling the file over by size or age (:class:`MailLogFile`).

The append happens in the committing thread, unless the process started the background writer
(`start_background_writer()`, the SMTP listener does): then a single thread appends, in commit order, whatever
committed batches are waiting in one write, and `flush()` (called at shutdown, at exit and by `rollover()`)
waits until everything handed to it is on disk. The database rows never wait for it.

The rows go in through `esaroutes.bulk.BulkInsert` (COPY on PostgreSQL, multi-row VALUES on SQLite).
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

from delivery.maillog import lines
from esaroutes import bulk

logger = logging.getLogger(__name__)


def write(batch: Sequence[lines.Line], *, at: datetime) -> None:
    """Store lines in the database (inside the caller's transaction) and append them to mail.current on commit."""
    if not batch:
        return
    line_insert().run(line_rows(batch, at=at))
    append_on_commit(batch, at=at)


def line_rows(batch: Sequence[lines.Line], *, at: datetime) -> list[tuple[object, ...]]:
    """The database rows of these lines (for `line_insert()`); `at` for those without a time of their own."""
    adapt = connection.ops.adapt_datetimefield_value
    default_at = adapt(at)
    return [
        (
            adapt(line.at) if line.at is not None else default_at,
            line.level,
            line.text,
            line.mid,
            line.icid,
            line.dcid,
            line.domain[:255],
            line.host[:255],
        )
        for line in batch
    ]


def append_on_commit(batch: Sequence[lines.Line], *, at: datetime) -> None:
    """Append the lines to mail.current once the transaction that stored them commits (at once outside one)."""
    if batch:
        rendered = [lines.format_line(line, at) for line in batch]
        transaction.on_commit(lambda: _append(rendered))


_line_insert_cache: bulk.BulkInsert | None = None


def line_insert() -> bulk.BulkInsert:
    """The insert of `line_rows()` into the mail log table."""
    global _line_insert_cache
    if _line_insert_cache is None:
        from delivery.models import MailLogLine  # the models import this module's builders' callers

        _line_insert_cache = bulk.BulkInsert(
            MailLogLine, ("at", "level", "text", "mid", "icid", "dcid", "domain", "host")
        )
    return _line_insert_cache


def _append(rendered: list[str]) -> None:
    if _background is not None and _background.running:
        _background.put(rendered)
    else:
        log_file().append(rendered)


class MailLogFile:
    """`mail.current` in the mail log directory, shared by every process of this machine.

    Appends happen under an exclusive flock, in one write() per batch. Rollover, when the file passes its size or
    age, renames it to `mail.@<timestamp>.s`, starts a new one and keeps the newest N saved files, as the ESA does.
    """

    def __init__(self, directory: Path, *, max_bytes: int, max_age: float, keep: int) -> None:
        self.directory = directory
        self.path = directory / "mail.current"
        self.lock_path = directory / ".mail.lock"
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.keep = keep
        self._births: dict[int, float] = {}
        self._made = False

    def append(self, rendered: Sequence[str]) -> None:
        data = "".join(line + "\n" for line in rendered).encode("utf-8", "backslashreplace")
        if not self._made or not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._rollover_if_due()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    if os.fstat(fd).st_size == 0:
                        data = self._header() + data
                    os.write(fd, data)
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def rollover(self) -> Path | None:
        """Roll over now (the ESA's `rollovernow`); returns the saved file."""
        flush()  # lines committed before the rollover belong to the file being saved
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._rollover()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def saved_files(self) -> list[Path]:
        return sorted(self.directory.glob("mail.@*.s"))

    def _header(self) -> bytes:
        now = time.time()
        offset = int(time.localtime(now).tm_gmtoff)
        header = [
            f"{time.ctime(now)} Info: Begin Logfile",
            f"{time.ctime(now)} Info: Version: esaroutes SN: {socket.gethostname()}",
            f"{time.ctime(now)} Info: Time offset from UTC: {offset} seconds",
        ]
        return "".join(line + "\n" for line in header).encode()

    def _rollover_if_due(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if st.st_size >= self.max_bytes or (st.st_size and time.time() - self._birth(st) >= self.max_age):
            self._rollover()

    def _birth(self, st: os.stat_result) -> float:
        """`_birth()` of the current file, read once per file (its inode), not on every append."""
        cached = self._births.get(st.st_ino)
        if cached is None:
            cached = _birth(self.path, st)
            self._births = {st.st_ino: cached}
        return cached

    def _rollover(self) -> Path | None:
        if not self.path.exists():
            return None
        with self.path.open("ab") as fh:
            fh.write(f"{time.ctime()} Info: Logfile rolled over\n".encode())
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
        target = self.directory / f"mail.@{stamp}.s"
        n = 1
        while target.exists():
            target = self.directory / f"mail.@{stamp}.{n}.s"
            n += 1
        self.path.rename(target)
        for old in self.saved_files()[: -self.keep or None]:
            old.unlink(missing_ok=True)
        return target


def _birth(path: Path, st: os.stat_result) -> float:
    """When mail.current was started: the time in its first line, else its change time."""
    try:
        with path.open("rb") as fh:
            first = fh.readline(64).decode("ascii", "replace")
        return time.mktime(time.strptime(first[:24], "%a %b %d %H:%M:%S %Y"))
    except (OSError, ValueError):
        return st.st_ctime


_log_file: MailLogFile | None = None


def log_file() -> MailLogFile:
    global _log_file
    if _log_file is None or _log_file.directory != settings.MAIL_LOG_DIR:
        _log_file = MailLogFile(
            settings.MAIL_LOG_DIR,
            max_bytes=settings.ESAROUTES_MAILLOG_MAX_BYTES,
            max_age=settings.ESAROUTES_MAILLOG_MAX_AGE,
            keep=settings.ESAROUTES_MAILLOG_KEEP,
        )
    return _log_file


# --- the background writer (the SMTP listener) --------------------------------------------------------------


class BackgroundWriter:
    """One thread appending committed batches to mail.current in the order they were handed over (commit order).

    `put()` never blocks on the file; the thread takes every batch waiting and appends them in one write.
    `flush()` waits until everything put before it is written (or failed: a failed append is logged, the lines
    stay in the database).
    """

    def __init__(self) -> None:
        self._items: deque[list[str]] = deque()
        self._cond = threading.Condition()
        self._queued = 0
        self._done = 0
        self.running = True
        self._thread = threading.Thread(target=self._loop, name="esaroutes-maillog", daemon=True)
        self._thread.start()

    def put(self, rendered: list[str]) -> None:
        with self._cond:
            self._items.append(rendered)
            self._queued += 1
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is self._thread:
            return True
        with self._cond:
            target = self._queued
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def stop(self, timeout: float | None = None) -> bool:
        flushed = self.flush(timeout)
        with self._cond:
            self.running = False
            self._cond.notify_all()
        self._thread.join(timeout)
        return flushed

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._items) or not self.running)
                if not self._items:
                    return
                batches = list(self._items)
                self._items.clear()
            try:
                log_file().append([line for batch in batches for line in batch])
            except Exception:
                logger.exception("%d mail log batches not appended to mail.current", len(batches))
            with self._cond:
                self._done += len(batches)
                self._cond.notify_all()


_background: BackgroundWriter | None = None
_background_users = 0
_background_lock = threading.Lock()


def start_background_writer() -> BackgroundWriter:
    """From now on this process appends to mail.current from one background thread (counted: stop once each)."""
    global _background, _background_users
    with _background_lock:
        if _background is None or not _background.running:
            _background = BackgroundWriter()
            atexit.register(flush)
        _background_users += 1
        return _background


def stop_background_writer(timeout: float | None = 30) -> None:
    """Flush, and when the last user stops, end the thread (appends are synchronous again)."""
    global _background_users
    with _background_lock:
        _background_users = max(0, _background_users - 1)
        writer = _background
        last = _background_users == 0
    if writer is None:
        return
    if last:
        writer.stop(timeout)
    else:
        writer.flush(timeout)


def flush(timeout: float | None = 30) -> bool:
    """Wait until every committed line handed to the background writer is in mail.current (True if so)."""
    writer = _background
    return writer.flush(timeout) if writer is not None and writer.running else True
