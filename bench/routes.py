"""Route table benchmark: import 40,000 routes, then time the list and search pages, the snapshot and lookups.

Runs against the configured database (migrate it first), and REPLACES its route table:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_h3bench .venv/bin/python manage.py migrate
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_h3bench .venv/bin/python bench/routes.py
    env -u DATABASE_URL ESAROUTES_DATA_DIR=var/bench .venv/bin/python manage.py migrate
    env -u DATABASE_URL ESAROUTES_DATA_DIR=var/bench .venv/bin/python bench/routes.py [--routes 40000]

Page times are server response times through Django's test client, logged in as a superuser (median of
`--repeat` requests, after one warm-up request).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "esaroutes.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from routes import importexport, services, snapshot  # noqa: E402
from routes.models import Route  # noqa: E402


def routes_file(count: int, seed: int = 40_000) -> str:
    """`count` routes: exact and partial domains, one to four hosts with ports and priorities, a few specials."""
    rng = random.Random(seed)
    lines = ["# esaroutes benchmark table"]
    for i in range(count - 1):
        zone = f"zone{i % 500}.example"
        domain = f".sub{i}.{zone}" if i % 10 == 0 else f"d{i}.{zone}"
        if i % 97 == 0:
            lines.append(f"{domain} USEDNS")
            continue
        hosts = []
        for n in range(rng.randint(1, 4)):
            port = "" if rng.random() < 0.7 else f":{rng.choice((25, 587, 2525))}"
            pri = rng.choice((0, 10, 10, 20))
            hosts.append(f"mx{n}.h{i}.relay{i % 50}.net{port}/pri={pri}")
        lines.append(f"{domain} {', '.join(hosts)}")
    lines.append("ALL smarthost.example.net:587")
    return "\n".join(lines) + "\n"


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args()

    setup_test_environment()
    engine = connection.vendor
    text = routes_file(args.routes)
    rows: list[tuple[str, str]] = []

    services.routes_clear(actor="bench")
    start = time.perf_counter()
    parsed = importexport.parse(text)
    parse_s = time.perf_counter() - start
    assert parsed.ok, parsed.errors[:5]
    start = time.perf_counter()
    summary = services.routes_import(incoming=parsed.routes(), mode="replace", actor="bench")
    import_s = time.perf_counter() - start
    rows.append(("parse the 40k-line file" if args.routes == 40_000 else "parse the file", f"{parse_s * 1000:.0f} ms"))
    rows.append((f"import {len(summary.added):,} routes (one transaction)", f"{import_s:.2f} s"))
    start = time.perf_counter()
    services.routes_import(incoming=parsed.routes(), mode="replace", actor="bench")
    rows.append(("re-import the same file (nothing to change)", f"{(time.perf_counter() - start):.2f} s"))
    one = dict(parsed.routes())
    one.pop(next(iter(one)))
    start = time.perf_counter()
    services.routes_import(incoming=one, mode="replace", actor="bench")
    rows.append(("import with one route removed (preview diff + delete)", f"{(time.perf_counter() - start):.2f} s"))

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench").first() or user_model.objects.create_superuser(
        "bench", "bench@example.test", "bench-password-not-used"
    )
    client = Client()
    client.force_login(user)
    plain = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    pages = [
        ("list page 1", "/routes/", {}),
        ("list page 400, sorted by domain descending", "/routes/", {"page": "400", "sort": "-domain"}),
        ("search a domain (q=d39990, htmx partial)", "/routes/", {"q": "d39990"}),
        ("search a zone (q=zone42., 80 hits, htmx)", "/routes/", {"q": "zone42."}),
        ("search a host (q=h1234.relay, htmx)", "/routes/", {"q": "h1234.relay"}),
        ("search with no hit (q=nothing-here, htmx)", "/routes/", {"q": "nothing-here"}),
        (
            "edit page of one route",
            f"/routes/{Route.objects.order_by('pk').values_list('pk', flat=True)[100]}/",
            {},
        ),
        ("export (download all routes)", "/routes/export/", {}),
    ]
    with override_settings(STORAGES=plain):
        for label, url, params in pages:
            headers = {"HX-Request": "true"} if "q" in params else {}
            response = client.get(url, params, headers=headers)
            assert response.status_code == 200, (label, response.status_code)
            seconds = timed(
                functools.partial(client.get, url, params, headers=headers),
                max(1, args.repeat // (5 if "export" in label else 1)),
            )
            rows.append((label, f"{seconds * 1000:.1f} ms"))

    start = time.perf_counter()
    table = snapshot.build_table()
    rows.append(
        (f"snapshot build ({len(table):,} routes, 2 queries)", f"{(time.perf_counter() - start) * 1000:.0f} ms")
    )
    rng = random.Random(7)
    addresses = []
    for _ in range(args.lookups):
        i = rng.randrange(args.routes)
        kind = rng.random()
        zone = f"zone{i % 500}.example"
        if kind < 0.5:
            addresses.append(f"user@d{i}.{zone}")
        elif kind < 0.8:
            addresses.append(f"user@host.a.sub{i - i % 10}.{zone}")
        else:
            addresses.append(f"user@nowhere{i}.test")  # falls to ALL
    start = time.perf_counter()
    hits = sum(1 for a in addresses if table.lookup(a) is not None)
    elapsed = time.perf_counter() - start
    assert hits == len(addresses)
    rows.append(("route lookups per second (one core, mixed exact/partial/ALL)", f"{len(addresses) / elapsed:,.0f}"))
    cached = timed(snapshot.current_table, 1000)
    rows.append(("current_table() when cached", f"{cached * 1e6:.1f} µs"))

    width = max(len(label) for label, _ in rows)
    print(f"\nRoute benchmark: {args.routes:,} routes on {engine} ({settings.DATABASES['default']['NAME']})\n")
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for label, value in rows:
        print(f"| {label.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
