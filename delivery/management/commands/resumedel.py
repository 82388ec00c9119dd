"""`manage.py resumedel`: resume the deliveries suspended by `suspenddel`, as the ESA's `resumedel` does.

    resumedel example.com [example.org ...]     these destination domains
    resumedel ALL                               every suspension (ALL and each domain)
    resumedel                                   only list the suspended domains

The domains' backlog is sent at once, not at its retry times; a recipient that was tried before and whose queue
lifetime ran out meanwhile bounces (5.4.7) instead. Writes `Deliveries resumed [DOMAIN] by ...` to the mail log
and an audit entry (`cli:<unix user>`).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery import engine
from delivery.management.commands import suspenddel
from delivery.spool import actions, lease
from routes import audit


class Command(BaseCommand):
    help = "Resume delivery to DOMAIN ... (or ALL) and send its queued mail now. No DOMAIN: list the suspended."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "domains", nargs="*", type=suspenddel.domain_or_all, metavar="DOMAIN", help="destination domains, or ALL"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        domains: list[str] = options["domains"]
        before = lease.suspended_domains()
        if domains:
            if engine.SUSPEND_ALL in domains and len(domains) > 1:
                raise CommandError("ALL cannot be combined with domains")
            resumed = actions.resume_delivery(domains, actor=audit.cli_actor())
            for domain in domains:
                if domain in resumed:
                    self.stdout.write(f"Mail delivery resumed: {domain}")
                elif engine.SUSPEND_ALL in before:
                    self.stdout.write(f"Not resumed: {domain}: ALL domains are suspended (resumedel ALL)")
                else:
                    self.stdout.write(f"Not resumed: {domain}: its delivery was not suspended")
        self.stdout.write(suspenddel.describe(lease.suspended_domains()))
