"""`manage.py bouncerecipients`: hard-bounce queued recipients now, as the ESA's `bouncerecipients` does.

    bouncerecipients --domain example.com        every active recipient of one destination domain
    bouncerecipients --mid 1234 [--mid 1235]     every active recipient of these messages
    bouncerecipients --sender user@example.org   every active recipient of this envelope sender's messages
    bouncerecipients --all [--yes]               the whole queue (asks first unless --yes)

`--domain`, `--mid` and `--sender` combine (all must match). A delivery status notification goes to each sender
(never to `<>`), each recipient gets a `Bounced:` line in the mail log, and the audit log records the action as
`cli:<unix user>`. `--dry-run` only counts. When the chosen recipients' domain has its deliveries suspended
(`suspenddel`), a warning says so first: they are bounced all the same.
"""

from __future__ import annotations

from django.db.models import QuerySet

from delivery import engine
from delivery.management.commands import _cli
from delivery.models import Recipient
from delivery.monitor import selectors


class Command(_cli.SelectionCommand):
    help = (
        "Hard-bounce queued recipients now (a DSN goes to each sender), chosen by --mid, --domain, --sender, "
        "or --all; like the ESA's bouncerecipients."
    )

    def warnings(self, recipients: QuerySet[Recipient]) -> list[str]:
        suspended = selectors.suspended_domains()
        if not suspended:
            return []
        chosen = sorted(set(recipients.order_by().values_list("domain", flat=True).distinct()))
        found = [d for d in chosen if engine.is_suspended(d, suspended)]
        if not found:
            return []
        shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        return [
            f"deliveries to {shown} are suspended (suspenddel); their recipients are bounced all the same, "
            "a DSN to each sender. To keep them, resumedel instead, or holdrecipients."
        ]
