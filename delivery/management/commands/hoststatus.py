"""`manage.py hoststatus DOMAIN`: a destination domain's mail status, laid out like the ESA's `hoststatus`.

Counters and gauges come from the queue tables; then the route the domain's mail takes now (`delivery.resolve`,
as delivery sees it): its hosts in the order the next connection tries them, the MX exchanges of a route host
name in its place, then the hosts that connection leaves out (down while another is up), each with its state
(up, or down until when), counters and last error. For USEDNS or an unrouted domain the MX hosts are looked up
only with `--dns` (a status command must not hang on DNS); without it, the hosts that were tried for the domain
are shown. An unknown domain prints "No record of host" and exits with status 1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from delivery import maillog, resolve
from delivery.management.commands import _cli
from delivery.models import DeliverySuspension, HostStatus
from delivery.monitor import selectors

WIDTH = 48  # values end in this column, right-aligned, as the ESA prints them


def when(at: datetime | None, default: str = "(never)") -> str:
    return maillog.lines.ctime(at) if at else default


def row(indent: int, label: str, value: object) -> str:
    text = f"{' ' * indent}{label}"
    return f"{text} {str(value).rjust(max(0, WIDTH - len(text) - 1))}"  # a space even when the value is long


def suspended(suspension: DeliverySuspension | None) -> str:
    if suspension is None:
        return "active"
    scope = " (ALL domains)" if suspension.domain == "ALL" else ""
    return f"suspended{scope} since {maillog.lines.ctime(suspension.suspended_at)} by {suspension.suspended_by}"


def host_state(status: HostStatus | None, now: datetime) -> str:
    if status is None:
        return "never tried"
    if status.down_until and status.down_until > now:
        return f"down until {maillog.lines.ctime(status.down_until)}"
    return "up"


def destination_lines(dest: resolve.DestinationStatus) -> list[str]:
    """The destination control that applies (Mail Policies > Destination Controls) and its counts now; with
    the scope per destination IP, the counts of each connected address under their total."""
    limits = dest.limits
    per = " per destination IP" if dest.per_ip else ""
    lines = [
        f"Destination control: {dest.matched}",
        row(2, "Concurrent Connections (max)", f"{limits.max_connections}{per}"),
        row(2, "Current Connections (all workers)", dest.connections),
        *(row(4, ip, n) for ip, n in dest.connections_by_ip),
        row(2, "Messages Per Connection (max)", limits.max_messages_per_connection),
        row(2, "Recipient Limit", dest.recipient_limit),
    ]
    if dest.recipients is not None:
        lines.append(row(2, "Recipients In Current Window", dest.recipients))
        lines += [row(4, ip, n) for ip, n in dest.recipients_by_ip]
    lines += [
        row(2, "TLS", dest.tls),
        row(2, "IP Address Preference", dest.ip_preference),
        row(2, "Bounce Profile", dest.bounce_profile),
    ]
    return lines


class Command(BaseCommand):
    help = "Show a destination domain's mail status: counters, gauges, its route's hosts and their last errors."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("domain", type=_cli.domain_arg, help="destination (recipient) domain, e.g. example.com")
        parser.add_argument(
            "--dns", action="store_true", help="look the MX hosts up (USEDNS routes and unrouted domains)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        domain: str = options["domain"]
        now = timezone.now()
        status = selectors.domain_status(domain, now)
        if status is None:
            raise CommandError(f"No record of host: {domain}")
        route = resolve.preview(domain, domain_mx=options["dns"], now=now)
        up = status["up"]
        out = [
            f"Host mail status for: {domain}",
            f"Status as of:         {maillog.lines.ctime(now)}",
            f"Host up/down:         {'unknown (no connection yet)' if up is None else 'up' if up else 'down'}",
            f"Deliveries:           {suspended(status['suspension'])}",
            "",
            "Counters:",
            "  Queue",
            row(4, "Soft Bounced Events", status["soft_bounced"]),
            "  Completion",
            row(4, "Completed Recipients", status["completed"]),
            row(6, "Hard Bounced Recipients", status["hard_bounced"]),
            row(8, "DNS Hard Bounces", status["hard_dns"]),
            row(8, "5XX Hard Bounces", status["hard_5xx"]),
            row(8, "Filter Hard Bounces", 0),
            row(8, "Expired Hard Bounces", status["hard_expired"]),
            row(8, "Other Hard Bounces", status["hard_other"]),
            row(6, "Delivered Recipients", status["delivered"]),
            row(6, "Deleted Recipients", status["deleted"]),
            row(6, "Dropped Recipients (/dev/null)", status["dropped"]),
            "",
            "Gauges:",
            "  Queue",
            row(4, "Active Recipients", status["active"]),
            row(6, "Unattempted Recipients", status["unattempted"]),
            row(6, "Attempted Recipients", status["attempted"]),
            "  Connections",
            row(4, "Current Outbound Connections", status["connections_out"]),
            "",
            row(0, "Oldest Message", when(status["oldest"], "No Messages")),
            row(0, "Last Activity", when(status["last_activity"])),
            "",
            "Last 5XX error:",
            "----------",
        ]
        last = status["last_5xx"]
        out.append(f"{maillog.lines.ctime(last.at)} {last.host}: {last.code} {last.response}" if last else "(never)")
        out += ["", "SMTP routes for this host:"]
        out += self.route_lines(route, status["hosts"], now)
        out += ["", *destination_lines(route.destination())]
        self.stdout.write("\n".join(out))

    def route_lines(self, preview: resolve.Preview, tried: list[HostStatus], now: datetime) -> list[str]:
        where = preview.resolution
        shown: list[tuple[str, int | None, str, HostStatus | None]] = []  # (order, priority, host, status)
        if where.kind == resolve.Kind.DEVNULL:
            return [f"  {where.route_domain}: /dev/null (accepted and dropped)"]
        if where.kind == resolve.Kind.MX or where.kind == resolve.Kind.USEDNS:
            how = f"{where.route_domain}: USEDNS" if where.kind == resolve.Kind.USEDNS else "No route"
            lines = [f"  {how} (delivered by MX records)"]
            if where.dns_error:
                return [*lines, f"  MX lookup failed: {where.dns_error}"]
            if not where.looked_up:
                lines.append("  MX hosts not looked up (add --dns); hosts tried for this domain:")
                shown = [("", None, f"{h.host}:{h.port}", h) for h in tried]
            else:
                lines.append("  MX hosts (looked up now), in the order the next connection tries them:")
        else:
            lines = [f"  Route: {where.route_domain}, in the order the next connection tries its hosts:"]
        if where.looked_up or where.kind == resolve.Kind.ROUTE:
            n = 0
            for c in preview.candidates:
                n += not c.skipped
                name = f"{c.host.address}:{c.host.port}" + (f" (MX of {c.via})" if c.via else "")
                shown.append(("skip" if c.skipped else str(n), c.host.priority, name, c.status))
        if not shown:
            return [*lines, "  (none)"]
        lines.append(
            "  Delivered / Not delivered: recipients, by host (not delivered: a 4xx, a 5xx or the connection failing)"
        )
        lines.append(f"  {'#':>4} {'Pri':>5}  {'Host':<36} {'Delivered':>9} {'Not del.':>8}  State")
        for order, priority, name, hs in shown:
            pri = "" if priority is None else str(priority)
            delivered = hs.delivered if hs else 0
            failed = hs.failed if hs else 0
            lines.append(f"  {order:>4} {pri:>5}  {name:<36} {delivered:>9} {failed:>8}  {host_state(hs, now)}")
            if hs and hs.last_error:
                lines.append(f"{'':14}last error {when(hs.last_error_at)}: {hs.last_error}")
        return lines
