"""The mail log's writer: database rows in the caller's transaction, then `mail.current` after commit.

`write()` stores `delivery.maillog.lines.Line`s in the database inside the caller's transaction (so a log line
exists if and only if the state change it describes was committed) and appends them to the file after commit, in
one batch under a file lock, rolling the file over by size or age (:class:`MailLogFile`).

The append happens in the committing thread, unless the process started the background writer
(`start_background_writer()`, the SMTP listener does): then a single thread appends, in commit order, whatever
committed batches are waiting in one write, and `flush()` (called at shutdown, at exit and by `rollover()`)
waits until everything handed to it is on disk. The database rows never wait for it.

`BulkInsert` is the multi-row INSERT with explicit columns used for the log lines and by `intake` for messages:
no model instances, the SQL text built once per row count.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction

from delivery.maillog import lines

logger = logging.getLogger("delivery.maillog")


def write(batch: Sequence[lines.Line], *, at: datetime) -> None:
    """Store lines in the database (inside the caller's transaction) and append them to mail.current on commit."""
    if not batch:
        return
    adapt = connection.ops.adapt_datetimefield_value
    default_at = adapt(at)
    _line_insert().run(
        [
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
    )
    rendered = [lines.format_line(line, at) for line in batch]
    transaction.on_commit(lambda: _append(rendered))


_line_insert_cache: BulkInsert | None = None


def _line_insert() -> BulkInsert:
    global _line_insert_cache
    if _line_insert_cache is None:
        from delivery.models import MailLogLine  # the models import this module's builders' callers

        _line_insert_cache = BulkInsert(MailLogLine, ("at", "level", "text", "mid", "icid", "dcid", "domain", "host"))
    return _line_insert_cache


class BulkInsert:
    """`INSERT INTO t (every column) VALUES (...), (...) [RETURNING id]` for one model, on the current connection
    (on PostgreSQL: `COPY`, or `INSERT ... SELECT FROM unnest(...) RETURNING id`; see `_prepare`).

    `given` are the attnames each row supplies, in order, already adapted for the database (datetimes through
    `connection.ops.adapt_datetimefield_value`); `fixed` sets other columns to one value for every row; every
    other column but an auto primary key gets the model field's default, so a column added later with a default
    needs no change here. Constant values that are plain numbers, NULL or simple words are written into the SQL
    text, the rest are parameters. Rows are sent in chunks that stay under the database's parameter limit.
    """

    def __init__(
        self,
        model: type[models.Model],
        given: Sequence[str],
        *,
        fixed: dict[str, Any] | None = None,
        returning: bool = False,
    ) -> None:
        self.model = model
        self.given = tuple(given)
        self.fixed = dict(fixed or {})
        self.returning = returning
        self._vendor = ""
        self._sql: dict[int, str] = {}
        self._constants: tuple[Any, ...] = ()
        self._row_sql = ""
        self._unnest_sql = ""
        self._copy_sql = ""
        self._every_row: tuple[Any, ...] = ()
        self._chunk = 1

    def _prepare(self) -> None:
        opts = self.model._meta
        by_attname = {f.attname: f for f in opts.concrete_fields}
        given = [by_attname[a] for a in self.given]
        rest = [
            f
            for f in opts.concrete_fields
            if f.attname not in self.given
            and not (f.primary_key and isinstance(f, models.AutoField | models.BigAutoField | models.SmallAutoField))
        ]
        placeholders = ["%s"] * len(given)
        constants: list[Any] = []
        every_row: list[Any] = []
        for f in rest:
            value = self.fixed[f.attname] if f.attname in self.fixed else f.get_default()
            value = f.get_db_prep_save(value, connection)
            every_row.append(value)
            literal = _sql_literal(value)
            if literal is None:
                placeholders.append("%s")
                constants.append(value)
            else:
                placeholders.append(literal)
        self._constants = tuple(constants)
        qn = connection.ops.quote_name
        self._head = f"INSERT INTO {qn(opts.db_table)} ({', '.join(qn(f.column) for f in [*given, *rest])}) VALUES "
        self._row_sql = "(" + ", ".join(placeholders) + ")"
        self._tail = f" RETURNING {qn(opts.pk.column)}" if self.returning else ""
        # PostgreSQL: psycopg parses a statement it has not cached (over 50 parameters or 4 KB, as every
        # multi-row VALUES list here was) with a regular expression on each call, and quotes each parameter in
        # Python: that was a third of the listener's CPU time. Rows without RETURNING go by COPY (rows formatted
        # in C: 50 log lines cost 0.55 ms of CPU instead of 2.1); rows with it as one array per column through
        # unnest(), so the statement's text stays the same whatever the number of rows.
        self._copy_sql = f"COPY {qn(opts.db_table)} ({', '.join(qn(f.column) for f in [*given, *rest])}) FROM STDIN"
        self._every_row = tuple(every_row)
        columns = ", ".join(f"%s::{f.db_type(connection)}[]" for f in given)
        names = [f"c{i}" for i in range(len(given))]
        self._unnest_sql = (
            f"INSERT INTO {qn(opts.db_table)} ({', '.join(qn(f.column) for f in [*given, *rest])}) "
            f"SELECT {', '.join([*names, *placeholders[len(given) :]])} "
            f"FROM unnest({columns}) AS u({', '.join(names)}){self._tail}"
        )
        per_row = max(1, len(given) + len(constants))
        self._chunk = max(1, (30000 if connection.vendor == "sqlite" else 60000) // per_row)
        self._vendor = connection.vendor
        self._sql = {}

    def run(self, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert the rows; with `returning`, their primary keys in row order (else [])."""
        if self._vendor != connection.vendor:
            self._prepare()
        constants = self._constants
        if self._vendor == "postgresql":
            if not rows:
                return []
            if not self.returning:
                every_row = self._every_row
                with connection.cursor() as cursor, cursor.cursor.copy(self._copy_sql) as copy:
                    for row in rows:
                        copy.write_row((*row, *every_row))
                return []
            with connection.cursor() as cursor:
                cursor.execute(self._unnest_sql, [*constants, *(list(column) for column in zip(*rows, strict=True))])
                return [int(r[0]) for r in cursor.fetchall()]
        out: list[int] = []
        with connection.cursor() as cursor:
            for start in range(0, len(rows), self._chunk):
                chunk = rows[start : start + self._chunk]
                sql = self._sql.get(len(chunk))
                if sql is None:
                    sql = self._sql[len(chunk)] = self._head + ", ".join([self._row_sql] * len(chunk)) + self._tail
                params: list[Any] = []
                for row in chunk:
                    params += row
                    params += constants
                cursor.execute(sql, params)
                if self.returning:
                    out += [int(r[0]) for r in cursor.fetchall()]
        return out


_SIMPLE = re.compile(r"[A-Za-z0-9_ .:-]*")


def _sql_literal(value: Any) -> str | None:
    """The SQL text of a constant that needs no quoting rules beyond '...': None, ints, simple words."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and _SIMPLE.fullmatch(value):
        return f"'{value}'"
    return None


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
