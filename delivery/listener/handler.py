"""`Handler`: the SMTP decisions, as aiosmtpd's handler hooks; testable without a socket.

HELO/EHLO names, sender and recipient syntax, relay or the Recipient Access Table at RCPT, the recipient limit,
AUTH checked off the loop behind the login throttle, and the durable DATA: `250 2.0.0 Ok: queued as <MID>` only
once the group commit stored the message, `451 4.3.0` otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from aiosmtpd.smtp import Session as SmtpSession
from django import db
from django.utils import timezone

from delivery import access, maillog
from delivery.listener import headers
from delivery.listener.commit import Committer
from delivery.listener.config import Config
from delivery.listener.conn import Conn
from delivery.listener.session import Session
from delivery.spool import intake
from esaroutes import throttle

logger = logging.getLogger(__name__)

LOCAL_ERROR = "451 4.3.0 Local error, try again later"
AUTH_THROTTLED = "421 4.7.0 Too many authentication failures, try again later"

_HELO_OK = re.compile(r"[\x21-\x7e]{1,255}")


R = TypeVar("R")


class Owner(Protocol):
    """What the handler uses of its listener (`server.Listener`)."""

    config: Config
    snapshot: access.AccessSnapshot
    committer: Committer | None

    async def db(self, fn: Callable[..., R], *args: Any) -> R: ...


class Handler:
    def __init__(self, listener: Owner) -> None:
        self.listener = listener

    async def handle_exception(self, error: Exception) -> str:
        logger.error("SMTP session error", exc_info=error)
        return LOCAL_ERROR

    async def handle_HELO(self, server: Session, session: SmtpSession, envelope: Envelope, hostname: str) -> str:
        if not _HELO_OK.fullmatch(hostname):
            return "501 5.5.4 Invalid HELO name"
        session.host_name = hostname
        server.conn.helo = hostname
        return f"250 {self.listener.config.hostname}"

    async def handle_EHLO(
        self, server: Session, session: SmtpSession, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        if not _HELO_OK.fullmatch(hostname):
            session.host_name = None
            return ["501 5.5.4 Invalid EHLO name"]
        session.host_name = hostname
        server.conn.helo = hostname
        out = [r for r in responses if r != "250 HELP"]
        out.append("250-PIPELINING")
        out.append("250 ENHANCEDSTATUSCODES")
        return out

    def handle_STARTTLS(self, server: Session, session: SmtpSession, envelope: Envelope) -> bool:
        """Called by aiosmtpd (synchronously) once the TLS handshake is done: note it for Received and the log."""
        conn = server.conn
        conn.tls = True
        ssl_object = (session.ssl or {}).get("ssl_object")
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            conn.log(maillog.lines.icid_tls(conn.icid, ssl_object.version() or "", cipher[0] if cipher else ""))
        return True

    async def handle_MAIL(
        self, server: Session, session: SmtpSession, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        sender = "" if address == "<>" else address
        if access.address_problem(sender) or not access.path_syntax_ok(server.mail_raw):
            return "553 5.1.7 Bad sender address syntax"
        envelope.mail_from = address  # "<>" kept as is: aiosmtpd tests mail_from for truth
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Session, session: SmtpSession, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        conn = server.conn
        if (
            access.address_problem(address)
            or "@" not in address
            or not address.rpartition("@")[0]
            or not access.path_syntax_ok(server.rcpt_raw)
        ):
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= self.listener.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        relay = conn.relay or bool(session.authenticated)
        decision = access.check_recipient(self.listener.snapshot, address, raw=server.rcpt_raw, relay=relay)
        if not decision.accepted:
            conn.log(maillog.lines.rejected_by_rat(conn.icid, address))
            return f"550 5.7.1 <{address}>... Relaying denied"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Session, session: SmtpSession, envelope: Envelope) -> str:
        conn = server.conn
        conn.messages += 1
        raw = envelope.original_content or b""
        assert isinstance(raw, bytes)
        now = timezone.now()
        sender = "" if envelope.mail_from in ("<>", None) else str(envelope.mail_from)
        recipients = tuple((r, access.envelope_domain(r)) for r in envelope.rcpt_tos)
        fields = headers.header_values(raw)
        data = headers.received_header(self.listener.config, conn, session, envelope.rcpt_tos, now) + raw
        pending, conn.pending = conn.pending, []
        incoming = intake.Incoming(
            icid=conn.icid,
            sender=sender,
            recipients=recipients,
            data=data,
            client_address=_ip_or_none(conn.ip),
            client_helo=conn.helo,
            auth_user=conn.auth_user,
            message_id=headers.storable(fields.get("message-id", "")),
            subject=headers.decode_subject(fields.get("subject", "")),
            pending_lines=tuple(pending),
        )
        server.hold_timeout()
        try:
            assert self.listener.committer is not None
            mid = await self.listener.committer.submit(incoming)
        except (db.Error, OSError):
            conn.pending[:0] = pending
            logger.exception("ICID %s: message not stored, answered 451", conn.icid)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        except Exception:
            conn.pending[:0] = pending
            raise
        return f"250 2.0.0 Ok: queued as {mid}"

    # --- AUTH: aiosmtpd parses, we check the password in the worker pool ----------------------------------
    # Behind the login throttle (esaroutes/throttle.py, scope SMTP): a client address or a username with too many
    # recent failures, counted in the shared cache across connections and listener processes, gets a 421 and the
    # connection closed before any password is checked. Every outcome is a mail log line, written at once.

    async def auth_PLAIN(self, server: Session, args: list[str]) -> AuthResult:
        return await self._auth(server, await server.auth_PLAIN(None, args), "PLAIN")

    async def auth_LOGIN(self, server: Session, args: list[str]) -> AuthResult:
        return await self._auth(server, await server.auth_LOGIN(None, args), "LOGIN")

    async def _auth(self, server: Session, parsed: AuthResult, mechanism: str) -> AuthResult:
        if not parsed.success or not isinstance(parsed.auth_data, LoginPassword):
            return parsed
        conn = server.conn
        username = parsed.auth_data.login.decode("utf-8", "replace")
        password = parsed.auth_data.password.decode("utf-8", "replace")
        snapshot = self.listener.snapshot
        outcome = await self.listener.db(
            throttle.attempt, throttle.SMTP, conn.ip, username, lambda: access.check_login(snapshot, username, password)
        )
        if outcome.refusal is not None:
            self._log_auth(server, _throttled_line(conn, username, outcome.refusal))
            logger.warning(
                "ICID %s: SMTP AUTH refused for %r from %s: too many authentication failures for the %s",
                conn.icid,
                username,
                conn.ip,
                outcome.refusal.by,
            )
            server._closing = True
            await server.push(AUTH_THROTTLED)
            server._close()
            return AuthResult(success=False, handled=True)
        if not outcome.ok:
            lines = [maillog.lines.auth_failed(conn.icid, username, mechanism)]
            refusal = throttle.decide(outcome.counts, throttle.policy(throttle.SMTP)) if outcome.locked_now else None
            if refusal is not None:
                lines.append(_throttled_line(conn, username, refusal))
            self._log_auth(server, *lines)
            logger.info("ICID %s: SMTP AUTH failed for %r from %s", conn.icid, username, conn.ip)
            return AuthResult(success=False, handled=False)
        self._log_auth(server, maillog.lines.auth_succeeded(conn.icid, username, mechanism))
        conn.auth_user = username
        return AuthResult(success=True, auth_data=parsed.auth_data)

    def _log_auth(self, server: Session, *lines: maillog.lines.Line) -> None:
        """Into the mail log now (an operator alerts on these), after the connection's lines still buffered."""
        conn = server.conn
        stamped = [intake.stamp(line) for line in lines]
        if self.listener.committer is None:
            conn.pending += stamped
            return
        pending, conn.pending = conn.pending, []
        self.listener.committer.log([*pending, *stamped])


def _throttled_line(conn: Conn, username: str, refusal: throttle.Refusal) -> maillog.lines.Line:
    failures = refusal.counts.address if refusal.by == "address" else refusal.counts.username
    return maillog.lines.auth_throttled(conn.icid, conn.ip, username, refusal.by, failures, refusal.lockout)


def _ip_or_none(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
