"""`send_test_message()`: a small message through the real listener (the route test page, `manage.py sendtest`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils

from django.conf import settings
from django.utils import timezone


def send_test_message(to: str, *, sender: str | None = None, subject: str | None = None) -> str:
    """Inject a small message through the real listener (`ESAROUTES_SMTP_LISTEN`); return the 250 reply text.

    Raises `RuntimeError` with the server's reply or the connection error when the message was not accepted.
    Safe to call from sync code, even from a thread that runs an event loop.
    """
    import aiosmtplib

    host, port = settings.ESAROUTES_SMTP_LISTEN
    sender = sender if sender is not None else f"postmaster@{settings.ESAROUTES_HOSTNAME}"
    now = timezone.now()
    body = (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject or 'esaroutes test message'}\r\n"
        f"Date: {email.utils.format_datetime(now)}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain=settings.ESAROUTES_HOSTNAME)}\r\n\r\n"
        f"Test message sent by esaroutes at {now.isoformat()}.\r\n"
    ).encode()

    async def send() -> str:
        smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, start_tls=False)
        try:
            await smtp.connect()
            errors, reply = await smtp.sendmail(sender, [to], body)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            raise RuntimeError(f"{refused.code} {refused.message}") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise RuntimeError(f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RuntimeError(f"cannot talk to the listener on {host} port {port}: {exc}") from None
        finally:
            smtp.close()
        if errors:
            code, text = next(iter(errors.values()))
            raise RuntimeError(f"{code} {text}")
        return reply

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(send())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, send()).result()
