"""`manage.py sendtest --to ADDR [--from ADDR] [--subject TEXT]`: inject a test message through the listener."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery.listener import sendtest


class Command(BaseCommand):
    help = "Send a test message through the running SMTP listener and print its reply (with the MID)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--to", required=True, help="recipient address")
        parser.add_argument("--from", dest="sender", default=None, help="envelope sender (default postmaster@HOST)")
        parser.add_argument("--subject", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            reply = sendtest.send_test_message(options["to"], sender=options["sender"], subject=options["subject"])
        except RuntimeError as exc:
            raise CommandError(f"not sent: {exc}") from None
        self.stdout.write(f"250 {reply}")
