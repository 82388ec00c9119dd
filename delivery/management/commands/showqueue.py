"""`manage.py showqueue`: the queued and delayed recipients by destination domain, oldest message first, with
their next attempt and last reply (the ESA's `showrecipients`).

    showqueue [--domain example.com] [--sender user@example.org] [--limit 100]
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from delivery import engine, maillog
from delivery.management.commands import _cli
from delivery.monitor import selectors


class Command(BaseCommand):
    help = "List queued and delayed recipients by destination domain, oldest first, with next attempt and last reply."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", type=_cli.domain_arg, help="only this destination domain")
        parser.add_argument("--sender", help="only messages from this envelope sender (exact; <> for bounces)")
        parser.add_argument("--limit", type=int, default=100, help="recipients to list at most (default 100)")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        limit = max(1, options["limit"])
        sender = options["sender"]
        if sender is not None:
            sender = "" if sender.strip() == "<>" else sender.strip().strip("<>")
        groups, total = selectors.queue_listing(domain=options["domain"] or "", sender=sender, limit=limit)
        out = [f"Status as of: {maillog.lines.ctime(now)}"]
        if not total or not groups:
            out.append(f"Nothing queued for {options['domain']}." if options["domain"] else "The queue is empty.")
            self.stdout.write("\n".join(out))
            return
        out.append(f"Active recipients: {total}")
        suspended = selectors.suspended_domains()
        for domain, recipients in groups:
            out += ["", f"Destination: {domain}", ""]
            out.append(f"{'MID/':<10}{'Bytes/':<10}{'Sender/':<40}Subject")
            out.append(f"{'[RID]':<10}{'[Atmps]':<10}{'Recipient':<40}Next attempt / Last reply")
            for r in recipients:
                m = r.message
                out.append(f"{m.pk:<10}{m.size:<10}{(m.sender or '<>'):<40}{m.subject[:60]}")
                if r.held:
                    due = "held (releaserecipients)"
                elif engine.is_suspended(r.domain, suspended):
                    due = "suspended (resumedel)"
                elif r.next_attempt_at is None or r.next_attempt_at <= now:
                    due = "now"
                else:
                    due = maillog.lines.ctime(r.next_attempt_at)
                if r.redirect_host:
                    due += f", redirected to {r.redirect_host}:{r.redirect_port}"
                reply = f"{r.last_code or ''} {r.last_response}".strip()
                if reply and r.last_host:
                    reply += f" ({r.last_host})"
                state = "delayed" if r.state == r.State.DELAYED else "queued"
                out.append(f"{f'[{r.rid}]':<10}{f'[{r.attempts}]':<10}{r.address:<40}{state}, next {due}")
                if reply:
                    out.append(f"{'':60}last reply: {reply}")
        shown = sum(len(rs) for _, rs in groups)
        if shown < total:
            out += ["", f"{_cli.plural(total - shown, 'more recipient')} not shown (use --limit)."]
        self.stdout.write("\n".join(out))
