"""Listener benchmark: start `manage.py smtpd`, push N 1 KB messages from C concurrent aiosmtplib clients.

Runs against the configured database (migrate it first); the messages stay queued there:

    createdb -h 127.0.0.1 -U postgres esaroutes_h5bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_h5bench .venv/bin/python manage.py migrate
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_h5bench .venv/bin/python bench/listener.py
    env -u DATABASE_URL ESAROUTES_DATA_DIR=var/bench .venv/bin/python bench/listener.py --messages 2000

The listener runs in its own process (as in production), so the clients do not share its interpreter. Each
client keeps one connection and sends `--per-connection` messages on it before reconnecting (default 1: a new
SMTP session per message, the harder case, as Postfix's smtp-source does). Latency is from MAIL FROM to the
`250` after DATA, that is, including the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
BODY = b"From: <bench@sender.test>\r\nTo: <sink@dest.test>\r\nSubject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def client(port: int, todo: list[int], per_connection: int, latencies: list[float], errors: list[str]) -> None:
    smtp: aiosmtplib.SMTP | None = None
    sent_on_connection = 0
    while todo:
        todo.pop()
        if smtp is None or sent_on_connection >= per_connection:
            if smtp is not None:
                await smtp.quit()
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False)
            await smtp.connect()
            sent_on_connection = 0
        started = time.perf_counter()
        try:
            await smtp.sendmail("bench@sender.test", ["sink@dest.test"], BODY)
        except aiosmtplib.SMTPException as exc:
            errors.append(str(exc))
            smtp = None
            continue
        latencies.append(time.perf_counter() - started)
        sent_on_connection += 1
    if smtp is not None:
        await smtp.quit()


async def run(port: int, messages: int, clients: int, per_connection: int) -> tuple[float, list[float], list[str]]:
    todo = list(range(messages))
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    await asyncio.gather(*(client(port, todo, per_connection, latencies, errors) for _ in range(clients)))
    return time.perf_counter() - started, latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per-connection", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--port", type=int, default=0, help="use a listener already running on 127.0.0.1:PORT")
    args = parser.parse_args()
    if args.port:
        asyncio.run(run(args.port, args.warmup, args.clients, args.per_connection))
        elapsed, latencies, errors = asyncio.run(run(args.port, args.messages, args.clients, args.per_connection))
        report(args, elapsed, latencies, errors)
        return

    port = free_port()
    env = {**os.environ, "ESAROUTES_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "manage.py", "smtpd", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "SMTP listener on" not in line:
            raise SystemExit(f"the listener did not start: {line!r}")
        asyncio.run(run(port, args.warmup, args.clients, args.per_connection))
        elapsed, latencies, errors = asyncio.run(run(port, args.messages, args.clients, args.per_connection))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    report(args, elapsed, latencies, errors)


def report(args: argparse.Namespace, elapsed: float, latencies: list[float], errors: list[str]) -> None:
    latencies.sort()
    database = os.environ.get("DATABASE_URL", "").partition("@")[2] or "SQLite (embedded default)"
    print(f"database: {database}")
    print(f"{'messages':>9} {'clients':>8} {'msg/conn':>8} {'seconds':>8} {'msg/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    print(
        f"{len(latencies):>9} {args.clients:>8} {args.per_connection:>8} {elapsed:>8.2f} "
        f"{len(latencies) / elapsed:>8.1f} {1000 * statistics.median(latencies):>8.1f} "
        f"{1000 * latencies[int(0.95 * (len(latencies) - 1))]:>8.1f}"
    )
    if errors:
        print(f"{len(errors)} errors, first: {errors[0]}")


if __name__ == "__main__":
    main()
