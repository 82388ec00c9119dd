"""`manage.py smtproutes`: the ESA's `smtproutes` as sub-commands, with the same validation and audit as the web UI.

    smtproutes print
    smtproutes new DOMAIN HOSTS [--sender PATTERN] [--fallback-relay HOST[:PORT]] [--source-address ADDR]
                                [--ehlo NAME]
                                           e.g. new example.com "mx1.example.com/pri=10, [10.0.0.9]:2525/pri=20"
    smtproutes edit DOMAIN HOSTS [--sender PATTERN] [--rename NEW] [--set-sender NEW]
                                 [--fallback-relay HOST[:PORT]] [--source-address ADDR] [--ehlo NAME]
                                 ("" removes the fallback, the sender, the source address or the EHLO name)
    smtproutes delete DOMAIN [--sender PATTERN]
    smtproutes import FILE [--replace]     (default: merge; --replace makes the table exactly the file)
    smtproutes export FILE                 (- for standard output)
    smtproutes clear [--yes]

`--sender` names a route by sender: with `new` it makes a route for mail from that envelope sender only (an
address, a domain, a .partial domain or <>); with `edit` and `delete` it picks that domain's route for the
sender (without it, the route for every sender). `print` shows the sender routes as `sender=PATTERN`, and a
route's own source address and EHLO name as comment lines after the table (`# example.com: source address ...`).

Changes are recorded in the audit log as "cli:<unix user>". Errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routes import audit, domains, importexport, matching, services
from routes.management.commands import _cli
from routes.models import Route

SENDER_HELP = "envelope sender pattern: alerts@app.example, app.example, .app.example or <> (the null sender)"
FALLBACK_HELP = "tried when every host of the route failed a recipient, before it waits for its retry"
SOURCE_HELP = (
    "an address of this machine the route's connections come from (default: ESAROUTES_DELIVERY_SOURCE_ADDRESS)"
)
EHLO_HELP = "the name the route's connections say in EHLO (default: ESAROUTES_DELIVERY_EHLO)"
UNCHANGED = ' (default: unchanged; "" removes it)'


def _fallback(route: Route) -> str:
    return f" (fallback relay {route.fallback_relay})" if route.fallback_relay else ""


def _sources(route: Route) -> str:
    parts = [f" source address {route.source_address}" if route.source_address else ""]
    parts.append(f" EHLO {route.ehlo_name}" if route.ehlo_name else "")
    return "".join(parts)


class Command(BaseCommand):
    help = "Add, edit, delete, print, import, export and clear SMTP routes (like the ESA's smtproutes)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")
        sub.add_parser("print", help="print the route table in the import/export format")
        new = sub.add_parser("new", help="add a route")
        new.add_argument("domain", help="example.com, .example.com or ALL")
        new.add_argument("hosts", help='"host[:port][/pri=N][/weight=N], ...", or USEDNS, or /dev/null')
        new.add_argument(
            "--sender", metavar="PATTERN", default="", help="route mail from this sender only: " + SENDER_HELP
        )
        new.add_argument("--fallback-relay", metavar="HOST[:PORT]", default="", help=FALLBACK_HELP)
        new.add_argument("--source-address", metavar="ADDR", default="", help=SOURCE_HELP)
        new.add_argument("--ehlo", metavar="NAME", default="", help=EHLO_HELP)
        edit = sub.add_parser("edit", help="replace the destination hosts of a route (and optionally rename it)")
        edit.add_argument("domain")
        edit.add_argument("hosts")
        edit.add_argument("--sender", metavar="PATTERN", default="", help="the route for this sender: " + SENDER_HELP)
        edit.add_argument("--rename", metavar="NEW", help="new receiving domain")
        edit.add_argument("--set-sender", metavar="NEW", help='new sender pattern ("" : every sender)')
        edit.add_argument("--fallback-relay", metavar="HOST[:PORT]", help=FALLBACK_HELP + UNCHANGED)
        edit.add_argument("--source-address", metavar="ADDR", help=SOURCE_HELP + UNCHANGED)
        edit.add_argument("--ehlo", metavar="NAME", help=EHLO_HELP + UNCHANGED)
        delete = sub.add_parser("delete", help="delete a route")
        delete.add_argument("domain")
        delete.add_argument("--sender", metavar="PATTERN", default="", help="the route for this sender: " + SENDER_HELP)
        imp = sub.add_parser("import", help="import a routes file (all or nothing)")
        imp.add_argument("file", help="path, or - for standard input")
        imp.add_argument("--replace", action="store_true", help="remove the routes that are not in the file")
        exp = sub.add_parser("export", help="write the route table to a file")
        exp.add_argument("file", help="path, or - for standard output")
        clear = sub.add_parser("clear", help="delete every route")
        clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args: Any, **options: Any) -> None:
        operation = options["operation"]
        getattr(self, f"do_{operation}")(options)

    # --- operations -------------------------------------------------------------------------------------------

    def do_print(self, options: dict[str, Any]) -> None:
        self.stdout.write(services.export_text(), ending="")
        for route in Route.objects.exclude(source_address="", ehlo_name="").order_by("domain", "sender"):
            self.stdout.write(f"# {route}:{_sources(route)}")

    def do_new(self, options: dict[str, Any]) -> None:
        domain = self._domain(options["domain"])
        destination = self._hosts(options["hosts"])
        try:
            route = services.route_create(
                data=services.RouteData(
                    domain=domain,
                    destination=destination,
                    fallback_relay=options["fallback_relay"],
                    sender=self._sender(options["sender"]),
                    source_address=options["source_address"],
                    ehlo_name=options["ehlo"],
                ),
                actor=audit.cli_actor(),
            )
        except services.RouteInvalid as exc:
            raise CommandError(_problems(exc.problems)) from None
        self.stdout.write(f"Added {route}: {importexport.canonical(destination)}{_fallback(route)}{_sources(route)}")

    def do_edit(self, options: dict[str, Any]) -> None:
        route = self._route(options["domain"], options["sender"])
        destination = self._hosts(options["hosts"])
        new_domain = self._domain(options["rename"]) if options["rename"] else route.domain
        new_sender = route.sender if options["set_sender"] is None else self._sender(options["set_sender"])
        given = {
            "fallback_relay": options["fallback_relay"],
            "source_address": options["source_address"],
            "ehlo_name": options["ehlo"],
        }
        data = dataclasses.replace(
            services.RouteData.of(route),
            domain=new_domain,
            destination=destination,
            sender=new_sender,
            **{name: value for name, value in given.items() if value is not None},  # the options given change
        )
        try:
            saved = services.route_update(route_id=route.pk, data=data, actor=audit.cli_actor())
        except services.RouteInvalid as exc:
            raise CommandError(_problems(exc.problems)) from None
        renamed = f" (renamed from {route})" if str(saved) != str(route) else ""
        self.stdout.write(
            f"Changed {saved}{renamed}: {importexport.canonical(destination)}{_fallback(saved)}{_sources(saved)}"
        )

    def do_delete(self, options: dict[str, Any]) -> None:
        route = self._route(options["domain"], options["sender"])
        services.routes_delete(route_ids=[route.pk], actor=audit.cli_actor())
        self.stdout.write(f"Deleted {route}")

    def do_import(self, options: dict[str, Any]) -> None:
        name = options["file"]
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise CommandError(f"Error reading file {name}: {exc.strerror or exc}") from None
        parsed = importexport.parse_bytes(data)
        if not parsed.ok:
            raise _cli.import_failed(name, parsed.errors)
        mode: services.ImportMode = "replace" if options["replace"] else "merge"
        summary = services.routes_import(incoming=parsed.routes(), mode=mode, actor=audit.cli_actor())
        self.stdout.write(_cli.imported(f"{len(parsed.rows)} routes ({mode})", summary))

    def do_export(self, options: dict[str, Any]) -> None:
        _cli.write_export(self, services.export_text(), options["file"], f"{Route.objects.count()} routes")

    def do_clear(self, options: dict[str, Any]) -> None:
        if not options["yes"]:
            if not sys.stdin.isatty():
                raise CommandError("Refusing to clear without confirmation: add --yes")
            count = Route.objects.count()
            answer = input(f"Are you sure you want to delete all of the configured routes ({count})? [N]> ")
            if answer.strip().lower() not in ("y", "yes"):
                self.stdout.write("Nothing was changed.")
                return
        deleted = services.routes_clear(actor=audit.cli_actor())
        self.stdout.write(f"Cleared the route table ({deleted} routes deleted)")

    # --- helpers ----------------------------------------------------------------------------------------------

    def _domain(self, text: str) -> str:
        try:
            return domains.normalize_receiving_domain(text)
        except domains.DomainError as exc:
            raise CommandError(str(exc)) from None

    def _hosts(self, text: str) -> domains.Destination:
        try:
            return domains.parse_hosts(text)
        except domains.HostListError as exc:
            raise CommandError("; ".join(exc.errors)) from None

    def _sender(self, text: str) -> str:
        try:
            return matching.normalize_sender_pattern(text)
        except matching.SenderPatternError as exc:
            raise CommandError(f"--sender: {exc}") from None

    def _route(self, text: str, sender_text: str = "") -> Route:
        domain = self._domain(text)
        sender = self._sender(sender_text)
        route = Route.objects.filter(domain=domain, sender=sender).first()
        if route is None:
            shown = f" with the sender {sender}" if sender else ""
            others = "" if sender else _sender_routes_hint(domain)
            raise CommandError(f'"{text}"{shown}: that entry does not appear to be in the routing table{others}')
        return route


def _sender_routes_hint(domain: str) -> str:
    senders = list(Route.objects.filter(domain=domain).exclude(sender="").values_list("sender", flat=True)[:5])
    return f" (it has routes by sender: name one with --sender {senders[0]})" if senders else ""


def _problems(problems: domains.RouteProblems) -> str:
    return "; ".join(problems.all())
