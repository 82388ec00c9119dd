"""The mail log's indexes (delivery 0009): the set each database has, and that the readers' queries use them.

Each message writes about a dozen lines and every index costs the database on each one, so the table keeps only
the indexes a reader uses; these tests fail when one goes that a query needs, or one comes back unasked.
"""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.db.models import QuerySet

from delivery.models import MailLogLine
from delivery.monitor import selectors

pytestmark = pytest.mark.django_db

BOTH = {
    "delivery_maillogline_at_765b7e62",
    "maillog_mid",
    "maillog_icid",
    "maillog_dcid",
    "maillog_domain_id",
    "maillog_host_id",
    "maillog_level_id",
}


def test_the_table_has_only_the_indexes_its_readers_use():
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, MailLogLine._meta.db_table)
    names = {name for name, c in found.items() if c["index"] and not c["primary_key"]}
    expected = BOTH | ({"delivery_maillogline_text_trgm"} if connection.vendor == "postgresql" else set())
    assert names == expected


def _plan(qs: QuerySet[MailLogLine]) -> str:
    """The plan of `qs`; on PostgreSQL with sequential scans priced out, since the test table is nearly empty."""
    if connection.vendor != "postgresql":
        return qs.explain()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        return qs.explain()


LINES = MailLogLine.objects.order_by()


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (lambda: selectors.log_queryset(selectors.LogFilters(mid=3)).order_by(), "maillog_mid"),
        (lambda: selectors.log_queryset(selectors.LogFilters(icid=3)).order_by(), "maillog_icid"),
        (lambda: selectors.log_queryset(selectors.LogFilters(dcid=3)).order_by(), "maillog_dcid"),
        # Message.log_lines: a connection's lines that name no MID
        (lambda: LINES.filter(icid=3, mid__isnull=True), "maillog_icid"),
        (lambda: LINES.filter(dcid__in=[3, 4], mid__isnull=True), "maillog_dcid"),
        # the dashboard's newest host of a domain, the log page's host filter's MIDs, its level filter
        (
            lambda: MailLogLine.objects.filter(domain="dest.test", dcid__isnull=False).exclude(host="").order_by("-id"),
            "maillog_domain_id",
        ),
        (lambda: LINES.filter(host="mx.dest.test", mid__isnull=False), "maillog_host_id"),
        (lambda: MailLogLine.objects.filter(level="Warning").order_by("-id"), "maillog_level_id"),
    ],
)
def test_the_readers_queries_use_an_index(query, index):
    MailLogLine.objects.create(at="2026-01-01T00:00:00Z", text="x", mid=3, icid=3, dcid=3, domain="d", host="h")
    assert index in _plan(query())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the trigram index is PostgreSQL's")
def test_text_search_uses_the_trigram_index():
    assert "delivery_maillogline_text_trgm" in _plan(LINES.filter(text__icontains="Response"))
