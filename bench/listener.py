"""Listener benchmark: start `manage.py smtpd`, push 1 KB single-recipient messages from concurrent SMTP sessions.

Runs against the configured database (migrate it first); the messages stay queued there, and with the Redis
broker each one rings the delivery doorbell as in production:

    createdb -h 127.0.0.1 -U postgres esaroutes_hlsn
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/esaroutes_hlsn REDIS_URL=redis://127.0.0.1:6379/10
    ESAROUTES_DATA_DIR=var/hlsn-pg .venv/bin/python manage.py migrate
    ESAROUTES_DATA_DIR=var/hlsn-pg .venv/bin/python bench/listener.py
    env -u DATABASE_URL -u REDIS_URL ESAROUTES_DATA_DIR=var/hlsn-emb .venv/bin/python bench/listener.py

The listener runs in its own process(es) (`--processes`, default ESAROUTES_SMTP_PROCESSES: one per CPU), as in
production. The clients are a lean asyncio SMTP client (no pipelining, like Postfix's smtp-source), so they cost
the listener's machine as little CPU as possible. Each mode is a number of messages per connection: 1 is a new
SMTP session per message (the harder case, what smtp-source does by default), 100 reuses a session. Latency is
from MAIL FROM to the `250` after the message, that is, including the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = (
    b"From: <bench@sender.test>\r\nTo: <sink@dest.test>\r\nSubject: bench\r\nMessage-ID: <bench@sender.test>\r\n\r\n"
    + (b"x" * 76 + b"\r\n") * 12
)


class SmtpError(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpError("connection closed")
        if line[3:4] != b"-":
            return line


async def _cmd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, want: bytes) -> None:
    writer.write(line)
    reply = await _reply(reader)
    if not reply.startswith(want):
        raise SmtpError(f"{line!r} -> {reply!r}")


async def client(port: int, todo: list[int], per_connection: int, latencies: list[float], errors: list[str]) -> None:
    while todo:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            errors.append(str(exc))
            todo.pop()
            continue
        try:
            if not (await _reply(reader)).startswith(b"220"):
                raise SmtpError("no greeting")
            await _cmd(reader, writer, b"EHLO bench.test\r\n", b"250")
            for _ in range(per_connection):
                if not todo:
                    break
                todo.pop()
                started = time.perf_counter()
                await _cmd(reader, writer, b"MAIL FROM:<bench@sender.test>\r\n", b"250")
                await _cmd(reader, writer, b"RCPT TO:<sink@dest.test>\r\n", b"250")
                await _cmd(reader, writer, b"DATA\r\n", b"354")
                await _cmd(reader, writer, BODY + b".\r\n", b"250")
                latencies.append(time.perf_counter() - started)
            await _cmd(reader, writer, b"QUIT\r\n", b"221")
        except (SmtpError, OSError) as exc:
            errors.append(str(exc))
        finally:
            writer.close()


async def run(port: int, messages: int, clients: int, per_connection: int) -> tuple[float, list[float], list[str]]:
    todo = list(range(messages))
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    await asyncio.gather(*(client(port, todo, per_connection, latencies, errors) for _ in range(clients)))
    return time.perf_counter() - started, latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000, help="per mode")
    parser.add_argument("--clients", type=int, default=10, help="concurrent SMTP sessions")
    parser.add_argument("--per-connection", default="1,100", help="modes: messages per connection, comma separated")
    parser.add_argument("--processes", type=int, default=0, help="listener processes (0: ESAROUTES_SMTP_PROCESSES)")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--port", type=int, default=0, help="use a listener already running on 127.0.0.1:PORT")
    args = parser.parse_args()
    modes = [int(m) for m in args.per_connection.split(",")]
    server = None
    port = args.port
    processes = str(args.processes or "default")
    if not port:
        env = {**os.environ, "ESAROUTES_LOG_LEVEL": "WARNING"}
        command = [sys.executable, "manage.py", "smtpd", "--listen", "127.0.0.1:0"]
        if args.processes:
            command += ["--processes", str(args.processes)]
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        line = server.stdout.readline()
        if "SMTP listener on" not in line:
            raise SystemExit(f"the listener did not start: {line!r}")
        port = int(line.split(" port ")[1].split()[0])
        processes = line.partition("(")[2].split()[0] if "(" in line else "1"
    rows = []
    try:
        for per_connection in modes:
            asyncio.run(run(port, args.warmup, args.clients, per_connection))
            rows.append((per_connection, *asyncio.run(run(port, args.messages, args.clients, per_connection))))
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    database = os.environ.get("DATABASE_URL", "").partition("@")[2] or "SQLite (embedded default)"
    broker = os.environ.get("REDIS_URL", "").partition("//")[2] or "filesystem broker"
    print(f"database: {database}; broker: {broker}; listener processes: {processes}; CPUs: {os.cpu_count()}")
    print(f"| {'mode':<22} | sessions | messages | msg/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for per_connection, elapsed, latencies, errors in rows:
        latencies.sort()
        mode = "new session per message" if per_connection == 1 else f"{per_connection} messages per session"
        p50 = 1000 * latencies[len(latencies) // 2] if latencies else 0.0
        p99 = 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0
        print(
            f"| {mode:<22} | {args.clients:>8} | {len(latencies):>8} | {len(latencies) / elapsed:>5.0f} "
            f"| {p50:>6.1f} | {p99:>6.1f} | {len(errors):>6} |"
        )
        if errors:
            print(f"first error: {errors[0]}")


if __name__ == "__main__":
    main()
