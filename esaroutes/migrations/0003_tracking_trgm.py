"""Message tracking at scale on PostgreSQL: trigram GIN indexes for the text searches.

Tracking's "contains", "begins with" and "is" become `UPPER(col) LIKE UPPER('%x%')`, `... LIKE 'X%'` and
`UPPER(col) = UPPER('x')` in Django; a pg_trgm GIN index on UPPER(col) answers all three (equality since
PostgreSQL 14). On SQLite nothing is created: the default time window (last week) bounds the scan instead.
"""

from __future__ import annotations

from django.db import migrations

INDEXES = {
    "recipient_address_trgm": ("delivery_recipient", "address"),
    "message_sender_trgm": ("delivery_message", "sender"),
    "message_subject_trgm": ("delivery_message", "subject"),
}


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, (table, column) in INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin (UPPER({column}) gin_trgm_ops)")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for name in INDEXES:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("esaroutes", "0002_maillog_trgm")]
    operations = [migrations.RunPython(forwards, backwards)]
