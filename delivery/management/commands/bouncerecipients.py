"""`manage.py bouncerecipients`: hard-bounce queued recipients now, as the ESA's `bouncerecipients` does.

    bouncerecipients --domain example.com        every active recipient of one destination domain
    bouncerecipients --mid 1234 [--mid 1235]     every active recipient of these messages
    bouncerecipients --sender user@example.org   every active recipient of this envelope sender's messages
    bouncerecipients --all [--yes]               the whole queue (asks first unless --yes)

`--domain`, `--mid` and `--sender` combine (all must match). A delivery status notification goes to each sender
(never to `<>`), each recipient gets a `Bounced:` line in the mail log, and the audit log records the action as
`cli:<unix user>`. `--dry-run` only counts.
"""

from __future__ import annotations

from delivery.management.commands import _cli


class Command(_cli.SelectionCommand):
    help = (
        "Hard-bounce queued recipients now (a DSN goes to each sender), chosen by --mid, --domain, --sender, "
        "or --all; like the ESA's bouncerecipients."
    )
