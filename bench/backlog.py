"""Worker memory with a large queue: N messages queued at once, then delivered by one Celery worker.

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_bench REDIS_URL=redis://127.0.0.1:6379/13
    ESAROUTES_DATA_DIR=var/bench-pg .venv/bin/python bench/backlog.py --messages 100000

The messages are written straight into the queue (`delivery.spool.intake.accept_many`, the listener's own group commit,
without the doorbell), so the worker finds them all due at once through beat's sweep, as after an outage. The
destination is one `smtp-sink`. Every few seconds the table shows how many are still queued and the resident
memory of the worker (its main process and pool children together): it must stay flat however long the queue.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "esaroutes.settings")

import django  # noqa: E402

django.setup()

from django.db.models import Max  # noqa: E402

from bench.relay import Sink, free_port, rss_kib  # noqa: E402
from delivery.models import Message  # noqa: E402
from delivery.spool import doorbell, intake  # noqa: E402
from routes import domains, services  # noqa: E402
from routes.models import Route  # noqa: E402

BODY = b"From: <bench@sender.test>\r\nTo: <sink@backlog.test>\r\nSubject: backlog\r\n\r\n" + (b"x" * 76 + b"\r\n") * 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    port = free_port("127.0.0.2")
    sink = Sink("127.0.0.2", port, False, Path(tempfile.mkdtemp(prefix="esaroutes-backlog-")) / "sink.out")
    data = services.RouteData(domain="backlog.test", destination=domains.parse_hosts(f"127.0.0.2:{port}"))
    existing = Route.objects.filter(domain="backlog.test").first()
    if existing is None:
        services.route_create(data=data, actor="bench")
    else:
        services.route_update(route_id=existing.pk, data=data, actor="bench")
    start_mid = Message.objects.aggregate(m=Max("pk"))["m"] or 0
    doorbell.ring_many = lambda mids: None  # no doorbells: the sweep finds them, as after an outage
    started = time.monotonic()
    for done in range(0, args.messages, 1000):
        batch = [
            intake.Incoming(
                icid=0, sender="bench@sender.test", recipients=((f"u{i}@backlog.test", "backlog.test"),), data=BODY
            )
            for i in range(done, min(done + 1000, args.messages))
        ]
        intake.accept_many(batch)
    print(f"queued {args.messages} messages in {time.monotonic() - started:.0f} s")
    env = {**os.environ, "ESAROUTES_LOG_LEVEL": "WARNING", "ESAROUTES_SWEEP_INTERVAL": "2"}
    celery = str(Path(sys.executable).parent / "celery")
    worker = subprocess.Popen(
        [celery, "-A", "esaroutes", "worker", "--loglevel", "WARNING", "--concurrency", "2", "--without-gossip"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    beat = subprocess.Popen(
        [celery, "-A", "esaroutes", "beat", "--loglevel", "WARNING"], cwd=ROOT, env=env, start_new_session=True
    )
    rows = []
    try:
        started = time.monotonic()
        mine = Message.objects.filter(pk__gt=start_mid, state=Message.State.QUEUED)
        while True:
            queued = mine.count()
            rows.append((time.monotonic() - started, queued, rss_kib(worker.pid)))
            print(f"{rows[-1][0]:8.0f} s  {queued:>8} queued  worker RSS {rows[-1][2] / 1024:6.0f} MiB", flush=True)
            if queued == 0 or time.monotonic() - started > args.timeout:
                break
            time.sleep(args.every)  # sampling: there is no event to wait for
    finally:
        for proc in (worker, beat):
            proc.send_signal(signal.SIGTERM)
        for proc in (worker, beat):
            proc.wait(60)
        sink.stop()
    elapsed = rows[-1][0]
    rss = [r[2] for r in rows]
    print(
        f"\nbacklog: {args.messages} messages delivered in {elapsed:.0f} s ({args.messages / max(elapsed, 1):.0f}/s); "
        f"worker RSS min {min(rss) / 1024:.0f} MiB, max {max(rss) / 1024:.0f} MiB, last {rss[-1] / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
