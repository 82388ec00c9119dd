"""`manage.py holdrecipients`: put queued recipients on hold, as Postfix's hold queue (`postsuper -h`).

    holdrecipients --domain example.com | --mid 1234 [--mid ...] | --sender user@example.org | --all [--yes]

A held recipient stays queued and is never tried, and never expires while held, until `releaserecipients`.
Each message concerned gets a `Held: MID n to [rids] by ...` line in the mail log; the audit log records the
action as `cli:<unix user>`. `--dry-run` only counts.
"""

from __future__ import annotations

from delivery.management.commands import _cli


class Command(_cli.HeldCommand):
    help = (
        "Put queued recipients on hold (kept queued, never tried nor expired, until releaserecipients), chosen "
        "by --mid, --domain, --sender, or --all; like Postfix's postsuper -h."
    )
    hold = True
