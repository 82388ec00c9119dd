"""The README's run command: brings up web, listener, worker and beat; Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)  # polling a child process's port: there is no event to wait on
    return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _smtp_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def newcomer_environ(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment as a newcomer's shell has it: the embedded default (no DATABASE_URL, no
    REDIS_URL) in a fresh data directory under tmp_path, plus `settings`."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DJANGO_ALLOW") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    environ.update(ESAROUTES_DATA_DIR=str(tmp_path / "var"), **settings)
    return environ


def test_run_starts_everything_and_ctrl_c_stops_it(tmp_path):
    web, smtp = _free_port(), _free_port()
    # What a newcomer runs: the embedded default in a fresh data directory, whichever database this pass uses.
    environ = newcomer_environ(
        tmp_path,
        ESAROUTES_WEB_LISTEN=f"127.0.0.1:{web}",
        ESAROUTES_SMTP_LISTEN=f"127.0.0.1:{smtp}",
        ESAROUTES_ADMIN_PASSWORD="a-long-admin-password",
        PYTHON=sys.executable,
    )
    proc = subprocess.Popen(
        [str(ROOT / "bin" / "run")],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    children: set[int] = set()
    try:
        web_up = _wait_until(lambda: _http_ok(f"http://127.0.0.1:{web}/login/"), 120)
        smtp_up = web_up and _wait_until(lambda: _smtp_banner(smtp), 60)
        redirected = False
        if smtp_up:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=5) as response:
                redirected = "/login/" in response.url  # redirected to the login page
            children = _descendants(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert web_up, f"the web UI did not come up:\n{output[-3000:]}"
    assert smtp_up, f"the SMTP listener did not come up:\n{output[-3000:]}"
    assert redirected and len(children) >= 4, output[-3000:]
    for prefix in ("web.1", "smtp.1", "worker.1", "beat.1"):
        assert prefix in output
    assert _wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 30), output[-3000:]
