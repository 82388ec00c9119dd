"""What `smtproutes` and `destconfig` share: the import's refusal and summary, and writing an export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from django.core.management.base import BaseCommand, CommandError


class Summary(Protocol):
    @property
    def added(self) -> Sequence[str]: ...
    @property
    def changed(self) -> Sequence[str]: ...
    @property
    def removed(self) -> Sequence[str]: ...
    @property
    def unchanged(self) -> int: ...


def import_failed(name: str, errors: Sequence[str]) -> CommandError:
    """The one error of an import that changed nothing, each problem on its own line."""
    lines = "\n".join(f"  {name}: {error}" for error in errors)
    return CommandError(f"Import failed, nothing was changed ({len(errors)} errors):\n{lines}")


def imported(what: str, summary: Summary) -> str:
    """`Imported 3 routes (merge): 1 added, 2 changed, 0 removed, 5 unchanged`."""
    return (
        f"Imported {what}: {len(summary.added)} added, {len(summary.changed)} changed, "
        f"{len(summary.removed)} removed, {summary.unchanged} unchanged"
    )


def write_export(command: BaseCommand, text: str, name: str, what: str) -> None:
    """The export on standard output (`-`) or into the file `name`; `what` says what was written."""
    if name == "-":
        command.stdout.write(text, ending="")
        return
    try:
        Path(name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"Error writing file {name}: {exc.strerror or exc}") from None
    command.stdout.write(f"Exported {what} to {name}")
