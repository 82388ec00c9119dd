"""Build queue rows and mail log lines the way the listener and delivery.spool write them."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from delivery import maillog
from delivery.models import DeliveryAttempt, HostStatus, Message, MessageBody, Recipient

_ids = itertools.count(1000)


def make_message(
    *,
    sender: str = "alice@example.test",
    recipients: tuple[str, ...] = ("user@dest.test",),
    subject: str = "Hello",
    message_id: str = "<m1@example.test>",
    at: datetime | None = None,
    icid: int | None = None,
    bounce_of: Message | None = None,
) -> Message:
    at = at or timezone.now()
    icid = next(_ids) if icid is None else icid
    body = (
        f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n\r\nHi\r\n"
    )
    with transaction.atomic():
        m = Message.objects.create(
            icid=icid,
            sender=sender,
            client_address="127.0.0.1",
            client_helo="client.test",
            message_id=message_id,
            subject=subject,
            size=len(body),
            received_at=at,
            next_attempt_at=at,
            bounce_of=bounce_of,
        )
        MessageBody.objects.create(message=m, data=body.encode())
        lines = [maillog.lines.start_mid(m.pk, icid), maillog.lines.mid_from(m.pk, icid, sender)]
        for rid, address in enumerate(recipients):
            domain = address.rpartition("@")[2].lower()
            Recipient.objects.create(message=m, rid=rid, address=address, domain=domain, next_attempt_at=at)
            lines.append(maillog.lines.mid_to(m.pk, icid, rid, address, domain))
        lines += [
            maillog.lines.message_id(m.pk, message_id),
            maillog.lines.subject(m.pk, subject),
            maillog.lines.ready(m.pk, len(body), sender),
            maillog.lines.queued(m.pk),
        ]
        maillog.writer.write(lines, at=at)
    return m


def attempt(
    message: Message,
    *,
    host: str,
    port: int = 25,
    code: int | None = 250,
    reply: str = "2.0.0 Ok: queued",
    outcome: str = DeliveryAttempt.Outcome.DELIVERED,
    at: datetime | None = None,
    rids: tuple[int, ...] | None = None,
) -> int:
    """One connection to `host` for the message's recipients, recorded like delivery.spool.record records it."""
    at = at or timezone.now()
    dcid = next(_ids)
    recipients = [r for r in message.recipients.all() if rids is None or r.rid in rids]
    with transaction.atomic():
        hs, _ = HostStatus.objects.get_or_create(host=host, port=port)
        lines: list[Any] = [maillog.lines.new_dcid(dcid, "Data 1", host, port, domain=recipients[0].domain, host=host)]
        lines.append(maillog.lines.delivery_start(dcid, message.pk, [r.rid for r in recipients], host=host))
        for r in recipients:
            DeliveryAttempt.objects.create(
                recipient=r,
                message=message,
                dcid=dcid,
                at=at,
                host=host,
                ip=host,
                port=port,
                code=code,
                response=reply,
                outcome=outcome,
            )
            r.attempts += 1
            r.last_code, r.last_response, r.last_host = code, reply, host
            if outcome == DeliveryAttempt.Outcome.DELIVERED:
                r.state = Recipient.State.DELIVERED
                r.finished_at = at
            elif outcome == DeliveryAttempt.Outcome.BOUNCED:
                r.state = Recipient.State.BOUNCED
                r.finished_at = at
                lines.append(
                    maillog.lines.rcpt_outcome(
                        maillog.lines.BOUNCED,
                        dcid,
                        message.pk,
                        message.sender,
                        r.address,
                        r.rid,
                        "5.1.0",
                        "Unknown address error",
                        code,
                        reply,
                        domain=r.domain,
                        host=host,
                    )
                )
            elif outcome == DeliveryAttempt.Outcome.DELAYED:
                r.state = Recipient.State.DELAYED
                r.next_attempt_at = at + timedelta(minutes=1)
                lines.append(
                    maillog.lines.rcpt_outcome(
                        maillog.lines.DELAYED,
                        dcid,
                        message.pk,
                        message.sender,
                        r.address,
                        r.rid,
                        "4.0.0",
                        "Unknown address error",
                        code,
                        reply,
                        domain=r.domain,
                        host=host,
                    )
                )
            r.save()
        if outcome == DeliveryAttempt.Outcome.DELIVERED:
            lines.append(maillog.lines.message_done(dcid, message.pk, [r.rid for r in recipients], host=host))
            lines.append(maillog.lines.response(message.pk, [r.rid for r in recipients], reply, host=host))
            hs.delivered += len(recipients)
            hs.last_success_at = at
            hs.consecutive_failures = 0
        else:
            hs.failed += 1
            hs.consecutive_failures += 1
            hs.last_error = f"{code} {reply}"
            hs.last_error_at = at
        hs.save()
        lines.append(maillog.lines.dcid_close(dcid))
        if not message.recipients.filter(state__in=Recipient.ACTIVE).exists():
            Message.objects.filter(pk=message.pk).update(state=Message.State.DONE, finished_at=at)
            lines.append(maillog.lines.message_finished(message.pk))
        maillog.writer.write(lines, at=at)
    return dcid
