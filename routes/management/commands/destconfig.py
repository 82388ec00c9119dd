"""`manage.py destconfig`: the ESA's Destination Controls on the command line, with the page's validation and audit.

    destconfig print                        (the table in the import/export format)
    destconfig new DEST [options]           DEST: example.com, .example.com, an IP address
    destconfig edit DEST [options]          DEST "default" edits the Default entry; only the options given change
    destconfig delete DEST                  (never the Default)
    destconfig import FILE                  (- for standard input; the table becomes the file, Default kept)
    destconfig export FILE                  (- for standard output)

Options: --max-connections N, --max-messages-per-connection N, --recipient-limit N --recipient-minutes M
("none" removes the limit), --limit-scope domain|ip, --ip-preference ipv4-preferred|ipv4-required|ipv6-preferred|
ipv6-required, --tls none|preferred|required|preferred-verify|required-verify, --bounce-profile NAME ("none": the
route's or the default profile). Changes are audited as "cli:<unix user>"; errors go to stderr, one line each,
with a non-zero exit status.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery.models import BounceProfile
from routes import audit, destinations, services
from routes.management.commands import _cli
from routes.models import DefaultDestinationProtected, DestinationControl

_NUMBERS = {
    "max_connections": "--max-connections",
    "max_messages_per_connection": "--max-messages-per-connection",
    "recipient_limit": "--recipient-limit",
    "recipient_minutes": "--recipient-minutes",
}
_CHOICES = {
    "limit_scope": ("--limit-scope", destinations.LIMIT_SCOPES),
    "ip_preference": ("--ip-preference", destinations.IP_PREFERENCES),
    "tls": ("--tls", destinations.TLS_MODES),
}
_OPTION_OF = {**_NUMBERS, **{name: option for name, (option, _) in _CHOICES.items()}, "destination": "DEST"}


class Command(BaseCommand):
    help = "Print, add, edit, delete, import and export destination controls (like the ESA's destconfig)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")
        sub.add_parser("print", help="print the destination controls in the import/export format")
        for name, text in (("new", "add an entry"), ("edit", 'change an entry ("default": the Default entry)')):
            op = sub.add_parser(name, help=text)
            op.add_argument("dest", metavar="DEST", help="example.com, .example.com, an IP address or default")
            self._options(op)
        delete = sub.add_parser("delete", help="delete an entry (never the Default)")
        delete.add_argument("dest", metavar="DEST")
        imp = sub.add_parser("import", help="make the table exactly the file (all or nothing; Default kept)")
        imp.add_argument("file", help="path, or - for standard input")
        exp = sub.add_parser("export", help="write the table to a file")
        exp.add_argument("file", help="path, or - for standard output")

    def _options(self, op: CommandParser) -> None:
        op.add_argument("--max-connections", metavar="N", help="concurrent connections, 1-1000 (default 500)")
        op.add_argument("--max-messages-per-connection", metavar="N", help="1-1000 (default 50)")
        op.add_argument("--recipient-limit", metavar="N", help='recipients per --recipient-minutes; "none": no limit')
        op.add_argument("--recipient-minutes", metavar="M", help="1-60")
        op.add_argument("--limit-scope", metavar="domain|ip", help="one limit for the domain, or one per IP")
        op.add_argument("--ip-preference", metavar="|".join(destinations.IP_PREFERENCES))
        op.add_argument("--tls", metavar="|".join(destinations.TLS_MODES))
        op.add_argument("--bounce-profile", metavar="NAME", help='a bounce profile by name; "none" removes it')

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"do_{options['operation']}")(options)

    # --- operations -------------------------------------------------------------------------------------------

    def do_print(self, options: dict[str, Any]) -> None:
        self.stdout.write(services.destinations_export_text(), ending="")

    def do_new(self, options: dict[str, Any]) -> None:
        stored = self._destination(options["dest"])
        if stored == DestinationControl.DEFAULT:
            raise CommandError('The Default entry always exists: change it with "destconfig edit default".')
        data = self._data(services.DestinationData(destination=options["dest"]), options)
        control = self._write(lambda: services.create_destination(data=data, actor=audit.cli_actor()))
        self.stdout.write(f"Added {_describe(control)}")

    def do_edit(self, options: dict[str, Any]) -> None:
        control = self._entry(options["dest"])
        data = self._data(services.DestinationData.of(control), options)
        saved = self._write(
            lambda: services.update_destination(destination_id=control.pk, data=data, actor=audit.cli_actor())
        )
        self.stdout.write(f"Changed {_describe(saved)}")

    def do_delete(self, options: dict[str, Any]) -> None:
        control = self._entry(options["dest"])
        try:
            deleted = services.delete_destination(destination_id=control.pk, actor=audit.cli_actor())
        except DefaultDestinationProtected as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Deleted {destinations.display_destination(deleted)}")

    def do_import(self, options: dict[str, Any]) -> None:
        name = options["file"]
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
            text = raw.decode("utf-8-sig")
        except OSError as exc:
            raise CommandError(f"Error reading file {name}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CommandError(f"Error reading file {name}: it is not UTF-8 text") from None
        entries, errors = destinations.parse_file(text)
        profiles = dict(BounceProfile.objects.values_list("name", "pk"))
        rows: list[services.DestinationData] = []
        for entry in entries:
            profile_id = None
            if entry.bounce_profile:
                profile_id = profiles.get(entry.bounce_profile)
                if profile_id is None:
                    errors.append(f'line {entry.line}: there is no bounce profile "{entry.bounce_profile}"')
            limits = dataclasses.asdict(entry.limits)
            limits["bounce_profile_id"] = profile_id
            rows.append(services.DestinationData(**limits))
        if not errors:
            try:
                summary = services.destinations_import(entries=rows, actor=audit.cli_actor())
            except ValueError as exc:
                errors = str(exc).split("; ")
        if errors:
            raise _cli.import_failed(name, errors)
        self.stdout.write(_cli.imported(f"{len(rows)} destination controls", summary))

    def do_export(self, options: dict[str, Any]) -> None:
        what = f"{DestinationControl.objects.count()} destination controls"
        _cli.write_export(self, services.destinations_export_text(), options["file"], what)

    # --- helpers ----------------------------------------------------------------------------------------------

    def _destination(self, text: str) -> str:
        try:
            return destinations.normalize_destination(text)
        except destinations.DestinationError as exc:
            raise CommandError(str(exc)) from None

    def _entry(self, text: str) -> DestinationControl:
        stored = self._destination(text)
        if stored == DestinationControl.DEFAULT:
            return services.default_destination()
        control = DestinationControl.objects.filter(destination=stored).first()
        if control is None:
            raise CommandError(f'"{text}": that destination is not in the destination controls table')
        return control

    def _data(self, data: services.DestinationData, options: dict[str, Any]) -> services.DestinationData:
        changes: dict[str, Any] = {}
        for name, option in _NUMBERS.items():
            value = options[name]
            if value is None:
                continue
            text = value.strip()
            if name in ("recipient_limit", "recipient_minutes") and text.lower() == "none":
                changes["recipient_limit"] = changes["recipient_minutes"] = None
            elif text.isascii() and text.isdigit():
                changes[name] = int(text)
            else:
                raise CommandError(f'{option} "{value}" is not a whole number')
        for name, (option, choices) in _CHOICES.items():
            value = options[name]
            if value is None:
                continue
            if value.strip().lower() not in choices:
                raise CommandError(f'{option} "{value}": use {" or ".join(choices)}')
            changes[name] = value.strip().lower()
        profile = options["bounce_profile"]
        if profile is not None:
            if profile.strip().lower() in ("", "none"):
                changes["bounce_profile_id"] = None
            else:
                found = BounceProfile.objects.filter(name=profile.strip()).values_list("pk", flat=True).first()
                if found is None:
                    names = ", ".join(BounceProfile.objects.values_list("name", flat=True))
                    raise CommandError(f'--bounce-profile "{profile}": no such bounce profile (there are: {names})')
                changes["bounce_profile_id"] = found
        return dataclasses.replace(data, **changes)

    def _write(self, write: Any) -> DestinationControl:
        try:
            control: DestinationControl = write()
        except services.DestinationInvalid as exc:
            raise CommandError(
                " ".join(
                    f"{_OPTION_OF.get(name, name)}: {message}"
                    for name, messages in exc.problems.items()
                    for message in messages
                )
            ) from None
        return control


def _describe(control: DestinationControl) -> str:
    limit = (
        f"{control.recipient_limit} recipients per {control.recipient_minutes} min ({control.limit_scope})"
        if control.recipient_limit
        else "no recipient limit"
    )
    profile = control.bounce_profile.name if control.bounce_profile_id and control.bounce_profile else "none"
    return (
        f"{destinations.display_destination(control.destination)}: {control.max_connections} connections, "
        f"{control.max_messages_per_connection} messages per connection, {limit}, {control.ip_preference}, "
        f"TLS {control.tls}, bounce profile {profile}"
    )
