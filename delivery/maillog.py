"""The mail log in the ESA's own format: line builders, and a writer to the database and `mail.current`.

A line on disk reads `Wed Jul  2 09:15:07 2014 Info: New SMTP DCID 299 interface ...`: ctime local time with a
space-padded day, the level, then the event. Values that come from the outside world (subjects, Message-IDs,
replies) are quoted the way Python's repr() quotes a string, which also escapes CR, LF and every other control
character, so nothing a client sends can start a new log line. Addresses and other unquoted values go through
`clean()`, which escapes the same characters.

Builders return `Line` objects; `write()` stores them in the database inside the caller's transaction (so a log
line exists if and only if the state change it describes was committed) and appends them to the file after
commit, in one batch under a file lock, rolling the file over by size or age.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction

INFO = "Info"
WARNING = "Warning"
CRITICAL = "Critical"
DEBUG = "Debug"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    level: str = INFO
    mid: int | None = None
    icid: int | None = None
    dcid: int | None = None
    domain: str = ""
    host: str = ""
    at: datetime | None = field(default=None, compare=False)


def quote(value: str) -> str:
    """ESA quoting: repr() of the string, so control characters are always escaped."""
    return repr(str(value))


def clean(value: object) -> str:
    """An unquoted value with every control character escaped (a CR/LF can never end the line)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def rid_list(rids: Iterable[int]) -> str:
    return "[" + ", ".join(str(r) for r in rids) + "]"


def reply_tuple(code: int | None, text: str) -> str:
    """`('452', ['4.3.1 Insufficient system resources'])`; `'000'` when there was no SMTP reply."""
    lines = [clean(line) for line in (text.splitlines() or [""])]
    return repr((f"{code:03d}" if code else "000", lines))


def ctime(at: datetime) -> str:
    """`Wed Jul  2 09:15:07 2014` in the machine's local time, like the ESA."""
    return time.ctime(at.timestamp())


# --- inbound ------------------------------------------------------------------------------------------------


def new_icid(icid: int, interface: str, interface_ip: str, address: str, rdns: str, verified: bool) -> Line:
    return Line(
        f"New SMTP ICID {icid} interface {clean(interface)} ({interface_ip}) address {address} "
        f"reverse dns host {clean(rdns or 'unknown')} verified {'yes' if verified else 'no'}",
        icid=icid,
    )


def icid_policy(icid: int, action: str, group: str, rule: str) -> Line:
    return Line(f"ICID {icid} {action} SG {clean(group)} match {clean(rule)} SBRS not enabled", icid=icid)


def icid_tls(icid: int, protocol: str, cipher: str) -> Line:
    return Line(f"ICID {icid} TLS success protocol {clean(protocol)} cipher {clean(cipher)}", icid=icid)


def icid_tls_failed(icid: int, why: str) -> Line:
    return Line(f"ICID {icid} TLS failed: {clean(why)}", icid=icid)


def start_mid(mid: int, icid: int) -> Line:
    return Line(f"Start MID {mid} ICID {icid}", mid=mid, icid=icid)


def mid_from(mid: int, icid: int, sender: str) -> Line:
    return Line(f"MID {mid} ICID {icid} From: <{clean(sender)}>", mid=mid, icid=icid)


def mid_to(mid: int, icid: int, rid: int, address: str, domain: str = "") -> Line:
    return Line(f"MID {mid} ICID {icid} RID {rid} To: <{clean(address)}>", mid=mid, icid=icid, domain=domain)


def rejected_by_rat(icid: int, address: str, mid: int | None = None) -> Line:
    prefix = f"MID {mid} ICID {icid}" if mid is not None else f"ICID {icid}"
    return Line(f"{prefix} To: <{clean(address)}> Rejected by RAT", mid=mid, icid=icid)


def message_id(mid: int, value: str) -> Line:
    return Line(f"MID {mid} Message-ID {quote(value)}", mid=mid)


def subject(mid: int, value: str) -> Line:
    return Line(f"MID {mid} Subject {quote(value)}", mid=mid)


def ready(mid: int, size: int, sender: str) -> Line:
    return Line(f"MID {mid} ready {size} bytes from <{clean(sender)}>", mid=mid)


def queued(mid: int) -> Line:
    return Line(f"MID {mid} queued for delivery", mid=mid)


def icid_close(icid: int) -> Line:
    return Line(f"ICID {icid} close", icid=icid)


def icid_lost(icid: int) -> Line:
    return Line(f"ICID {icid} lost", icid=icid)


# --- delivery -----------------------------------------------------------------------------------------------


def new_dcid(dcid: int, interface: str, address: str, port: int, *, domain: str = "", host: str = "") -> Line:
    return Line(
        f"New SMTP DCID {dcid} interface {interface} address {address} port {port}",
        dcid=dcid,
        domain=domain,
        host=host or address,
    )


def dcid_tls(dcid: int, protocol: str, cipher: str) -> Line:
    return Line(f"DCID {dcid} TLS success protocol {clean(protocol)} cipher {clean(cipher)}", dcid=dcid)


def dcid_tls_failed(dcid: int, why: str) -> Line:
    return Line(f"DCID {dcid} TLS failed: {clean(why)}", dcid=dcid)


def tls_required_failed(dcid: int, address: str) -> Line:
    return Line(
        f"DCID {dcid} IP {address} TLS was required but could not be successfully negotiated",
        level=WARNING,
        dcid=dcid,
        host=address,
    )


def delivery_start(dcid: int, mid: int, rids: Iterable[int]) -> Line:
    return Line(f"Delivery start DCID {dcid} MID {mid} to RID {rid_list(rids)}", mid=mid, dcid=dcid)


def message_done(dcid: int, mid: int, rids: Iterable[int]) -> Line:
    return Line(f"Message done DCID {dcid} MID {mid} to RID {rid_list(rids)}", mid=mid, dcid=dcid)


def response(mid: int, rids: Iterable[int], text: str) -> Line:
    return Line(f"MID {mid} RID {rid_list(rids)} Response {quote(text)}", mid=mid)


def message_finished(mid: int, how: str = "done") -> Line:
    return Line(f"Message finished MID {mid} {how}", mid=mid)


def dcid_close(dcid: int) -> Line:
    return Line(f"DCID {dcid} close", dcid=dcid)


def connection_error(
    dcid: int, domain: str, address: str, port: int, details: str, interface: str, reason: str
) -> Line:
    return Line(
        f"Connection Error: DCID {dcid} domain: {clean(domain)} IP: {address} port: {port} "
        f"details: {clean(details)} interface: {interface} reason: {reason}",
        dcid=dcid,
        domain=domain,
        host=address,
    )


def _outcome(
    kind: str,
    dcid: int,
    mid: int,
    sender: str,
    recipient: str,
    rid: int,
    status: str,
    phrase: str,
    code: int | None,
    reply: str,
) -> str:
    return (
        f"{kind}: DCID {dcid} MID {mid} From: <{clean(sender)}> To: <{clean(recipient)}> RID {rid} - "
        f"{status} - {phrase} {reply_tuple(code, reply)}"
    )


def delayed(
    dcid: int,
    mid: int,
    sender: str,
    recipient: str,
    rid: int,
    status: str,
    phrase: str,
    code: int | None,
    reply: str,
    *,
    domain: str = "",
) -> Line:
    text = _outcome("Delayed", dcid, mid, sender, recipient, rid, status, phrase, code, reply)
    return Line(text, mid=mid, dcid=dcid, domain=domain)


def bounced(
    dcid: int,
    mid: int,
    sender: str,
    recipient: str,
    rid: int,
    status: str,
    phrase: str,
    code: int | None,
    reply: str,
    *,
    domain: str = "",
) -> Line:
    text = _outcome("Bounced", dcid, mid, sender, recipient, rid, status, phrase, code, reply)
    return Line(text, mid=mid, dcid=dcid, domain=domain)


def pending(mid: int, rids: Iterable[int], until: datetime, profile: str) -> Line:
    return Line(f"MID {mid} to RID {rid_list(rids)} pending till {ctime(until)} [{clean(profile)}]", mid=mid)


def generated_bounce(new_mid: int, mid: int) -> Line:
    return Line(f"MID {new_mid} was generated for bounce of MID {mid}", mid=new_mid)


def deleted(mid: int, rids: Iterable[int]) -> Line:
    return Line(f"Deleted: MID {mid} to {rid_list(rids)}", mid=mid)


def message_aborted(mid: int, why: str) -> Line:
    return Line(f"Message aborted MID {mid} {clean(why)}", mid=mid)


def kicking(domain: str) -> Line:
    return Line(f"Kicking destination {clean(domain)}", domain=domain)


# --- writing ------------------------------------------------------------------------------------------------


def format_line(line: Line, at: datetime) -> str:
    return f"{ctime(line.at or at)} {line.level}: {line.text}"


def write(lines: Sequence[Line], *, at: datetime) -> None:
    """Store lines in the database (inside the caller's transaction) and append them to mail.current on commit."""
    from delivery.models import MailLogLine  # the models import this module's builders' callers

    if not lines:
        return
    MailLogLine.objects.bulk_create(
        [
            MailLogLine(
                at=line.at or at,
                level=line.level,
                text=line.text,
                mid=line.mid,
                icid=line.icid,
                dcid=line.dcid,
                domain=line.domain[:255],
                host=line.host[:255],
            )
            for line in lines
        ]
    )
    rendered = [format_line(line, at) for line in lines]
    transaction.on_commit(lambda: log_file().append(rendered))


class MailLogFile:
    """`mail.current` in the mail log directory, shared by every process of this machine.

    Appends happen under an exclusive flock, in one write() per batch. Rollover, when the file passes its size or
    age, renames it to `mail.@<timestamp>.s`, starts a new one and keeps the newest N saved files, as the ESA does.
    """

    def __init__(self, directory: Path, *, max_bytes: int, max_age: float, keep: int) -> None:
        self.directory = directory
        self.path = directory / "mail.current"
        self.lock_path = directory / ".mail.lock"
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.keep = keep

    def append(self, rendered: Sequence[str]) -> None:
        data = "".join(line + "\n" for line in rendered).encode("utf-8", "backslashreplace")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._rollover_if_due()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    if os.fstat(fd).st_size == 0:
                        data = self._header() + data
                    os.write(fd, data)
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def rollover(self) -> Path | None:
        """Roll over now (the ESA's `rollovernow`); returns the saved file."""
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._rollover()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def saved_files(self) -> list[Path]:
        return sorted(self.directory.glob("mail.@*.s"))

    def _header(self) -> bytes:
        now = time.time()
        offset = int(time.localtime(now).tm_gmtoff)
        lines = [
            f"{time.ctime(now)} Info: Begin Logfile",
            f"{time.ctime(now)} Info: Version: esaroutes SN: {socket.gethostname()}",
            f"{time.ctime(now)} Info: Time offset from UTC: {offset} seconds",
        ]
        return "".join(line + "\n" for line in lines).encode()

    def _rollover_if_due(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if st.st_size >= self.max_bytes or (st.st_size and time.time() - _birth(self.path, st) >= self.max_age):
            self._rollover()

    def _rollover(self) -> Path | None:
        if not self.path.exists():
            return None
        with self.path.open("ab") as fh:
            fh.write(f"{time.ctime()} Info: Logfile rolled over\n".encode())
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
        target = self.directory / f"mail.@{stamp}.s"
        n = 1
        while target.exists():
            target = self.directory / f"mail.@{stamp}.{n}.s"
            n += 1
        self.path.rename(target)
        for old in self.saved_files()[: -self.keep or None]:
            old.unlink(missing_ok=True)
        return target


def _birth(path: Path, st: os.stat_result) -> float:
    """When mail.current was started: the time in its first line, else its change time."""
    try:
        with path.open("rb") as fh:
            first = fh.readline(64).decode("ascii", "replace")
        return time.mktime(time.strptime(first[:24], "%a %b %d %H:%M:%S %Y"))
    except (OSError, ValueError):
        return st.st_ctime


_log_file: MailLogFile | None = None


def log_file() -> MailLogFile:
    global _log_file
    if _log_file is None or _log_file.directory != settings.MAIL_LOG_DIR:
        _log_file = MailLogFile(
            settings.MAIL_LOG_DIR,
            max_bytes=settings.ESAROUTES_MAILLOG_MAX_BYTES,
            max_age=settings.ESAROUTES_MAILLOG_MAX_AGE,
            keep=settings.ESAROUTES_MAILLOG_KEEP,
        )
    return _log_file
