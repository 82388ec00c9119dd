"""Fewer and smaller mail-log indexes: each message writes about a dozen lines, and PostgreSQL pays for every
index on every line (bench/relay.py, docs/benchmarks.md). What each reader uses, after this migration:

    id (primary key)     the live tail, the newest lines, keyset pages, the API's cursor, max(id)
    at                   the log page's since/until (and, on SQLite, its time-bounded text search)
    mid, icid, dcid      a message's or connection's lines (log page, tracking, API): partial, `IS NOT NULL`,
                         since most lines name no ICID or DCID; `col = x` uses them on both databases
    (domain, id), (host, id), (level, id)
                         the log page's filters, the dashboard's and the domain page's newest host
                         (esaroutes 0002). On PostgreSQL partial here: `WHERE domain <> ''`, `host <> ''`,
                         `level <> 'Info'`, which its planner proves from `domain = x` (x never ''), from
                         `level = 'Warning'`; a filter on Info (nearly every line) reads the primary key
                         backwards. SQLite uses a partial index only for `IS NOT NULL` conditions: full there.
    UPPER(text) trigram  free-text search on PostgreSQL (esaroutes 0002), kept as it was

Dropped: the single-column indexes on domain and host (the (column, id) ones serve every `column = x`) and their
PostgreSQL `_like` (varchar_pattern_ops) twins: no query matches a prefix of domain or host.
The field's `db_index=False` is state only: the indexes are dropped by name (an AlterField remakes the whole
table on SQLite).
"""

from __future__ import annotations

from django.db import migrations, models

#: The indexes Django made for `db_index=True` in 0001 (its names are a hash of table and column: the same on
#: every database), PostgreSQL's `_like` twin with each char column's.
SINGLE = {
    "mid": "delivery_maillogline_mid_da2b174f",
    "icid": "delivery_maillogline_icid_1611c7f1",
    "dcid": "delivery_maillogline_dcid_557e6bcc",
    "domain": "delivery_maillogline_domain_db45bf03",
    "host": "delivery_maillogline_host_0f4fc1dc",
}
LIKE = ("domain", "host")

#: esaroutes 0002's keyset indexes, and what PostgreSQL leaves out of each.
KEYSET = {"domain": "domain <> ''", "host": "host <> ''", "level": "level <> 'Info'"}


def forwards(apps, schema_editor):
    postgresql = schema_editor.connection.vendor == "postgresql"
    for column, name in SINGLE.items():
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
        if postgresql and column in LIKE:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}_like")
    if postgresql:
        for column, condition in KEYSET.items():
            schema_editor.execute(f"DROP INDEX IF EXISTS maillog_{column}_id")
            schema_editor.execute(
                f"CREATE INDEX maillog_{column}_id ON delivery_maillogline ({column}, id) WHERE {condition}"
            )


def backwards(apps, schema_editor):
    postgresql = schema_editor.connection.vendor == "postgresql"
    for column, name in SINGLE.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON delivery_maillogline ({column})")
        if postgresql and column in LIKE:
            schema_editor.execute(
                f"CREATE INDEX IF NOT EXISTS {name}_like ON delivery_maillogline ({column} varchar_pattern_ops)"
            )
    if postgresql:
        for column in KEYSET:
            schema_editor.execute(f"DROP INDEX IF EXISTS maillog_{column}_id")
            schema_editor.execute(f"CREATE INDEX maillog_{column}_id ON delivery_maillogline ({column}, id)")


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0008_delay_warnings"),
        ("esaroutes", "0002_maillog_trgm"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="maillogline",
                    name=name,
                    field=models.BigIntegerField(blank=True, null=True),
                )
                for name in ("mid", "icid", "dcid")
            ]
            + [
                migrations.AlterField(
                    model_name="maillogline",
                    name=name,
                    field=models.CharField(blank=True, max_length=255),
                )
                for name in ("domain", "host")
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
        migrations.AddIndex(
            model_name="maillogline",
            index=models.Index(condition=models.Q(mid__isnull=False), fields=["mid"], name="maillog_mid"),
        ),
        migrations.AddIndex(
            model_name="maillogline",
            index=models.Index(condition=models.Q(icid__isnull=False), fields=["icid"], name="maillog_icid"),
        ),
        migrations.AddIndex(
            model_name="maillogline",
            index=models.Index(condition=models.Q(dcid__isnull=False), fields=["dcid"], name="maillog_dcid"),
        ),
    ]
