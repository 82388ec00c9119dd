"""`manage.py tophosts [--sort active|connections|delivered|soft|hard]`: the busiest destination domains, as
the ESA's `tophosts` prints them (20 rows by default). A `*` marks a domain whose latest host is down, an `S` one
whose deliveries are suspended (`suspenddel`)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from delivery import maillog
from delivery.monitor import selectors


class Command(BaseCommand):
    help = "Show the top destination domains: active recipients, connections out, delivered, soft and hard bounced."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--sort",
            choices=list(selectors.DESTINATION_SORTS),
            default="active",
            help="sort by active recipients (default), connections out, delivered, soft or hard bounced",
        )
        parser.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        limit = max(1, options["limit"])
        rows = selectors.destinations(now, sort=options["sort"], limit=limit)
        out = [
            f"Status as of:                  {maillog.lines.ctime(now)}",
            f"Sorted by:                     {selectors.DESTINATION_SORTS[options['sort']]}",
            "Hosts marked with '*' were down as of the last delivery attempt.",
            "Hosts marked with 'S' have their deliveries suspended (resumedel to resume).",
            "Recip. = recipients; Soft Bounced = events (attempt rows); Conn. Out = connections open now.",
            f"{'':45}{'Active':>8}{'Conn.':>8}{'Deliv.':>9}{'Soft':>9}{'Hard':>9}",
            f"{'  #   Recipient Host':<45}{'Recip.':>8}{'Out':>8}{'Recip.':>9}{'Bounced':>9}{'Bounced':>9}",
        ]
        for rank, d in enumerate(rows, 1):
            mark = ("*" if d.host_up is False else " ") + ("S" if d.suspended else " ")
            label = f"{rank:>3}{mark} {d.domain}"
            if len(label) > 44:
                label = label[:43] + "…"
            out.append(
                f"{label:<45}{d.active:>8}{d.connections_out:>8}{d.delivered:>9}{d.soft_bounced:>9}{d.hard_bounced:>9}"
            )
        if not rows:
            out.append("  (no destination domain yet)")
        self.stdout.write("\n".join(out))
