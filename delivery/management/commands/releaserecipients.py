"""`manage.py releaserecipients`: release held recipients, as Postfix's `postsuper -H`.

    releaserecipients --domain example.com | --mid 1234 [--mid ...] | --sender user@example.org | --all [--yes]

The held recipients chosen are due at once (their messages are rung); a recipient already tried whose queue
lifetime ran out while held bounces (5.4.7) at that pass. Each message concerned gets a
`Released: MID n to [rids] by ...` line in the mail log; the audit log records the action as `cli:<unix user>`.
`--dry-run` only counts.
"""

from __future__ import annotations

from delivery.management.commands import _cli


class Command(_cli.HeldCommand):
    help = "Release held recipients (due now), chosen by --mid, --domain, --sender, or --all; like postsuper -H."
    hold = False
