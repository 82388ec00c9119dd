"""`manage.py destconfig`: each option, bad input as one-line errors with a non-zero status, the Default entry,
and an export that imports back to the same table."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from delivery.models import BounceProfile
from routes.models import AuditEntry, DestinationControl

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("destconfig", *args, stdout=out)
    return out.getvalue()


def fails(*args: str) -> str:
    with pytest.raises(CommandError) as info:
        run(*args)
    message = str(info.value)
    assert "Traceback" not in message
    return message


def test_new_with_every_option():
    BounceProfile.objects.create(name="Fast")
    out = run(
        "new", "Example.COM",
        "--max-connections", "2",
        "--max-messages-per-connection", "10",
        "--recipient-limit", "30", "--recipient-minutes", "1",
        "--limit-scope", "ip",
        "--ip-preference", "ipv6-required",
        "--tls", "required-verify",
        "--bounce-profile", "Fast",
    )  # fmt: skip
    assert out.startswith("Added example.com: 2 connections, 10 messages per connection, 30 recipients per 1 min")
    c = DestinationControl.objects.get(destination="example.com")
    assert (c.max_connections, c.max_messages_per_connection, c.recipient_limit, c.recipient_minutes) == (2, 10, 30, 1)
    assert (c.limit_scope, c.ip_preference, c.tls, c.bounce_profile.name) == (
        "ip",
        "ipv6-required",
        "required-verify",
        "Fast",
    )
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.object_type, entry.actor_name[:4]) == ("create", "destination control", "cli:")


def test_new_without_options_takes_the_model_defaults():
    run("new", ".example.net")
    c = DestinationControl.objects.get(destination=".example.net")
    assert (c.max_connections, c.max_messages_per_connection, c.recipient_limit, c.tls) == (500, 50, None, "preferred")


def test_edit_changes_only_the_options_given_and_default_edits_the_default_entry():
    run("new", "example.com", "--max-connections", "2", "--recipient-limit", "30", "--recipient-minutes", "5")
    run("edit", "example.com", "--tls", "none")
    c = DestinationControl.objects.get(destination="example.com")
    assert (c.max_connections, c.recipient_limit, c.tls) == (2, 30, "none")
    run("edit", "example.com", "--recipient-limit", "none")
    c.refresh_from_db()
    assert (c.recipient_limit, c.recipient_minutes) == (None, None)
    assert "Changed Default: 100 connections" in run("edit", "DEFAULT", "--max-connections", "100")
    assert DestinationControl.objects.get(destination="default").max_connections == 100


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("new", "bad..name"), '"bad..name" is not a valid domain: it has an empty label'),
        (("new", "example.com", "--max-connections", "0"), "--max-connections: Concurrent connections must be"),
        (("new", "example.com", "--max-connections", "1001"), "(not 1001)"),
        (("new", "example.com", "--max-connections", "many"), '--max-connections "many" is not a whole number'),
        (("new", "example.com", "--max-messages-per-connection", "1001"), "--max-messages-per-connection: Messages"),
        (("new", "example.com", "--recipient-limit", "30"), "--recipient-minutes: A recipient limit counts over"),
        (("new", "example.com", "--recipient-limit", "3", "--recipient-minutes", "61"), "from 1 to 60 (not 61)"),
        (("new", "example.com", "--limit-scope", "mxip"), '--limit-scope "mxip": use domain or ip'),
        (("new", "example.com", "--ip-preference", "v6"), '--ip-preference "v6": use ipv4-preferred or'),
        (("new", "example.com", "--tls", "on"), '--tls "on": use none or preferred or required'),
        (("new", "example.com", "--bounce-profile", "Nope"), '"Nope": no such bounce profile (there are: Default'),
        (("new", "default"), 'The Default entry always exists: change it with "destconfig edit default".'),
        (("edit", "missing.example", "--tls", "none"), '"missing.example": that destination is not in the'),
        (("delete", "default"), "The Default entry always exists: it cannot be deleted"),
        (("delete", "missing.example"), "that destination is not in the destination controls table"),
        (("import", "/nonexistent/file"), "Error reading file /nonexistent/file: No such file or directory"),
    ],
)  # fmt: skip
def test_bad_input_is_one_specific_line(args, message):
    assert message in fails(*args)
    assert not AuditEntry.objects.exists()


def test_a_duplicate_is_refused():
    run("new", "example.com")
    assert "example.com already has a destination control entry" in fails("new", "EXAMPLE.com.")


def test_delete():
    run("new", "example.com")
    assert run("delete", "example.com").strip() == "Deleted example.com"
    assert list(DestinationControl.objects.values_list("destination", flat=True)) == ["default"]


def test_export_then_import_round_trips(tmp_path: Path):
    BounceProfile.objects.create(name="Fast")
    run("new", "example.com", "--max-connections", "2", "--recipient-limit", "30", "--recipient-minutes", "1",
        "--limit-scope", "ip", "--bounce-profile", "Fast")  # fmt: skip
    run("new", ".bücher.example", "--ip-preference", "ipv6-preferred", "--tls", "required")
    run("new", "192.0.2.1", "--max-messages-per-connection", "1")
    run("edit", "default", "--max-connections", "300")
    path = tmp_path / "dest.conf"
    run("export", str(path))
    text = path.read_text()
    assert text == run("print")
    assert "[DEFAULT]\nip_sort_pref = PREFER_V4\nmax_host_concurrency = 300\n" in text
    assert "[example.com]" in text and "limit_type = MXIP" in text and "bounce_profile = Fast" in text
    assert "[.xn--bcher-kva.example]" in text and "ip_sort_pref = PREFER_V6" in text
    before = sorted(DestinationControl.objects.values_list(
        "destination", "max_connections", "max_messages_per_connection", "recipient_limit", "recipient_minutes",
        "limit_scope", "ip_preference", "tls", "bounce_profile_id"))  # fmt: skip
    out = run("import", str(path))
    assert out.strip() == "Imported 4 destination controls: 0 added, 0 changed, 0 removed, 4 unchanged"
    DestinationControl.objects.exclude(destination="default").delete()
    run("edit", "default", "--max-connections", "1")
    assert "3 added, 1 changed, 0 removed" in run("import", str(path))
    after = sorted(DestinationControl.objects.values_list(
        "destination", "max_connections", "max_messages_per_connection", "recipient_limit", "recipient_minutes",
        "limit_scope", "ip_preference", "tls", "bounce_profile_id"))  # fmt: skip
    assert after == before
    assert run("print") == text
    entry = AuditEntry.objects.filter(action="import").last()
    assert entry is not None and entry.object_type == "destination controls"


def test_import_replaces_the_table_but_keeps_the_default(tmp_path: Path):
    run("new", "old.example")
    path = tmp_path / "dest.conf"
    path.write_text("[new.example]\nmax_host_concurrency = 5\n")
    assert "1 added, 0 changed, 1 removed" in run("import", str(path))
    assert sorted(DestinationControl.objects.values_list("destination", flat=True)) == ["default", "new.example"]
    assert DestinationControl.objects.get(destination="new.example").max_messages_per_connection == 50


def test_import_reports_every_problem_by_line_and_changes_nothing(tmp_path: Path):
    path = tmp_path / "dest.conf"
    path.write_text(
        "max_host_concurrency = 5\n"
        "[a.example]\n"
        "max_host_concurrency = lots\n"
        "colour = blue\n"
        "[bad..name]\n"
        "[b.example]\n"
        "max_host_concurrency = 0\n"
        "recipient_limit = 10\n"
        "use_tls = maybe\n"
        "[c.example]\n"
        "bounce_profile = Nope\n"
    )
    message = fails("import", str(path))
    assert message.startswith("Import failed, nothing was changed")
    for part in (
        "line 1: max_host_concurrency comes before any [destination] section",
        'line 3: max_host_concurrency "lots" is not a whole number',
        'line 4: unknown key "colour"',
        'line 9: use_tls "maybe" is not one of none, preferred',
        'line 10: there is no bounce profile "Nope"',
    ):
        assert part in message
    path.write_text("[bad..name]\n[b.example]\nmax_host_concurrency = 0\nrecipient_limit = 10\n")
    message = fails("import", str(path))
    assert '"bad..name" is not a valid domain' in message
    assert "b.example: Concurrent connections must be from 1 to 1,000 (not 0)" in message
    assert "b.example: A recipient limit counts over a number of minutes" in message
    assert list(DestinationControl.objects.values_list("destination", flat=True)) == ["default"]
    assert not AuditEntry.objects.exists()


def test_the_command_exits_non_zero_with_one_line_on_stderr(tmp_path: Path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "manage.py", "destconfig", "new", "bad..name"], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith('CommandError: "bad..name" is not a valid domain')


def test_the_readme_example_file_imports(tmp_path: Path):
    path = tmp_path / "dest.conf"
    path.write_text(
        "[DEFAULT]\nip_sort_pref = PREFER_V4             # PREFER_V4 | REQUIRE_V4\nrecipient_limit =   # none\n"
        "[example.com]\nmax_host_concurrency = 2\nrecipient_limit = 30\nrecipient_minutes = 1\nlimit_type = MXIP\n"
    )
    assert "1 added, 0 changed" in run("import", str(path))
    c = DestinationControl.objects.get(destination="example.com")
    assert (c.max_connections, c.recipient_limit, c.recipient_minutes, c.limit_scope) == (2, 30, 1, "ip")
