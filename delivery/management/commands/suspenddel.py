"""`manage.py suspenddel`: suspend the deliveries to destination domains, as the ESA's `suspenddel` does.

    suspenddel example.com [example.org ...]    these destination domains
    suspenddel ALL                              every domain
    suspenddel                                  only list the suspended domains

The mail keeps coming in and is queued; nothing is sent to a suspended domain (not attempted, no attempt
counted, never expired while suspended) until `resumedel`. The suspension is in the database: it survives
restarts. Connections already delivering finish their messages. Writes `Deliveries suspended [DOMAIN] by ...` to
the mail log, then `Deliveries are currently suspended [DOMAIN]` whenever mail for it comes due, and an audit
entry (`cli:<unix user>`).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery import engine
from delivery.management.commands import _cli
from delivery.spool import actions, lease
from routes import audit


def domain_or_all(text: str) -> str:
    return engine.SUSPEND_ALL if text.strip().upper() == engine.SUSPEND_ALL else _cli.domain_arg(text)


def describe(suspended: frozenset[str]) -> str:
    """What is suspended now, in one line."""
    if not suspended:
        return "Delivery is not suspended for any domain."
    if engine.SUSPEND_ALL in suspended:
        return "Deliveries are currently suspended for ALL domains."
    return f"Deliveries are currently suspended for: {', '.join(sorted(suspended))}."


class Command(BaseCommand):
    help = "Suspend delivery to DOMAIN ... (or ALL); the mail stays queued until resumedel. No DOMAIN: list them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "domains", nargs="*", type=domain_or_all, metavar="DOMAIN", help="destination domains, or ALL"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        domains: list[str] = options["domains"]
        if domains:
            if engine.SUSPEND_ALL in domains and len(domains) > 1:
                raise CommandError("ALL cannot be combined with domains")
            new = actions.suspend_delivery(domains, actor=audit.cli_actor())
            for domain in domains:
                said = "suspended" if domain in new else "was already suspended"
                self.stdout.write(f"Mail delivery {said}: {domain}")
        self.stdout.write(describe(lease.suspended_domains()))
