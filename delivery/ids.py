"""ICID and DCID: unique, increasing integers shared by every listener and worker on every machine.

MIDs are Message primary keys. On PostgreSQL, ICIDs and DCIDs come from real sequences (never blocked by another
transaction); on SQLite from a counter row bumped with UPDATE ... RETURNING. Call these outside long transactions.
"""

from __future__ import annotations

from typing import Literal

from django.db import connection

Name = Literal["icid", "dcid"]


def next_id(name: Name) -> int:
    if connection.vendor != "postgresql":
        return bump(name)
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(%s)", [f"esaroutes_{name}_seq"])
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def bump(name: str) -> int:
    """Add one to a named counter row and return its new value (1 for a counter that did not exist yet: the
    migration creates the ID rows, a flushed table, as after a test, starts them over). One atomic statement."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO delivery_idcounter (name, value) VALUES (%s, 1) ON CONFLICT (name) "
            "DO UPDATE SET value = delivery_idcounter.value + 1 RETURNING value",
            [name],
        )
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def current(name: Name) -> int:
    """The last ID handed out (0 if none), for status pages."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM esaroutes_{name}_seq")
        else:
            cursor.execute("SELECT value FROM delivery_idcounter WHERE name = %s", [name])
        row = cursor.fetchone()
    return int(row[0]) if row else 0
