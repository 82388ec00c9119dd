"""`manage.py deleterecipients`: remove queued recipients silently (no DSN), as the ESA's `deleterecipients`.

    deleterecipients --domain example.com | --mid 1234 [--mid ...] | --sender user@example.org | --all [--yes]

Each message concerned gets a `Deleted: MID n to [rids]` line in the mail log; the audit log records the action as
`cli:<unix user>`. `--dry-run` only counts.
"""

from __future__ import annotations

from django.db.models import QuerySet

from delivery.management.commands import _cli
from delivery.models import Recipient
from delivery.spool import actions
from routes import audit


class Command(_cli.SelectionCommand):
    help = (
        "Delete queued recipients without a bounce, chosen by --mid, --domain, --sender, or --all; "
        "like the ESA's deleterecipients."
    )
    verb = "delete"
    done = "deleted"
    nothing = "No recipients deleted."

    def act(self, recipients: QuerySet[Recipient]) -> int:
        return actions.delete_recipients(recipients, actor=audit.cli_actor())
