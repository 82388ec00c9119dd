"""The mail log's lines in the ESA's own format: pure builders, no database, no file.

A line on disk reads `Wed Jul  2 09:15:07 2014 Info: New SMTP DCID 299 interface ...`: ctime local time with a
space-padded day, the level, then the event. Values that come from the outside world (subjects, Message-IDs,
replies) are quoted the way Python's repr() quotes a string, which also escapes CR, LF and every other control
character, so nothing a client sends can start a new log line. Addresses and other unquoted values go through
`clean()`, which escapes the same characters.

Builders return `Line` objects; `delivery.maillog.writer.write()` stores them and appends them to the file;
`format_line()` gives a line's text on disk.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

INFO = "Info"
WARNING = "Warning"
CRITICAL = "Critical"
DEBUG = "Debug"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")  # and lone surrogates (bytes not UTF-8)


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
    """The client went away without QUIT (and we did not close it): the ESA's `ICID 4 lost`."""
    return Line(f"ICID {icid} lost", icid=icid)


def icid_tls_failed(icid: int, why: str) -> Line:
    """`ICID 4 TLS failed: [Errno 54] Connection reset by peer`: a STARTTLS handshake that did not complete."""
    return Line(f"ICID {icid} TLS failed: {clean(why)}", icid=icid)


def auth_succeeded(icid: int, user: str, mechanism: str) -> Line:
    """The ESA's `SMTP Auth: (ICID 450) succeeded for user: ironport using AUTH mechanism: PLAIN with profile: ...`
    (TAC 118570), without the profile: esaroutes has one user table."""
    return Line(
        f"SMTP Auth: (ICID {icid}) succeeded for user: {clean(user)} using AUTH mechanism: {mechanism}", icid=icid
    )


def auth_failed(icid: int, user: str, mechanism: str) -> Line:
    return Line(f"SMTP Auth: (ICID {icid}) failed for user: {clean(user)} using AUTH mechanism: {mechanism}", icid=icid)


def auth_throttled(icid: int, address: str, user: str, by: str, failures: int, lockout: int) -> Line:
    """A client refused AUTH by the throttle (ours, in the same shape): a Warning, the line to alert on."""
    return Line(
        f"SMTP Auth: (ICID {icid}) address {clean(address)} user: {clean(user)} throttled: too many authentication "
        f"failures ({failures} for the {by}), AUTH refused for {lockout} seconds after the last failure",
        level=WARNING,
        icid=icid,
    )


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
    """`DCID 80167 TLS failed: ...`: the STARTTLS handshake with the host did not complete."""
    return Line(f"DCID {dcid} TLS failed: {clean(why)}", dcid=dcid)


def tls_required_failed(dcid: int, address: str) -> Line:
    return Line(
        f"DCID {dcid} IP {address} TLS was required but could not be successfully negotiated",
        level=WARNING,
        dcid=dcid,
        host=address,
    )


def delivery_start(dcid: int, mid: int, rids: Iterable[int], *, domain: str = "", host: str = "") -> Line:
    return Line(
        f"Delivery start DCID {dcid} MID {mid} to RID {rid_list(rids)}", mid=mid, dcid=dcid, domain=domain, host=host
    )


def message_done(dcid: int, mid: int, rids: Iterable[int], *, domain: str = "", host: str = "") -> Line:
    return Line(
        f"Message done DCID {dcid} MID {mid} to RID {rid_list(rids)}", mid=mid, dcid=dcid, domain=domain, host=host
    )


def response(mid: int, rids: Iterable[int], text: str, *, domain: str = "", host: str = "") -> Line:
    return Line(f"MID {mid} RID {rid_list(rids)} Response {quote(text)}", mid=mid, domain=domain, host=host)


def possible_delivery(dcid: int, mid: int, rids: Iterable[int], *, domain: str = "", host: str = "") -> Line:
    """The connection was lost after the final dot went out and before its reply: the peer may have the message.
    What happened next follows: `Message done` (counted delivered) or `Delayed:` (sent again to the next host)."""
    return Line(
        f"Possible Delivery: DCID {dcid} MID {mid} to RID {rid_list(rids)}",
        mid=mid,
        dcid=dcid,
        domain=domain,
        host=host,
    )


def message_finished(mid: int, how: str = "done") -> Line:
    return Line(f"Message finished MID {mid} {how}", mid=mid)


def dcid_close(dcid: int, why: str = "") -> Line:
    """`DCID 7 close`; a connection the peer closed or that timed out says so (`why`, from
    `engine.close_reason()`): `DCID 7 close (timed out)`."""
    return Line(f"DCID {dcid} close ({why})" if why else f"DCID {dcid} close", dcid=dcid)


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


#: The two recipient outcomes that carry a reply: a soft bounce (4xx, no reply, waiting or moving on) and a hard one.
DELAYED = "Delayed"
BOUNCED = "Bounced"


def rcpt_outcome(
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
    *,
    domain: str = "",
    host: str = "",
) -> Line:
    """`Delayed: DCID 1 MID 1 From: <s> To: <r> RID 0 - 4.3.1 - Mail system full ('452', ['4.3.1 ...'])`, or
    `Bounced: ...` in the same shape (`kind` is DELAYED or BOUNCED). Every line of a multi-line reply is in the
    tuple; `'000'` when there was no reply."""
    if kind not in (DELAYED, BOUNCED):
        raise ValueError(f"not a recipient outcome: {kind!r}")
    return Line(
        f"{kind}: DCID {dcid} MID {mid} From: <{clean(sender)}> To: <{clean(recipient)}> RID {rid} - "
        f"{status} - {phrase} {reply_tuple(code, reply)}",
        mid=mid,
        dcid=dcid,
        domain=domain,
        host=host,
    )


def recorded_without_details(mid: int, error: str) -> Line:
    """The outcome of a delivery could be recorded only reduced to its facts (see queue.essential_report)."""
    return Line(
        f"MID {mid} outcome recorded without its replies: recording it in full failed ({clean(error)})",
        level=WARNING,
        mid=mid,
    )


#: The two notices generated here to a message's sender: its bounce, and a delay warning (its bounce profile's).
BOUNCE = "bounce"
DELAY_WARNING = "delay warning"


def generated(kind: str, new_mid: int, mid: int) -> Line:
    """`MID 12 was generated for bounce of MID 9`, or `... for delay warning of MID 9` (`kind` is BOUNCE or
    DELAY_WARNING): MID `new_mid` is that notice to the sender of MID `mid`."""
    if kind not in (BOUNCE, DELAY_WARNING):
        raise ValueError(f"not a generated notice: {kind!r}")
    return Line(f"MID {new_mid} was generated for {kind} of MID {mid}", mid=new_mid)


def deleted(mid: int, rids: Iterable[int]) -> Line:
    return Line(f"Deleted: MID {mid} to {rid_list(rids)}", mid=mid)


def kicking(domain: str) -> Line:
    return Line(f"Kicking destination {clean(domain)}", domain=domain)


def format_line(line: Line, at: datetime) -> str:
    return f"{ctime(line.at or at)} {line.level}: {line.text}"


def suspended(domain: str) -> Line:
    """Mail for `domain` was due and stays queued: an operator suspended its deliveries (`suspenddel`)."""
    return Line(f"Deliveries are currently suspended [{clean(domain)}]", domain="" if domain == "ALL" else domain)


def suspension_changed(domain: str, *, suspended: bool, by: str) -> Line:
    """An operator suspended or resumed the deliveries to `domain` ("ALL": every domain)."""
    verb = "suspended" if suspended else "resumed"
    return Line(f"Deliveries {verb} [{clean(domain)}] by {clean(by)}", domain="" if domain == "ALL" else domain)


def held(mid: int, rids: Iterable[int], *, by: str) -> Line:
    """An operator put recipients on hold (`holdrecipients`): they stay queued, untried, until released."""
    return Line(f"Held: MID {mid} to {rid_list(rids)} by {clean(by)}", mid=mid)


def released(mid: int, rids: Iterable[int], *, by: str) -> Line:
    """An operator released held recipients (`releaserecipients`): they are due now."""
    return Line(f"Released: MID {mid} to {rid_list(rids)} by {clean(by)}", mid=mid)


def redirected(mid: int, rids: Iterable[int], host: str, port: int, *, by: str) -> Line:
    """An operator redirected queued recipients (`redirectrecipients`): their next connection goes to host:port."""
    return Line(f"Redirected: MID {mid} to {rid_list(rids)} to {clean(host)}:{port} by {clean(by)}", mid=mid, host=host)


def redirect_cancelled(mid: int, rids: Iterable[int], *, by: str) -> Line:
    """An operator cancelled a redirect (`redirectrecipients --cancel`): the recipients follow their route again."""
    return Line(f"Redirect cancelled: MID {mid} to {rid_list(rids)} by {clean(by)}", mid=mid)


def fallback_relay(mid: int, rids: Iterable[int], host: str, port: int, *, domain: str, tried: int) -> Line:
    """Every host of the recipients' route (`tried` of them) failed them in this attempt: they go to the route's
    fallback relay (or ESAROUTES_DELIVERY_FALLBACK_RELAY) before they wait for their retry."""
    return Line(
        f"MID {mid} RID {rid_list(rids)} to fallback relay {clean(host)}:{port}: "
        f"{tried} host{'s' if tried != 1 else ''} for {clean(domain)} failed",
        mid=mid,
        domain=domain,
        host=host,
    )


def skipped_host(mid: int, rids: Iterable[int], host: str, port: int, *, domain: str) -> Line:
    """The recipients passed `host` over for the route's next host: a connection to it is still waiting for its
    first greeting and this worker has not seen it greet lately (`engine.before_connecting`). Nothing was tried
    there: no Connection Error, the host is not marked down."""
    return Line(
        f"MID {mid} RID {rid_list(rids)} skipped host {clean(host)}:{port} for {clean(domain)}: "
        "its first connection has not greeted yet",
        mid=mid,
        domain=domain,
        host=host,
    )


def max_connections_reached(limit: int, domain: str) -> Line:
    """Mail for `domain` waits: its destination control's concurrent connections are all open (once per episode)."""
    return Line(f"Maximum outbound connections {limit} reached for {clean(domain)}", domain=domain)


def recipient_limit_throttled(domain: str, interface: str) -> Line:
    """Mail for `domain` waits: its recipient limit is reached for this window (once per episode)."""
    return Line(f"Delivery to {clean(domain)} {clean(interface)} throttled by recipient limit", domain=domain)


def recipient_limit_expired(domain: str, interface: str) -> Line:
    """The recipient limit's window moved on: the mail `recipient_limit_throttled` held back goes again."""
    return Line(f"Recipient limit expired; resume delivery to {clean(domain)} {clean(interface)}", domain=domain)
