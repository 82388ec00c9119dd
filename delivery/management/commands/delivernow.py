"""`manage.py delivernow`: send queued mail now instead of at its retry time, as the ESA's `delivernow`.

    delivernow example.com        the active recipients of one destination domain
    delivernow --mid 1234         one message
    delivernow --all [--yes]      everything queued (asks first unless --yes)

Writes `Kicking destination ...` to the mail log and an audit entry (`cli:<unix user>`); the workers deliver.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery.management.commands import _cli
from delivery.monitor import selectors
from delivery.spool import actions
from routes import audit


class Command(BaseCommand):
    help = "Reschedule queued mail for immediate delivery: one DOMAIN, one message (--mid) or --all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("domain", nargs="?", type=_cli.domain_arg, help="destination (recipient) domain")
        parser.add_argument("--mid", type=_cli.positive_int, help="one message")
        parser.add_argument("--all", action="store_true", help="every queued message")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation (with --all)")

    def handle(self, *args: Any, **options: Any) -> None:
        domain: str | None = options["domain"]
        mid: int | None = options["mid"]
        everything: bool = options["all"]
        if sum((domain is not None, mid is not None, everything)) != 1:
            raise CommandError("Give exactly one of: a DOMAIN, --mid MID, --all")
        if mid is not None:
            if not selectors.message_exists(mid):
                raise CommandError(f"MID {mid}: no such message")
            if not selectors.active_recipient_count(mid=mid):
                self.stdout.write(f"MID {mid} has no queued recipient: nothing to deliver.")
                return
            kicked = actions.deliver_now(actor=audit.cli_actor(), mid=mid)
            self.stdout.write(f"MID {mid} rescheduled for immediate delivery." if kicked else "Nothing to deliver.")
            return
        active = selectors.active_recipient_count(domain=domain)
        if not active:
            self.stdout.write(f"Nothing queued for {domain}." if domain else "The queue is empty.")
            return
        question = f"Are you sure you want to deliver all queued mail now ({_cli.plural(active, 'recipient')})?"
        if everything and not options["yes"] and not _cli.confirm(question):
            self.stdout.write("Nothing was changed.")
            return
        kicked = actions.deliver_now(actor=audit.cli_actor(), domain=domain)
        where = f" for {domain}" if domain else ""
        self.stdout.write(f"Rescheduled {_cli.plural(kicked, 'message')}{where} for immediate delivery.")
