"""What the listener does to go fast, kept honest: the address fast path, ICID blocks, every line in the mail log
file at stop, and several processes on one port (intake's ICID reservation and group commit: tests/delivery/spool;
the background mail log writer: tests/delivery/maillog/test_writer.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from django.conf import settings
from django.db import connection

from delivery.listener.session import Session
from delivery.models import MailLogLine, Message, Recipient
from tests.listener.conftest import send

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "arg",
    [
        "<a@b.c>",
        "<a@b.c> SIZE=100",
        "<a.b+c@d-e.f> BODY=8BITMIME SMTPUTF8",
        "<a@b.c>  x",
        "<a@b.c>\t1",
        "<a@b.c> (comment) X=1",
        "<a@b.c> X=1 ",
        "<a@b.c>x",
        "<a..b@c>",
        '<"q"@b.c>',
        "<a@[1.2.3.4]>",
        "<@r:a@b.c>",
        " <a@b.c>",
        "<a@b.c >",
        "<a@b.c.>",
        "<.a@b.c>",
        "<a{b}@c.d>",
        "<>",
        "",
        "<" + "l" * 70 + "@b.c>",
    ],
)
@pytest.mark.parametrize("limit", [0, 64])
def test_address_fast_path_returns_what_aiosmtpd_parser_returns(arg, limit):
    session = Session.__new__(Session)
    session.local_part_limit = limit
    assert session._getaddr(arg) == SMTP._getaddr(session, arg)


def test_one_connection_costs_no_icid_query_until_the_block_is_used(start_listener, django_assert_max_num_queries):
    smtpd = start_listener()
    smtpd.send(["bob@dest.test"])
    first = Message.objects.get().icid
    smtpd.send(["bob@dest.test"])
    assert Message.objects.order_by("-id")[0].icid == first + 1  # the next ICID of this listener's block


# --- the background mail log writer -----------------------------------------------------------------------------


def _file_lines(directory: Path) -> list[str]:
    text = (directory / "mail.current").read_text()
    return [line.split(" Info: ", 1)[1] for line in text.splitlines() if " Info: " in line]


def test_listener_stop_leaves_every_line_in_the_file(start_listener):
    smtpd = start_listener()
    for _ in range(5):
        smtpd.send(["bob@dest.test"])
    smtpd.thread.stop()
    texts = list(MailLogLine.objects.filter(mid__isnull=False).order_by("id").values_list("text", flat=True))
    wanted = set(texts)
    on_disk = [t for t in _file_lines(Path(settings.MAIL_LOG_DIR)) if t in wanted]
    assert len(texts) == 5 * 6
    assert on_disk == texts


# --- several processes on one port ------------------------------------------------------------------------------


def server_pid(port: int, client: tuple[str, int], pids: Iterable[int]) -> int | None:
    """The process (of `pids`) holding the server side of the connection client -> 127.0.0.1:port, found through
    /proc/net/tcp (addresses there are little-endian hex)."""

    def hexaddr(ip: str, p: int) -> str:
        return f"{socket.inet_aton(ip)[::-1].hex().upper()}:{p:04X}"

    want = (hexaddr("127.0.0.1", port), hexaddr(*client))
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == want:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if str(fd.readlink()) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing and /proc: Linux")
def test_several_processes_share_the_port_and_each_accepts(base_rows, tmp_path):
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        url = f"sqlite:///{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "ESAROUTES_LOG_LEVEL": "WARNING", "ESAROUTES_DATA_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "manage.py", "smtpd", "--listen", "127.0.0.1:0", "--processes", "3", "--grace", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "(3 processes)" in line, line
        port = int(line.split(" port ")[1].split()[0])
        children = [int(p) for p in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        pids = [server.pid, *children]
        assert len(pids) == 3
        seen: set[int] = set()
        import socket as socket_module

        deadline = time.monotonic() + 30
        while len(seen) < 3 and time.monotonic() < deadline:
            with socket_module.create_connection(("127.0.0.1", port), timeout=10) as sock:
                assert sock.recv(1024).startswith(b"220 ")  # accepted and greeted
                pid = server_pid(port, sock.getsockname(), pids)
                assert pid is not None
                seen.add(pid)
        assert seen == set(pids)
        import asyncio

        for i in range(12):
            errors, reply = asyncio.run(send("127.0.0.1", port, [f"r{i}@dest.test"], b"Subject: p\r\n\r\nx\r\n"))
            assert errors == {} and "queued as" in reply
        assert Recipient.objects.filter(address__startswith="r").count() == 12
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "SMTP listener stopped" in out
    time.sleep(0.1)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
