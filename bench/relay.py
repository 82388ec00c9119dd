"""End-to-end relay benchmark: SMTP client → listener → queue → Celery workers → two equal sink hosts + a backup.

    createdb -h 127.0.0.1 -U postgres esaroutes_bench
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_bench REDIS_URL=redis://127.0.0.1:6379/13
    ESAROUTES_DATA_DIR=var/bench-pg .venv/bin/python manage.py migrate
    ESAROUTES_DATA_DIR=var/bench-pg .venv/bin/python bench/relay.py --reset
    env -u DATABASE_URL -u REDIS_URL ESAROUTES_DATA_DIR=var/bench-emb .venv/bin/python bench/relay.py --reset

Everything is a real process, as `bin/run` starts them: `manage.py smtpd` and `celery -A esaroutes worker`
(prefork, ESAROUTES_WORKER_CONCURRENCY children, default 2). The destinations are Postfix's `smtp-sink` on
127.0.0.2 and 127.0.0.3 (priority 0, equal: round-robin) and 127.0.0.4 (priority 10, the backup). The client is
Postfix's `smtp-source` (the client of the Postfix figure; `--injector python` for bench/listener.py's client):
1 KB messages with one recipient, 10 concurrent sessions, a new session per message unless `--per-connection`.
`--reset` empties the queue and mail-log tables first: the figures fall as those tables grow (a bench database
only). The CPU columns are each process tree's user + system time over the run, per message delivered.

Modes: ``normal``; ``failover``, where the second equal host refuses every RCPT with a 4xx (smtp-sink ``-r RCPT``:
"450 4.3.0 Error: command failed"), so half of the connections fail over at once to the first host.

Throughput is messages delivered per second from the first accept to the last delivery; latency is per message,
from its `250` at the listener (`received_at`) to its recipient's delivery (`finished_at`). Worker RSS is the
sum over the worker's processes at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "esaroutes.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.db.models import Max  # noqa: E402

from bench import listener as smtp_load  # noqa: E402
from delivery.models import DeliveryAttempt, MailLogLine, Message, MessageBody, Recipient  # noqa: E402
from routes import domains, services  # noqa: E402
from routes.models import Route  # noqa: E402

SINKS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_sink(host: str, port: int, refuse_rcpt: bool) -> subprocess.Popen[bytes]:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    # smtp-sink's defaults (PIPELINING offered) but 8BITMIME; its -r (the refusing host) implies -p
    command = [sink, "-u", "nobody", "-c", "-8"]
    if refuse_rcpt:
        command += ["-r", "RCPT"]
    proc = subprocess.Popen([*command, f"{host}:{port}", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)  # a child process's port: nothing to wait on but the port itself
    raise SystemExit(f"smtp-sink did not start on {host}:{port}")


def set_route(ports: list[int]) -> None:
    text = f"{SINKS[0]}:{ports[0]}, {SINKS[1]}:{ports[1]}, {SINKS[2]}:{ports[2]}/pri=10"
    data = services.RouteData(domain="dest.test", destination=domains.parse_hosts(text))
    existing = Route.objects.filter(domain="dest.test").first()
    if existing is None:
        services.route_create(data=data, actor="bench")
    else:
        services.route_update(route_id=existing.pk, data=data, actor="bench")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and their children (live ones: /proc/PID/task/*/children)."""
    ticks = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(p) == "postgres"]


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def rss_kib(pid: int) -> int:
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        status = Path(f"/proc/{p}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def inject(args: argparse.Namespace, smtp_port: int) -> list[str]:
    """Send the messages; returns the errors the clients saw."""
    if args.injector == "python":
        _, _, seen = asyncio.run(smtp_load.run(smtp_port, args.messages, args.clients, args.per_connection))
        return seen
    # Postfix's own load generator, as the 290 msg/s Postfix figure was measured. With -d a session sends all of
    # its -m share, so N messages per session are rounds of clients x N messages.
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    command = [source, "-s", str(args.clients), "-l", "1024", "-f", "bench@sender.test", "-t", "sink@dest.test"]
    command += ["-M", "bench.test"]
    rounds = [args.messages]
    if args.per_connection > 1:
        command.append("-d")
        per_round = args.clients * args.per_connection
        rounds = [per_round] * (args.messages // per_round) + (
            [args.messages % per_round] if args.messages % per_round else []
        )
    errors: list[str] = []
    for count in rounds:
        done = subprocess.run(
            [*command, "-m", str(count), f"127.0.0.1:{smtp_port}"], capture_output=True, text=True, check=False
        )
        errors += [line for line in done.stderr.splitlines() if line.strip()]
    return errors


Result = tuple[str, int, float, list[float], int, dict[str, float]]


def run_mode(mode: str, args: argparse.Namespace, smtp_port: int, processes: dict[str, int]) -> Result:
    ports = [free_port(h) for h in SINKS]
    sinks = [
        start_sink(h, p, refuse_rcpt=(mode == "failover" and i == 1))
        for i, (h, p) in enumerate(zip(SINKS, ports, strict=True))
    ]
    set_route(ports)
    time.sleep(args.route_refresh)  # the workers' route snapshot follows the table within ESAROUTES_ROUTE_REFRESH
    start_mid = Message.objects.aggregate(m=Max("pk"))["m"] or 0
    groups = {name: [pid] for name, pid in processes.items()}
    groups["postgres"] = postgres_pids() if os.environ.get("DATABASE_URL") else []
    cpu_before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    try:
        errors = inject(args, smtp_port)
        deadline = time.monotonic() + args.timeout
        mine = Message.objects.filter(pk__gt=start_mid)
        while mine.filter(state=Message.State.QUEUED).exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: {mine.filter(state='queued').count()} messages still queued")
            time.sleep(0.2)  # the workers commit in other processes: the database is all there is to watch
        cpu = {name: cpu_seconds(pids) - cpu_before[name] for name, pids in groups.items()}
        rows = list(
            Recipient.objects.filter(message__pk__gt=start_mid, state=Recipient.State.DELIVERED).values_list(
                "message__received_at", "finished_at"
            )
        )
    finally:
        for sink in sinks:
            sink.terminate()
            sink.wait(10)
    done = [(r, f) for r, f in rows if f is not None]
    first = min(r for r, _ in done)
    last = max(f for _, f in done)
    latencies = sorted((f - r).total_seconds() for r, f in done)
    rate = len(rows) / max((last - first).total_seconds(), 1e-6)
    per_message = {name: seconds * 1000 / max(len(rows), 1) for name, seconds in cpu.items()}
    return mode, len(rows), rate, latencies, len(errors), per_message


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per-connection", type=int, default=1, help="messages per injecting SMTP session")
    parser.add_argument("--modes", default="normal,failover")
    parser.add_argument(
        "--injector",
        choices=("smtp-source", "python"),
        default="smtp-source",
        help="the injecting client: Postfix's smtp-source (C) or bench/listener.py's asyncio client",
    )
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("ESAROUTES_WORKER_CONCURRENCY", "2")))
    parser.add_argument("--pool", default="", help="Celery pool (default: the configured one)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--route-refresh", type=float, default=3.0)
    parser.add_argument(
        "--reset",
        action="store_true",
        help="empty the queue and mail-log tables first (a bench database only: the figures fall as they grow)",
    )
    args = parser.parse_args()
    if args.reset:  # a bench database only
        models = (MailLogLine, DeliveryAttempt, MessageBody, Recipient, Message)
        if connection.vendor == "postgresql":  # TRUNCATE: no dead rows for autovacuum to chew on during the run
            with connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {', '.join(m._meta.db_table for m in models)}")
        else:
            for model in models:
                model.objects.all()._raw_delete(model.objects.db)
    env = {**os.environ, "ESAROUTES_LOG_LEVEL": "WARNING"}
    listener = subprocess.Popen(
        [sys.executable, "manage.py", "smtpd", "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "celery"),
            "-A",
            "esaroutes",
            "worker",
            "--loglevel",
            "WARNING",
            "--concurrency",
            str(args.concurrency),
            "--without-gossip",
            "--without-mingle",
            *(["--pool", args.pool] if args.pool else []),
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    results = []
    try:
        assert listener.stdout is not None
        line = listener.stdout.readline()
        if "SMTP listener on" not in line:
            raise SystemExit(f"the listener did not start: {line!r}")
        smtp_port = int(line.split(" port ")[1].split()[0])
        for mode in args.modes.split(","):
            results.append(run_mode(mode, args, smtp_port, {"listener": listener.pid, "worker": worker.pid}))
        memory = rss_kib(worker.pid)
    finally:
        for proc in (listener, worker):
            proc.send_signal(signal.SIGTERM)  # the parents stop their children (Celery: a warm shutdown)
        for proc in (listener, worker):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    database = "PostgreSQL + Redis" if os.environ.get("DATABASE_URL") else "SQLite + filesystem broker"
    print(
        f"\nrelay: {args.messages} x 1 KB, {args.clients} sessions, {args.per_connection} msg/session, "
        f"{args.concurrency} worker processes, {database}"
    )
    print(
        f"{'mode':<10} {'delivered':>9} {'msg/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>6}"
        "   CPU ms per message: listener, worker, PostgreSQL"
    )
    for mode, delivered, rate, latencies, errors, cpu in results:
        print(
            f"{mode:<10} {delivered:>9} {rate:>8.0f} {pct(latencies, 0.5):>8.0f} {pct(latencies, 0.9):>8.0f} "
            f"{pct(latencies, 0.99):>8.0f} {errors:>6}   {cpu['listener']:>8.2f} {cpu['worker']:>6.2f} "
            f"{cpu['postgres']:>10.2f}"
        )
    print(f"worker RSS at the end: {memory / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
