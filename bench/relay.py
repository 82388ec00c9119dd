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
"450 4.3.0 Error: command failed"), so half of the connections fail over at once to the first host;
``blackhole``, where the second equal host accepts TCP and never greets: the connections that go to it wait for
the greeting timeout (`--greeting-timeout`, default 5 s: the bench sets ESAROUTES_DELIVERY_COMMAND_TIMEOUT to it
when this mode runs, RFC 5321's 300 s otherwise), the host is marked down, and the rest of the run skips it.
Compare its p99 latency and rate with normal mode's.

`--against-postfix` (root) also relays the same load, with the same injector, through a private Postfix
(bench/postfix.py: Debian's package with its durable queue, in its own directory, relaying dest.test to the same
two equal sinks), Postfix and esaroutes taking turns over `--rounds`, and prints each relay's figures and the
ratios of this run. Postfix runs normal mode only: a 4xx to RCPT defers the recipient there instead of trying
the next host, so its failover mode is not the same test.

Throughput, for both relays, is messages per second from the start of the injection until the sinks have counted
every message (smtp-sink's own counters). Latency is per message: for esaroutes from its `250` at the listener
(`received_at`) to its recipient's delivery (`finished_at`), for Postfix its logged `delay=`. CPU is each
relay's processes, per message delivered: listener, worker (and PostgreSQL) for esaroutes; every Postfix daemon
by name for Postfix. PostgreSQL is the backends of the bench's database only (the server may be shared), read
every 50 ms so that a backend which exits during the run still counts. Worker RSS is the sum over the esaroutes
worker's processes at the end.

    sudo -E ESAROUTES_DATA_DIR=var/bench-pg .venv/bin/python bench/relay.py --reset --modes normal \
        --messages 3000 --against-postfix --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "esaroutes.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.db.models import Max  # noqa: E402

from bench import listener as smtp_load  # noqa: E402
from bench import postfix  # noqa: E402
from delivery.models import DeliveryAttempt, MailLogLine, Message, MessageBody, Recipient  # noqa: E402
from routes import domains, services  # noqa: E402
from routes.models import Route  # noqa: E402

SINKS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def free_port(*hosts: str) -> int:
    """A port free on every one of these addresses (the two equal sinks share one, as an MX name's addresses do)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no port free on all of {hosts}")


class Sink:
    """Postfix's smtp-sink on a loopback address; `delivered()` reads its own counters (`-c`: mesg=N)."""

    def __init__(self, host: str, port: int, refuse_rcpt: bool, out: Path) -> None:
        sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        # smtp-sink's defaults (PIPELINING offered) but 8BITMIME; its -r (the refusing host) implies -p
        command = [sink, "-u", "nobody", "-c", "-8"]
        if refuse_rcpt:
            command += ["-r", "RCPT"]
        self.out = out
        self.accepting = not refuse_rcpt
        with out.open("wb") as stdout:
            self.proc = subprocess.Popen([*command, f"{host}:{port}", "256"], stdout=stdout, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)  # a child process's port: nothing to wait on but the port itself
        raise SystemExit(f"smtp-sink did not start on {host}:{port}")

    def delivered(self) -> int:
        """Messages this sink answered the final dot for ("sess=N quit=N mesg=N" records, each ending in CR)."""
        records = self.out.read_bytes()[-512:].split(b"\r")
        for record in reversed(records[:-1]):
            fields = dict(f.split(b"=", 1) for f in record.split() if b"=" in f)
            if b"mesg" in fields:
                return int(fields[b"mesg"])
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class BlackHole:
    """A host that accepts TCP connections and never says a word (no greeting): `blackhole` mode's second host.

    The connections are accepted (the kernel's backlog would hold them anyway) and kept open until `stop()`, so
    the relay waits for its greeting timeout on each, as on a host whose SMTP server hangs."""

    accepting = False  # it delivers nothing

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port), backlog=512)
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by stop()
            self.held.append(conn)

    def delivered(self) -> int:
        return 0

    def stop(self) -> None:
        self.sock.close()
        self._thread.join(5)
        for conn in self.held:
            conn.close()


def start_sinks(mode: str, folder: Path) -> tuple[list[Sink | BlackHole], int, int]:
    """The two equal sinks (one port, two addresses) and the backup; `failover` makes the second refuse RCPT."""
    port = free_port(SINKS[0], SINKS[1])
    backup = free_port(SINKS[2])
    sinks: list[Sink | BlackHole] = [
        Sink(SINKS[0], port, False, folder / "sink-a.out"),
        BlackHole(SINKS[1], port)
        if mode == "blackhole"
        else Sink(SINKS[1], port, mode == "failover", folder / "sink-b.out"),
        Sink(SINKS[2], backup, False, folder / "sink-backup.out"),
    ]
    return sinks, port, backup


def wait_delivered(sinks: list[Sink | BlackHole], count: int, timeout: float) -> float:
    """Wait until the accepting sinks have counted `count` more messages; returns the monotonic time then."""
    deadline = time.monotonic() + timeout
    while sum(s.delivered() for s in sinks if s.accepting) < count:
        if time.monotonic() > deadline:
            got = sum(s.delivered() for s in sinks if s.accepting)
            raise SystemExit(f"the sinks counted {got} of {count} messages after {timeout:.0f} s")
        time.sleep(0.02)  # other processes' counters: nothing to wait on but the files they write
    return time.monotonic()


def set_route(port: int, backup: int) -> None:
    text = f"{SINKS[0]}:{port}, {SINKS[1]}:{port}, {SINKS[2]}:{backup}/pri=10"
    data = services.RouteData(domain="dest.test", destination=domains.parse_hosts(text))
    existing = Route.objects.filter(domain="dest.test").first()
    if existing is None:
        services.route_create(data=data, actor="bench")
    else:
        services.route_update(route_id=existing.pk, data=data, actor="bench")


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of these processes and their live children (/proc/PID/task/*/children), by PID."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def cpu_since(before: dict[int, float], now: dict[int, float]) -> float:
    """CPU seconds spent between two readings by the processes alive at the second (one that exited is lost)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in now.items())


class PostgresSampler:
    """CPU of the PostgreSQL backends of the bench's own database, over a run.

    The server is shared (other databases, other engineers' tests): only backends whose title names this
    database count (`postgres: USER DBNAME ...`). A backend that exits during the run (a connection closed after
    a task) takes its CPU with it, so they are read every `every` seconds in a thread, and each counts what it
    spent since the start (or since it appeared) until its last reading.
    """

    def __init__(self, dbname: str, every: float = 0.05) -> None:
        self.marker = f" {dbname} ".encode()
        self.every = every
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.started: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.first = self._read()
        self.last = dict(self.first)
        self._thread.start()

    def stop(self) -> float:
        """Stop sampling; the CPU seconds the database's backends spent meanwhile."""
        self._stop.set()
        self._thread.join()
        for pid, seconds in self._read().items():
            self._note(pid, seconds)
        return sum(seconds - self.first.get(pid, 0.0) for pid, seconds in self.last.items())

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            for pid, seconds in self._read().items():
                self._note(pid, seconds)

    def _note(self, pid: int, seconds: float) -> None:
        if pid not in self.first and pid not in self.last:
            self.started.add(pid)  # a backend started during the run: counted from zero
        self.last[pid] = max(seconds, self.last.get(pid, 0.0))

    def _read(self) -> dict[int, float]:
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[int, float] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or _comm(proc) != "postgres":
                continue
            try:
                if self.marker not in (proc / "cmdline").read_bytes():
                    continue
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(proc.name)] = (int(fields[11]) + int(fields[12])) / tick
        return out


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


@dataclass
class Run:
    relay: str  # "esaroutes" or "postfix"
    mode: str
    delivered: int
    rate: float  # messages per second from the start of the injection until the sinks had counted them all
    latencies: list[float]  # seconds per message from its 250 at the relay to its delivery, sorted
    errors: int  # what the injecting clients saw refused
    cpu: dict[str, float] = field(default_factory=dict)  # CPU ms per message delivered, per process group


def run_mode(mode: str, args: argparse.Namespace, smtp_port: int, processes: dict[str, int], folder: Path) -> Run:
    sinks, port, backup = start_sinks(mode, folder)
    set_route(port, backup)
    time.sleep(args.route_refresh)  # the workers' route snapshot follows the table within ESAROUTES_ROUTE_REFRESH
    start_mid = Message.objects.aggregate(m=Max("pk"))["m"] or 0
    groups = {name: [pid] for name, pid in processes.items()}
    cpu_before = {name: cpu_by_pid(pids) for name, pids in groups.items()}
    database = PostgresSampler(connection.settings_dict["NAME"]) if connection.vendor == "postgresql" else None
    if database is not None:
        database.start()
    try:
        started = time.monotonic()
        errors = inject(args, smtp_port)
        finished = wait_delivered(sinks, args.messages - len(errors), args.timeout)
        cpu = {name: cpu_since(cpu_before[name], cpu_by_pid(pids)) for name, pids in groups.items()}
        if database is not None:
            cpu["postgres"] = database.stop()
            database = None
        deadline = time.monotonic() + args.timeout
        mine = Message.objects.filter(pk__gt=start_mid)
        while mine.filter(state=Message.State.QUEUED).exists():  # the sinks have it; the commits may trail
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: {mine.filter(state='queued').count()} messages still queued")
            time.sleep(0.2)  # the workers commit in other processes: the database is all there is to watch
        rows = list(
            Recipient.objects.filter(message__pk__gt=start_mid, state=Recipient.State.DELIVERED).values_list(
                "message__received_at", "finished_at"
            )
        )
    finally:
        if database is not None:
            database.stop()
        for sink in sinks:
            sink.stop()
    latencies = sorted((f - r).total_seconds() for r, f in rows if f is not None)
    per_message = {name: seconds * 1000 / max(len(rows), 1) for name, seconds in cpu.items()}
    rate = len(rows) / max(finished - started, 1e-6)
    return Run("esaroutes", mode, len(rows), rate, latencies, len(errors), per_message)


def run_postfix(args: argparse.Namespace, folder: Path) -> Run:
    """The same load through a private Postfix to the same kind of sinks (normal mode), measured the same way."""
    sinks, port, _ = start_sinks("normal", folder)
    listen = ("127.0.0.1", free_port("127.0.0.1"))
    try:
        with postfix.Postfix(folder / "postfix", listen, "dest.test", (SINKS[0], SINKS[1]), port) as instance:
            instance.empty_queue()
            maillog = folder / "postfix" / "log" / "maillog"
            maillog.write_text("")
            cpu_before = instance.cpu()
            started = time.monotonic()
            errors = inject(args, listen[1])
            finished = wait_delivered(sinks, args.messages - len(errors), args.timeout)
            cpu_after = instance.cpu()
            delivered = sum(s.delivered() for s in sinks if s.accepting)
    finally:
        for sink in sinks:
            sink.stop()
    # Postfix logs each delivery's whole delay (arrival to delivery), to the hundredth of a second
    latencies = sorted(float(m) for m in re.findall(r" delay=([0-9.]+),.* status=sent", maillog.read_text()))
    cpu = {
        name: (cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0)) * 1000 / max(delivered, 1)
        for name in set(cpu_before) | set(cpu_after)
    }
    return Run("postfix", "normal", delivered, delivered / max(finished - started, 1e-6), latencies, len(errors), cpu)


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
        "--greeting-timeout",
        type=float,
        default=5.0,
        help="with blackhole mode: the relay's reply timeout (ESAROUTES_DELIVERY_COMMAND_TIMEOUT), greeting included",
    )
    parser.add_argument(
        "--against-postfix",
        action="store_true",
        help="also relay the same load through a private Postfix (needs root), alternating, and print the ratios",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything this many times")
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
    if "blackhole" in args.modes.split(","):
        env["ESAROUTES_DELIVERY_COMMAND_TIMEOUT"] = str(args.greeting_timeout)
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
    results: list[Run] = []
    folder = Path(tempfile.mkdtemp(prefix="esaroutes-relay-bench-"))
    folder.chmod(0o755)  # Postfix's unprivileged processes go through it to their queue
    try:
        assert listener.stdout is not None
        line = listener.stdout.readline()
        if "SMTP listener on" not in line:
            raise SystemExit(f"the listener did not start: {line!r}")
        smtp_port = int(line.split(" port ")[1].split()[0])
        processes = {"listener": listener.pid, "worker": worker.pid}
        for round_no in range(args.rounds):
            # alternate which relay goes first, so neither always runs on a warmer (or busier) machine
            if args.against_postfix and round_no % 2 == 0:
                results.append(run_postfix(args, folder))
            for mode in args.modes.split(","):
                results.append(run_mode(mode, args, smtp_port, processes, folder))
            if args.against_postfix and round_no % 2 == 1:
                results.append(run_postfix(args, folder))
        memory = rss_kib(worker.pid)
    finally:
        for proc in (listener, worker):
            proc.send_signal(signal.SIGTERM)  # the parents stop their children (Celery: a warm shutdown)
        for proc in (listener, worker):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
    report(args, results, memory)


def report(args: argparse.Namespace, results: list[Run], memory: int) -> None:
    database = "PostgreSQL + Redis" if os.environ.get("DATABASE_URL") else "SQLite + filesystem broker"
    print(
        f"\nrelay: {args.messages} x 1 KB, {args.clients} sessions, {args.per_connection} msg/session, "
        f"esaroutes with {args.concurrency} worker processes on {database}"
    )
    print(
        f"{'relay':<10} {'mode':<10} {'delivered':>9} {'msg/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6}   CPU ms per message"
    )
    for run in results:
        cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(run.cpu.items(), key=lambda kv: -kv[1]) if ms >= 0.01)
        print(
            f"{run.relay:<10} {run.mode:<10} {run.delivered:>9} {run.rate:>8.0f} {pct(run.latencies, 0.5):>8.0f} "
            f"{pct(run.latencies, 0.9):>8.0f} {pct(run.latencies, 0.99):>8.0f} {run.errors:>6}   "
            f"total {sum(run.cpu.values()):.2f}: {cpu}"
        )
    print(f"esaroutes worker RSS at the end: {memory / 1024:.0f} MiB")
    modes = args.modes.split(",")
    normal = [run for run in results if run.relay == "esaroutes" and run.mode == "normal"]
    if normal and len(modes) > 1:
        base = statistics.median(run.rate for run in normal)
        base_p99 = statistics.median(pct(run.latencies, 0.99) for run in normal)
        print("\nagainst normal mode in this run (medians)")
        for mode in modes:
            mine = [run for run in results if run.relay == "esaroutes" and run.mode == mode]
            if mode == "normal" or not mine:
                continue
            rate = statistics.median(run.rate for run in mine)
            p99 = statistics.median(pct(run.latencies, 0.99) for run in mine)
            print(
                f"esaroutes {mode:<10} {rate:.0f} msg/s = {rate / base:.2f}x normal; "
                f"p99 {p99:.0f} ms against {base_p99:.0f} ms"
            )
    anchor = [run.rate for run in results if run.relay == "postfix"]
    if not anchor:
        return
    print(f"\nagainst Postfix in this run (median of {len(anchor)}: {statistics.median(anchor):.0f} msg/s)")
    for mode in modes:
        rates = [run.rate for run in results if run.relay == "esaroutes" and run.mode == mode]
        ratios = sorted(rate / p for rate, p in zip(rates, anchor, strict=False))
        print(
            f"esaroutes {mode:<10} median {statistics.median(rates):.0f} msg/s = "
            f"{statistics.median(rates) / statistics.median(anchor):.2f}x Postfix "
            f"(round by round {ratios[0]:.2f}-{ratios[-1]:.2f}x)"
        )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


if __name__ == "__main__":
    main()
