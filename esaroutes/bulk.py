"""The one bulk insert: many rows of one model in one statement, no model instances.

Used for the mail-log lines (`delivery.maillog.writer`), the messages, bodies and recipients the listener accepts
(`delivery.intake`), the delivery attempts (`delivery.queue`) and route imports (`routes.services`). On PostgreSQL
rows go by `COPY` (or, when their ids are wanted, one `INSERT ... SELECT FROM unnest(...) RETURNING id`); on
SQLite by a multi-row `INSERT ... VALUES`, the SQL text built once per row count. `insert_together()` writes the
rows of several inserts all or nothing, on PostgreSQL in one prepared statement (the listener's group commit).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from django.db import connection, models, transaction


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
        self._unnest_binary_sql = ""
        self._copy_sql = ""
        self._every_row: tuple[Any, ...] = ()
        self._chunk = 1
        self._sequence = ""

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
        names = [f"c{i}" for i in range(len(given))]

        def unnest(placeholder: str) -> str:
            columns = ", ".join(f"{placeholder}::{f.db_type(connection)}[]" for f in given)
            return (
                f"INSERT INTO {qn(opts.db_table)} ({', '.join(qn(f.column) for f in [*given, *rest])}) "
                f"SELECT {', '.join([*names, *placeholders[len(given) :]])} "
                f"FROM unnest({columns}) AS u({', '.join(names)}){self._tail}"
            )

        self._unnest_sql = unnest("%s")
        self._unnest_binary_sql = unnest("%b")  # server-side binding: arrays in binary, elements dumped in C
        if connection.vendor == "postgresql" and isinstance(opts.pk, models.AutoField | models.BigAutoField):
            self._sequence = f"pg_get_serial_sequence('{opts.db_table}', '{opts.pk.column}')"
        per_row = max(1, len(given) + len(constants))
        self._chunk = max(1, (30000 if connection.vendor == "sqlite" else 60000) // per_row)
        self._vendor = connection.vendor
        self._sql = {}

    def new_ids(self, n: int) -> list[int]:
        """PostgreSQL: n fresh primary keys from the table's sequence, in ascending order, for rows that give
        their own `id` (a rolled-back insert leaves a gap, as it would have with the sequence's default)."""
        if self._vendor != connection.vendor:
            self._prepare()
        if not self._sequence:
            raise NotImplementedError(f"{self.model.__name__}: no sequence to take ids from on {connection.vendor}")
        with _prepared() as cursor:
            cursor.execute(f"SELECT nextval({self._sequence}) FROM generate_series(1, %s::int)", [n], prepare=True)
            return sorted(int(row[0]) for row in cursor.fetchall())

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


def insert_together(*parts: tuple[BulkInsert, Sequence[Sequence[Any]]]) -> None:
    """The rows of several inserts, all or nothing (none of them `returning`).

    On PostgreSQL ONE statement, each insert a data-modifying CTE over `unnest()` of one array per column: one
    round trip, atomic by itself (no BEGIN and COMMIT of its own outside a transaction), its text the same
    whatever the numbers of rows, so psycopg prepares it once per connection. Against a COPY per table inside
    BEGIN and COMMIT, two round trips each, that took the listener's group commit from nine round trips to one.
    Elsewhere each insert in turn, inside one transaction.
    """
    for insert, _ in parts:
        if insert.returning:
            raise ValueError(f"{insert.model.__name__}: insert_together returns no ids")
        if insert._vendor != connection.vendor:
            insert._prepare()
    if connection.vendor != "postgresql":
        with transaction.atomic():
            for insert, rows in parts:
                insert.run(rows)
        return
    if not any(rows for _, rows in parts):
        return
    statements = [insert._unnest_binary_sql for insert, _ in parts]
    ctes = ", ".join(f"p{i} AS ({statement})" for i, statement in enumerate(statements[:-1]))
    sql = f"WITH {ctes} {statements[-1]}" if ctes else statements[-1]
    params: list[Any] = []
    for insert, rows in parts:
        params += insert._constants
        params += [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in insert.given]
    with _prepared() as cursor:
        cursor.execute(sql, params, prepare=True)


@contextlib.contextmanager
def _prepared() -> Iterator[Any]:
    """PostgreSQL: a server-side binding cursor on the current connection (Django's own bind on the client side,
    quoting every array element in Python), errors wrapped as Django's; its statements are prepared when
    executed with `prepare=True` (DATABASES' `prepare_threshold` is not None: see the settings)."""
    import psycopg  # PostgreSQL only

    with connection.cursor(), connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


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
