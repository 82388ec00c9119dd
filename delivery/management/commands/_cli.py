"""What the queue commands share: argument types (a destination domain, a MID), the terminal confirmation, a
plural, and `SelectionCommand`, the recipient selection of `bouncerecipients`, `deleterecipients`,
`holdrecipients` and `releaserecipients` (these two through
`HeldCommand`). (Django loads no command from a module whose name starts with "_".)"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet

from delivery.models import Recipient
from delivery.monitor import selectors
from delivery.spool import actions
from routes import audit, matching


def confirm(question: str) -> bool:
    """Ask on the terminal, `[N]` by default like the ESA; without a terminal, refuse (the caller says --yes)."""
    if not sys.stdin.isatty():
        raise CommandError(f"{question} Not confirmed (no terminal): add --yes")
    try:
        answer = input(f"{question} [N]> ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def domain_arg(text: str) -> str:
    """A destination domain as the queue stores it (IDNA, lower case); argparse reports a bad one."""
    domain = matching.recipient_domain(text)
    if domain is None:
        raise argparse.ArgumentTypeError(f'"{text}" is not a domain name')
    return domain


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'"{text}" is not a MID (a positive integer)') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'"{text}" is not a MID (a positive integer)')
    return value


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class SelectionCommand(BaseCommand):
    """Choose active recipients by message, domain, sender or all, confirm, and apply one queue action."""

    verb = "bounce"
    done = "bounced"
    nothing = "No messages bounced."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--mid", action="append", type=positive_int, metavar="MID", help="a message (repeat for several)"
        )
        parser.add_argument("--domain", type=domain_arg, help="a destination (recipient) domain, e.g. example.com")
        parser.add_argument("--sender", help="an envelope sender address (exact; <> for the null sender)")
        parser.add_argument("--all", action="store_true", help="every active recipient in the queue")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation (with --all)")
        parser.add_argument("--dry-run", action="store_true", help="only say how many recipients would be chosen")

    def narrow(self, recipients: QuerySet[Recipient]) -> QuerySet[Recipient]:
        """The chosen recipients this action applies to (hold: those not held yet; release: the held ones)."""
        return recipients

    def warnings(self, recipients: QuerySet[Recipient]) -> list[str]:
        """What the operator should know before the action applies to the chosen recipients."""
        return []

    def act(self, recipients: QuerySet[Recipient]) -> int:
        return actions.bounce_recipients(recipients, actor=audit.cli_actor())

    def handle(self, *args: Any, **options: Any) -> None:
        mids: list[int] | None = options["mid"]
        domain: str | None = options["domain"]
        sender: str | None = options["sender"]
        if sender is not None:
            sender = "" if sender.strip() == "<>" else sender.strip().strip("<>")
        everything: bool = options["all"]
        if everything and (mids or domain or sender is not None):
            raise CommandError("--all cannot be combined with --mid, --domain or --sender")
        if not (everything or mids or domain or sender is not None):
            raise CommandError("Choose the recipients: --mid MID, --domain DOMAIN, --sender ADDRESS or --all")
        for mid in mids or ():
            if not selectors.message_exists(mid):
                raise CommandError(f"MID {mid}: no such message")
        chosen = self.narrow(actions.select_recipients(mids=mids, domain=domain, sender=sender, everything=everything))
        n, m = selectors.selection_size(chosen)
        if n == 0:
            self.stdout.write(self.nothing)
            return
        what = f"{plural(n, 'recipient')} of {plural(m, 'message')}"
        for warning in self.warnings(chosen):
            self.stderr.write(f"Warning: {warning}")
        if options["dry_run"]:
            self.stdout.write(f"Would {self.verb} {what}.")
            return
        question = f"Are you sure you want to {self.verb} all {what} in the queue?"
        if everything and not options["yes"] and not confirm(question):
            self.stdout.write("Nothing was changed.")
            return
        count = self.act(chosen)
        self.stdout.write(f"{plural(count, 'recipient')} {self.done}." if count else self.nothing)


class HeldCommand(SelectionCommand):
    """`holdrecipients` (`hold = True`) and `releaserecipients` (`hold = False`): of the chosen recipients, those
    not in that state yet change their held flag."""

    hold = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.verb, self.done = ("hold", "held") if self.hold else ("release", "released")
        self.nothing = f"No recipients {self.done}."

    def narrow(self, recipients: QuerySet[Recipient]) -> QuerySet[Recipient]:
        return recipients.filter(held=not self.hold)

    def act(self, recipients: QuerySet[Recipient]) -> int:
        apply = actions.hold_recipients if self.hold else actions.release_recipients
        return apply(recipients, actor=audit.cli_actor())
