"""`manage.py redirectrecipients`: send queued recipients to one host instead of their route's, as the ESA's
`redirectrecipients` does when an operator drains a queue to another relay.

    redirectrecipients HOST[:PORT] --all [--yes]               every queued recipient
    redirectrecipients HOST[:PORT] --domain example.com        one destination domain (or --mid, --sender)
    redirectrecipients --cancel --domain example.com           back to their route

HOST is a name (its A/AAAA records, never its MX), an IPv4 or IPv6 address (`[2001:db8::1]:2525`). The
recipients chosen are due now and their next connections go to HOST:PORT (opportunistic TLS, no AUTH); a 4xx
keeps them queued for the same relay, a 5xx bounces them. Mail arriving later follows its route. Each message
concerned gets a `Redirected: MID n to [rids] to HOST:PORT by ...` line in the mail log (`Redirect cancelled:`
for --cancel); the audit log records the action as `cli:<unix user>`. `--dry-run` only counts.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db.models import QuerySet

from delivery import resolve
from delivery.management.commands import _cli
from delivery.models import Recipient
from delivery.spool import actions
from routes import audit


class Command(_cli.SelectionCommand):
    help = (
        "Send queued recipients to HOST[:PORT] instead of their route's hosts, chosen by --mid, --domain, --sender "
        "or --all; --cancel gives them back to their route. Like the ESA's redirectrecipients."
    )
    verb = "redirect"
    done = "redirected"
    nothing = "No recipients redirected."
    relay: tuple[str, int] | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("relay", nargs="?", metavar="HOST[:PORT]", help="the host to send them to")
        parser.add_argument("--cancel", action="store_true", help="cancel their redirect: their route again")
        super().add_arguments(parser)

    def narrow(self, recipients: QuerySet[Recipient]) -> QuerySet[Recipient]:
        return recipients.exclude(redirect_host="") if self.relay is None else recipients

    def act(self, recipients: QuerySet[Recipient]) -> int:
        return actions.redirect_recipients(recipients, self.relay, actor=audit.cli_actor())

    def handle(self, *args: Any, **options: Any) -> None:
        text: str | None = options["relay"]
        if options["cancel"] == (text is not None):
            raise CommandError("Give the host to redirect to (HOST[:PORT]) or --cancel, not both")
        if text is None:
            self.relay, self.verb, self.done = None, "cancel the redirect of", "given back to their route"
            self.nothing = "No redirected recipients."
        else:
            try:
                self.relay = resolve.parse_relay(text)
            except ValueError as exc:
                raise CommandError(f"{text}: {exc}") from None
            host, port = self.relay
            self.done = f"redirected to {host}:{port}"
        super().handle(*args, **options)
