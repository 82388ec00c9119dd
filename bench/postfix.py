"""A private Postfix instance on loopback, the anchor of the relay benchmark (`bench/relay.py --against-postfix`).

Debian's `postfix` package, as Postfix ships it (a durable queue: cleanup fsyncs each message before smtpd answers
250), configured in its own directory with its own queue: it listens on a loopback address and relays the bench
domain to the same two equal `smtp-sink` hosts as esaroutes. The two hosts are one next-hop name with two
addresses (the smtp client's chroot has its own /etc/hosts), so Postfix shares the load between them the way it
shares equal-preference MX hosts. Needs root (`postfix start`). Loopback only: every address is checked.

What it measures is the same as for esaroutes: from the start of the injection until the sinks have counted
every message, and the CPU of Postfix's processes (smtpd, cleanup, qmgr, smtp, trivial-rewrite, ...) over that
time, from /proc: each live daemon's own, the master's, and `exited` for the daemons that exited meanwhile
(the times of the children the master reaped: a daemon exits after 100 uses or 100 s idle).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTSUPER = "/usr/sbin/postsuper"
NEXTHOP = "sinks.anchor.test"

MASTER_CF = """\
# Written by bench/postfix.py. Only the smtp client is chrooted (for its own /etc/hosts).
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"bench/postfix.py: {host} is not a loopback address")
    return host


class Postfix:
    """`with Postfix(base, listen, domain, sinks, port) as pf:` a running instance; `pf.cpu()` its CPU so far."""

    def __init__(self, base: Path, listen: tuple[str, int], domain: str, sinks: tuple[str, str], port: int) -> None:
        if not Path(POSTFIX).exists():
            raise SystemExit("Postfix is not installed: apt-get install --no-install-recommends postfix")
        if os.geteuid() != 0:
            raise SystemExit("--against-postfix needs root (postfix start)")
        self.base, self.listen, self.domain, self.port = base, listen, domain, port
        self.sinks = tuple(_loopback(host) for host in sinks)
        _loopback(listen[0])
        self.conf = base / "etc"

    def __enter__(self) -> Postfix:
        self._write_config()
        self._postfix("check")
        self._postfix("start")
        deadline = time.monotonic() + 10
        while not self._listening():
            if time.monotonic() > deadline:
                raise SystemExit(f"Postfix did not start listening on {self.listen}: see {self.base}/log/maillog")
            time.sleep(0.05)  # a daemon's port: nothing to wait on but the port itself
        return self

    def __exit__(self, *exc: object) -> None:
        master = self._master_pid()
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], capture_output=True, check=False)
        deadline = time.monotonic() + 10
        while master and Path(f"/proc/{master}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the master exits once its children have

    def empty_queue(self) -> None:
        subprocess.run([POSTSUPER, "-c", str(self.conf), "-d", "ALL"], capture_output=True, check=False)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far by program name: each live daemon's own, the master's, and `exited` for the
        daemons that have exited meanwhile (the times of the children the master reaped)."""
        master = self._master_pid()
        by_name: dict[str, float] = defaultdict(float)
        if not master:
            return by_name
        tick = os.sysconf("SC_CLK_TCK")
        stat = _stat(master)
        if stat:
            by_name["master"] += (int(stat[11]) + int(stat[12])) / tick  # utime, stime
            by_name["exited"] += (int(stat[13]) + int(stat[14])) / tick  # cutime, cstime: reaped children
        for pid in _children(master):
            stat = _stat(pid)
            if stat:
                by_name[_comm(pid)] += (int(stat[11]) + int(stat[12])) / tick
        return by_name

    def _postfix(self, command: str) -> None:
        done = subprocess.run([POSTFIX, "-c", str(self.conf), command], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            # Postfix writes its errors to stderr only on a terminal: script(1) gives it one to show the reason
            shown = subprocess.run(
                ["script", "-qec", f"{POSTFIX} -c {self.conf} {command}", "/dev/null"],
                capture_output=True,
                text=True,
                check=False,
            )
            raise SystemExit(f"postfix {command} failed: {shown.stdout.strip()[-500:]}")

    def _listening(self) -> bool:
        try:
            socket.create_connection(self.listen, 0.2).close()
            return True
        except OSError:
            return False

    def _master_pid(self) -> int:
        try:
            return int((self.base / "spool" / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def _write_config(self) -> None:
        spool, data, logs = self.base / "spool", self.base / "data", self.base / "log"
        for folder in (self.conf, spool, data, logs, spool / "etc"):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(data, "postfix")
        host, port = self.listen
        (self.conf / "main.cf").write_text(
            f"""# Written by bench/postfix.py.
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
maillog_file = {logs}/maillog
maillog_file_prefixes = {logs}
syslog_name = postfix-bench
myhostname = anchor.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {self.domain}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtp_dns_support_level = disabled
transport_maps = inline:{{{self.domain}=smtp:[{NEXTHOP}]:{self.port}}}
"""
        )
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=f"{host}:{port}"))
        # The chrooted smtp client resolves the next hop by its own hosts file: one name, the two sinks' addresses.
        for name in ("services", "host.conf"):
            shutil.copy(f"/etc/{name}", spool / "etc" / name)
        (spool / "etc" / "nsswitch.conf").write_text("hosts: files\n")
        (spool / "etc" / "hosts").write_text(
            "127.0.0.1\tlocalhost\n" + "".join(f"{sink}\t{NEXTHOP}\n" for sink in self.sinks)
        )


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            for task in Path(f"/proc/{parent}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                found += kids
                todo += kids
        except (OSError, ValueError):
            continue
    return found
