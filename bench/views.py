"""Operator views benchmark: fill the mail log with 1,000,000 lines and 100,000 messages, then time the pages.

Runs against the configured database (migrate it first) and REPLACES its queue and mail log tables:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_h6bench .venv/bin/python manage.py migrate
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_h6bench .venv/bin/python bench/views.py
    env -u DATABASE_URL ESAROUTES_DATA_DIR=var/bench .venv/bin/python manage.py migrate
    env -u DATABASE_URL ESAROUTES_DATA_DIR=var/bench .venv/bin/python bench/views.py [--messages 100000]

The data: `--messages` messages received over the last 20 hours (one to three recipients at 500 domains, one or
two attempts each over 1,000 hosts, some delayed, some bounced, 2 % still queued) and their ESA log lines, topped
up with connection lines to exactly `--lines` lines. PostgreSQL loads through COPY, SQLite through bulk inserts.

Page times are server response times through Django's test client, logged in as a superuser (median and worst
of `--repeat` requests, after one warm-up request), including template rendering.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "esaroutes.settings")

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

from delivery.models import DeliveryAttempt, HostStatus, MailLogLine, Message, Recipient  # noqa: E402

TABLES = {
    "delivery_message": ["id", "icid", "sender", "client_address", "client_helo", "auth_user", "message_id",
                         "subject", "size", "received_at", "state", "next_attempt_at", "leased_by", "finished_at"],
    "delivery_recipient": ["id", "message_id", "rid", "address", "domain", "state", "next_attempt_at", "attempts",
                           "last_code", "last_response", "last_host", "dsn_status", "finished_at"],
    "delivery_deliveryattempt": ["id", "recipient_id", "message_id", "dcid", "at", "host", "ip", "port", "code",
                                 "response", "outcome"],
    "delivery_maillogline": ["id", "at", "level", "text", "mid", "icid", "dcid", "domain", "host"],
    "delivery_hoststatus": ["id", "host", "port", "consecutive_failures", "last_error", "delivered", "failed",
                            "connections_out", "last_success_at"],
}  # fmt: skip


def generate(messages: int, lines_wanted: int, now: datetime, seed: int = 6) -> dict[str, list[tuple[Any, ...]]]:
    rng = random.Random(seed)
    rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
    start = now - timedelta(hours=20)
    step = timedelta(hours=20) / messages
    rid_pk = att_pk = line_pk = 0
    dcid = 5_000_000
    words = ["invoice", "report", "meeting", "order", "newsletter", "alert", "reminder", "welcome", "update", "ticket"]

    def line(at: datetime, text: str, **k: Any) -> None:
        nonlocal line_pk
        line_pk += 1
        rows["delivery_maillogline"].append(
            (line_pk, at, k.get("level", "Info"), text, k.get("mid"), k.get("icid"), k.get("dcid"),
             k.get("domain", ""), k.get("host", ""))
        )  # fmt: skip

    for mid in range(1, messages + 1):
        at = start + step * mid
        icid = 1_000_000 + mid
        sender = f"user{rng.randrange(5000)}@corp{rng.randrange(50)}.example"
        subject = f"{rng.choice(words)} {rng.choice(words)} #{mid}"
        queued = rng.random() < 0.02
        n_rcpt = rng.choice((1, 1, 1, 2, 3))
        rows["delivery_message"].append(
            (mid, icid, sender, "10.0.0.1", "client.example", "", f"<{mid}.{icid}@corp.example>", subject,
             2000 + mid % 5000, at, "queued" if queued else "done", at if queued else None, "",
             None if queued else at + timedelta(seconds=2))
        )  # fmt: skip
        line(at, f"Start MID {mid} ICID {icid}", mid=mid, icid=icid)
        line(at, f"MID {mid} ICID {icid} From: <{sender}>", mid=mid, icid=icid)
        recipients = []
        for rid in range(n_rcpt):
            d = rng.randrange(500)
            domain = f"dest{d}.example"
            address = f"rcpt{rng.randrange(100_000)}@{domain}"
            recipients.append((rid, address, domain, d))
            line(at, f"MID {mid} ICID {icid} RID {rid} To: <{address}>", mid=mid, icid=icid, domain=domain)
        line(at, f"MID {mid} Message-ID '<{mid}.{icid}@corp.example>'", mid=mid)
        line(at, f"MID {mid} Subject {subject!r}", mid=mid)
        line(at, f"MID {mid} ready {2000 + mid % 5000} bytes from <{sender}>", mid=mid)
        line(at, f"MID {mid} queued for delivery", mid=mid)
        for rid, address, domain, d in recipients:
            rid_pk += 1
            host = f"mx{d * 2 + rng.randrange(2)}.dest{d}.example"
            t = at + timedelta(seconds=1)
            fate = rng.random()
            if queued:
                rows["delivery_recipient"].append(
                    (rid_pk, mid, rid, address, domain, "queued", at, 0, None, "", "", "", None)
                )
                continue
            if fate < 0.1:  # failed over first
                dcid += 1
                att_pk += 1
                rows["delivery_deliveryattempt"].append(
                    (att_pk, rid_pk, mid, dcid, t, host, "192.0.2.1", 25, 451, "4.3.0 busy", "next_host")
                )
                line(
                    t,
                    f"New SMTP DCID {dcid} interface Data 1 address 192.0.2.1 port 25",
                    dcid=dcid,
                    domain=domain,
                    host=host,
                )
                line(
                    t,
                    f"Delayed: DCID {dcid} MID {mid} From: <{sender}> To: <{address}> RID {rid} - 4.3.0 - "
                    f"Other ('451', ['4.3.0 busy'])",
                    mid=mid,
                    dcid=dcid,
                    domain=domain,
                    level="Info",
                )
            dcid += 1
            att_pk += 1
            code, reply, outcome, state = (
                (550, "5.1.1 unknown user", "bounced", "bounced") if fate > 0.97 else (250, "2.0.0 Ok", "delivered",
                                                                                        "delivered"))  # fmt: skip
            rows["delivery_deliveryattempt"].append(
                (att_pk, rid_pk, mid, dcid, t, host, "192.0.2.2", 25, code, reply, outcome)
            )
            rows["delivery_recipient"].append(
                (rid_pk, mid, rid, address, domain, state, None, 1, code, reply, host, "", t)
            )
            line(
                t,
                f"New SMTP DCID {dcid} interface Data 1 address 192.0.2.2 port 25",
                dcid=dcid,
                domain=domain,
                host=host,
            )
            line(t, f"Delivery start DCID {dcid} MID {mid} to RID [{rid}]", mid=mid, dcid=dcid)
            line(t, f"Message done DCID {dcid} MID {mid} to RID [{rid}]", mid=mid, dcid=dcid)
        if not queued:
            line(at + timedelta(seconds=2), f"Message finished MID {mid} done", mid=mid)
    while line_pk < lines_wanted:  # top up with idle connection lines
        dcid += 1
        line(now - timedelta(seconds=rng.randrange(72_000)), f"DCID {dcid} close", dcid=dcid)
    del rows["delivery_maillogline"][lines_wanted:]
    for i in range(1000):
        rows["delivery_hoststatus"].append(
            (i + 1, f"mx{i}.dest{i // 2}.example", 25, 0, "", rng.randrange(1000), rng.randrange(20), 0, now)
        )
    return rows


def load(rows: dict[str, list[tuple[Any, ...]]]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        tables = ", ".join(TABLES)
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
            for table, columns in TABLES.items():
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows[table]:
                        copy.write_row(row)
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
                )
        else:
            for table in TABLES:
                cursor.execute(f"DELETE FROM {table}")
            for table, columns in TABLES.items():
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
                for chunk in _chunks(rows[table], 20_000):
                    cursor.executemany(sql, chunk)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def timed(client: Client, path: str, repeat: int, **headers: str) -> tuple[float, float, int]:
    response = client.get(path, headers=headers)
    assert response.status_code in (200, 204), (path, response.status_code)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(path, headers=headers)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times), response.status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="reuse the data already loaded")
    args = parser.parse_args()
    now = timezone.now()
    if not args.keep or MailLogLine.objects.count() < args.lines:
        t0 = time.perf_counter()
        rows = generate(args.messages, args.lines, now)
        t1 = time.perf_counter()
        load(rows)
        t2 = time.perf_counter()
        print(f"generated in {t1 - t0:.1f} s, loaded in {t2 - t1:.1f} s ({connection.vendor})")
    counts = {
        "messages": Message.objects.count(),
        "recipients": Recipient.objects.count(),
        "attempts": DeliveryAttempt.objects.count(),
        "log lines": MailLogLine.objects.count(),
        "hosts": HostStatus.objects.count(),
    }
    print(", ".join(f"{v:,} {k}" for k, v in counts.items()))

    setup_test_environment()
    user_model = get_user_model()
    admin = user_model.objects.filter(username="bench-admin").first() or user_model.objects.create_superuser(
        "bench-admin", "bench@example.test", None
    )
    client = Client()
    client.force_login(admin)
    mid = Message.objects.order_by("-id").values_list("id", flat=True)[Message.objects.count() // 2]
    last = MailLogLine.objects.order_by("-id").values_list("id", flat=True).first() or 0
    address = Recipient.objects.filter(message_id=mid).values_list("address", flat=True).first()
    domain = Recipient.objects.filter(message_id=mid).values_list("domain", flat=True).first()
    host = MailLogLine.objects.filter(mid=mid).exclude(host="").values_list("host", flat=True).first() or "-"
    cases: list[tuple[str, str, dict[str, str]]] = [
        ("dashboard (full page)", "/", {}),
        ("dashboard (htmx poll)", "/", {"HX-Request": "true"}),
        ("mail log, newest 500 lines", "/log/", {}),
        ("mail log, tail poll (nothing new)", f"/log/?after={last}", {"HX-Request": "true"}),
        ("mail log, tail poll (500 new)", f"/log/?after={last - 500}", {"HX-Request": "true"}),
        ("mail log, by MID", f"/log/?mid={mid}", {}),
        ("mail log, by domain", f"/log/?domain={domain}", {}),
        ("mail log, by host", f"/log/?host={host}", {}),
        ("mail log, text 'unknown user' (24 h)", "/log/?q=unknown+user", {}),
        ("mail log, text 'ready' + level Warning", "/log/?q=ready&level=Warning", {}),
        ("mail log, 500 older lines (keyset)", f"/log/?before={last // 2}", {}),
        ("tracking, by recipient (contains)", f"/tracking/?recipient={address}", {}),
        ("tracking, by recipient (is), any time", f"/tracking/?recipient={address}&recipient_how=is&received=all", {}),
        ("tracking, subject contains, last week", "/tracking/?subject=invoice", {}),
        ("tracking, hard bounced, last day", "/tracking/?outcome=hard_bounced&received=day", {}),
        ("tracking, by MID", f"/tracking/?mid={mid}", {}),
        ("message page", f"/tracking/{mid}/", {}),
        ("queue", "/queue/", {}),
        ("hosts", "/hosts/", {}),
        (f"domain status ({domain})", f"/hosts/domain/{domain}/", {}),
        ("/metrics", "/metrics", {}),
    ]
    print(f"\n{'page':<44} {'median ms':>10} {'worst ms':>10}")
    print(f"{'-' * 44} {'-' * 10} {'-' * 10}")
    with override_settings(
        STORAGES={
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }
    ):
        for label, path, headers in cases:
            median, worst, _ = timed(client, path, args.repeat, **headers)
            print(f"{label:<44} {median:>10.1f} {worst:>10.1f}")


if __name__ == "__main__":
    run: Callable[[], None] = main
    run()
