"""`manage.py bouncerecipients`: hard-bounce queued recipients now, as the ESA's `bouncerecipients` does.

    bouncerecipients --domain example.com        every active recipient of one destination domain
    bouncerecipients --mid 1234 [--mid 1235]     every active recipient of these messages
    bouncerecipients --sender user@example.org   every active recipient of this envelope sender's messages
    bouncerecipients --all [--yes]               the whole queue (asks first unless --yes)

`--domain`, `--mid` and `--sender` combine (all must match). A delivery status notification goes to each sender
(never to `<>`), each recipient gets a `Bounced:` line in the mail log, and the audit log records the action as
`cli:<unix user>`. `--dry-run` only counts. This module also holds what the other queue commands share.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet

from delivery.models import Recipient
from delivery.monitor import selectors
from delivery.spool import actions
from routes import matching


def cli_actor() -> str:
    """The audit log's actor for a command: `cli:<unix user>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


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

    def act(self, recipients: QuerySet[Recipient]) -> int:
        return actions.bounce_recipients(recipients, actor=cli_actor())

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
        chosen = actions.select_recipients(mids=mids, domain=domain, sender=sender, everything=everything)
        n, m = selectors.selection_size(chosen)
        if n == 0:
            self.stdout.write(self.nothing)
            return
        what = f"{plural(n, 'recipient')} of {plural(m, 'message')}"
        if options["dry_run"]:
            self.stdout.write(f"Would {self.verb} {what}.")
            return
        question = f"Are you sure you want to {self.verb} all {what} in the queue?"
        if everything and not options["yes"] and not confirm(question):
            self.stdout.write("Nothing was changed.")
            return
        count = self.act(chosen)
        self.stdout.write(f"{plural(count, 'recipient')} {self.done}." if count else self.nothing)


class Command(SelectionCommand):
    help = (
        "Hard-bounce queued recipients now (a DSN goes to each sender), chosen by --mid, --domain, --sender, "
        "or --all; like the ESA's bouncerecipients."
    )
