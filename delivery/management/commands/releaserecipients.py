"""`manage.py releaserecipients`: release held recipients, as Postfix's `postsuper -H`.

    releaserecipients --domain example.com | --mid 1234 [--mid ...] | --sender user@example.org | --all [--yes]

The held recipients chosen are due at once (their messages are rung); a recipient already tried whose queue
lifetime ran out while held bounces (5.4.7) at that pass. Each message concerned gets a
`Released: MID n to [rids] by ...` line in the mail log; the audit log records the action as `cli:<unix user>`.
`--dry-run` only counts.
"""

from __future__ import annotations

from django.db.models import QuerySet

from delivery.management.commands import _cli
from delivery.models import Recipient
from delivery.spool import actions
from routes import audit


class Command(_cli.SelectionCommand):
    help = "Release held recipients (due now), chosen by --mid, --domain, --sender, or --all; like postsuper -H."
    verb = "release"
    done = "released"
    nothing = "No recipients released."

    def narrow(self, recipients: QuerySet[Recipient]) -> QuerySet[Recipient]:
        return recipients.filter(held=True)

    def act(self, recipients: QuerySet[Recipient]) -> int:
        return actions.release_recipients(recipients, actor=audit.cli_actor())
