"""Injection over HTTP (`POST /api/v1/messages`): a message through the same durable intake as an SMTP session.

    injected = inject.inject(sender="app@origin.test", recipients=["a@dest.test"], raw=b"Subject: hi\\r\\n\\r\\nHi.",
                             client_ip="127.0.0.1", user="api:alice/deploy")

The same rules as the listener, from the same settings: address syntax, `ESAROUTES_SMTP_MAX_RECIPIENTS`,
`ESAROUTES_SMTP_MAX_MESSAGE_SIZE`, and the relay rules of a client at `client_ip` (a relay network relays;
anyone else only to the domains the Recipient Access Table and the routes accept: a token is not an open relay).
The message gets a `Received:` header (`with HTTP`, `HTTPS` behind TLS), an ICID of its own, and the session's
mail-log lines (`New SMTP ICID ... interface API`, the policy line, `SMTP Auth: ... mechanism: API TOKEN`, the
MID lines, `ICID n close`), stored with the message in one transaction (`intake.accept_many`), so the MID
returned exists once committed, and the worker is rung after the commit as for SMTP.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from delivery import access, maillog
from delivery.listener import config as listener_config
from delivery.listener import headers
from delivery.spool import intake

INTERFACE = "API"


class Refused(ValueError):
    """The message cannot be accepted: `field` names what is wrong, `status` the HTTP answer (422, 403, 413)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True, slots=True)
class Injected:
    mid: int
    icid: int


_HEADER_SAFE = re.compile(r"[^\x21-\x7e]")


def received_header(hostname: str, client_ip: str, icid: int, rcpts: Sequence[str], now: datetime, tls: bool) -> bytes:
    """`Received: from [ip] ([ip]) by us (esaroutes) with HTTP id ICID.1 for <rcpt>; date` (RFC 5321 §4.4)."""
    ip = _HEADER_SAFE.sub("?", client_ip or "unknown")
    text = (
        f"Received: from [{ip}] ([{ip}])\r\n\tby {hostname} (esaroutes) with {'HTTPS' if tls else 'HTTP'} id {icid}.1"
    )
    if len(rcpts) == 1 and not _HEADER_SAFE.search(rcpts[0]):
        text += f"\r\n\tfor <{rcpts[0]}>"
    text += f";\r\n\t{email.utils.format_datetime(now.astimezone())}\r\n"
    return text.encode("utf-8", "surrogateescape")


def check(
    sender: str, recipients: Sequence[str], raw: bytes, *, client_ip: str, config: listener_config.Config
) -> tuple[bool, str]:
    """Refuse what the listener would refuse; returns (relay?, the policy rule) for the ICID policy line."""
    if access.address_problem(sender) or (sender and ("@" not in sender or not access.path_syntax_ok(f"<{sender}>"))):
        raise Refused("sender", "Bad sender address syntax (5.1.7).")
    if not recipients:
        raise Refused("recipients", "Give at least one recipient.")
    if len(recipients) > config.max_recipients:
        raise Refused("recipients", f"Too many recipients: at most {config.max_recipients} (4.5.3).")
    if len(raw) > config.max_message_size:
        raise Refused("message", f"The message has {len(raw)} bytes; at most {config.max_message_size} (5.3.4).", 413)
    if not raw.strip():
        raise Refused("message", "The message is empty.")
    snap = access.load_snapshot(None)
    network = access.relay_match(snap, client_ip) if client_ip else None
    relay = network is not None
    for address in recipients:
        if (
            access.address_problem(address)
            or "@" not in address
            or not address.rpartition("@")[0]
            or not access.path_syntax_ok(f"<{address}>")
        ):
            raise Refused("recipients", f"Bad recipient address syntax: {address!r} (5.1.3).")
        if not access.check_recipient(snap, address, raw=f"<{address}>", relay=relay).accepted:
            raise Refused("recipients", f"<{address}>... Relaying denied (5.7.1).", 403)
    return relay, str(network) if network is not None else "ALL"


def inject(
    *,
    sender: str,
    recipients: Sequence[str],
    raw: bytes,
    client_ip: str,
    user: str,
    tls: bool = False,
    now: datetime | None = None,
) -> Injected:
    """Check, then store the message with its log lines in one transaction; raises Refused, or a database error."""
    config = listener_config.config_from_settings()
    relay, rule = check(sender, recipients, raw, client_ip=client_ip, config=config)
    now = now or timezone.now()
    icid = intake.new_icid()
    fields = headers.header_values(raw)
    data = received_header(config.hostname, client_ip, icid, recipients, now, tls) + raw
    opened = [
        maillog.lines.new_icid(icid, INTERFACE, config.hostname, client_ip or "unknown", "unknown", False),
        maillog.lines.icid_policy(
            icid, "RELAY" if relay else "ACCEPT", access.RELAY_GROUP if relay else access.ACCEPT_GROUP, rule
        ),
        maillog.lines.auth_succeeded(icid, user, "API TOKEN"),
    ]
    incoming = intake.Incoming(
        icid=icid,
        sender=sender,
        recipients=tuple((r, access.envelope_domain(r)) for r in recipients),
        data=data,
        client_address=client_ip or None,
        client_helo="",
        auth_user=user[:150],
        message_id=headers.storable(fields.get("message-id", "")),
        subject=headers.decode_subject(fields.get("subject", "")),
        pending_lines=tuple(intake.stamp(line, now) for line in opened),
    )
    with transaction.atomic():  # the message, its lines and the ICID's close: all or nothing
        (mid,) = intake.accept_many([incoming], now=now)
        maillog.writer.write([maillog.lines.icid_close(icid)], at=now)
    return Injected(mid=mid, icid=icid)
