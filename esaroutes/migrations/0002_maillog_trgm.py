"""Mail log indexes for the log page. Keyset pages ("id > N" / "id < N") filtered by domain, host or level use
(column, id) indexes on every database, so a filter with millions of matching lines still reads only one page.

Free-text search of the mail log on PostgreSQL: a trigram GIN index on MailLogLine.text (pg_trgm).

`icontains` becomes `UPPER(text) LIKE UPPER('%...%')` in Django, so the index is on UPPER(text). On SQLite
there is no such index: the log page bounds text searches by time instead.
"""

from __future__ import annotations

from django.db import migrations

INDEX = "delivery_maillogline_text_trgm"


KEYSET = ("domain", "host", "level")


def forwards(apps, schema_editor):
    for column in KEYSET:
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS maillog_{column}_id ON delivery_maillogline ({column}, id)")
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON delivery_maillogline USING gin (UPPER(text) gin_trgm_ops)"
    )


def backwards(apps, schema_editor):
    for column in KEYSET:
        schema_editor.execute(f"DROP INDEX IF EXISTS maillog_{column}_id")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("esaroutes", "0001_roles")]
    operations = [migrations.RunPython(forwards, backwards)]
