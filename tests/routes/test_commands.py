from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from routes import services
from routes.models import AuditEntry, Route
from tests.routes.helpers import make_route

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    out = StringIO()
    call_command("smtproutes", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_new_edit_rename_delete_with_the_cli_actor():
    assert "Added example.com" in run("new", "Example.com", "mx1.example.com/pri=10, [10.0.0.9]:2525/pri=20")
    assert services.table_text() == {"example.com": "mx1.example.com/pri=10, 10.0.0.9:2525/pri=20"}
    assert "renamed from example.com" in run("edit", "example.com", "USEDNS", "--rename", ".example.org")
    assert services.table_text() == {".example.org": "USEDNS"}
    run("delete", ".EXAMPLE.org")
    assert not Route.objects.exists()
    actors = set(AuditEntry.objects.values_list("actor_name", flat=True))
    assert len(actors) == 1 and next(iter(actors)).startswith("cli:")
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == ["create", "update", "delete"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("new", "bad_domain.example", "mx.example.com"), 'contains "_"'),
        (("new", "example.com", "mx.example.com:0"), "port must be from 1 to 65535"),
        (("new", "example.com", "mx.example.com/pri=70000"), "priority must be from 0 to 65535"),
        (("new", "example.com", "a.example.com, A.example.com"), "listed more than once"),
        (("new", "example.com", "a.example.com, USEDNS"), "must be the only destination"),
        (("new", "ALL", "USEDNS"), "USEDNS cannot be the destination of the default route"),
        (("edit", "missing.example", "mx.example.com"), "does not appear to be in the routing table"),
        (("delete", "missing.example"), "does not appear to be in the routing table"),
        (("import", "/nonexistent/routes.txt"), "Error reading file"),
        (("new", "example.com", "USEDNS", "--source-address", "mail.example"), "^source address: .*not an IP address"),
        (("new", "example.com", "USEDNS", "--source-address", "192.0.2.77"), "^source address: .*not an address of"),
        (("new", "example.com", "USEDNS", "--ehlo", "bad_name!"), "^EHLO name: .*is not a host name"),
    ],
)
def test_errors_are_command_errors(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Route.objects.exists()


@pytest.mark.django_db
def test_new_edit_and_print_a_source_address_and_ehlo_name():
    added = run("new", "example.com", "USEDNS", "--source-address", "127.0.0.1", "--ehlo", "Relay.Example")
    assert "source address 127.0.0.1 EHLO relay.example" in added
    route = Route.objects.get()
    assert (route.source_address, route.ehlo_name) == ("127.0.0.1", "relay.example")
    assert "# example.com: source address 127.0.0.1 EHLO relay.example" in run("print")
    run("edit", "example.com", "mx.example.com")  # without the options: unchanged
    route.refresh_from_db()
    assert (route.source_address, route.ehlo_name) == ("127.0.0.1", "relay.example")
    run("edit", "example.com", "mx.example.com", "--source-address", "", "--ehlo", "[127.0.0.1]")
    route.refresh_from_db()
    assert (route.source_address, route.ehlo_name) == ("", "[127.0.0.1]")
    run("edit", "example.com", "mx.example.com", "--ehlo", "")
    route.refresh_from_db()
    assert (route.source_address, route.ehlo_name) == ("", "")
    assert "# example.com:" not in run("print")


@pytest.mark.django_db
def test_edit_keeps_the_route_when_the_source_address_is_bad():
    make_route("example.com")
    with pytest.raises(CommandError, match=r"^source address: .*not an IP address"):
        run("edit", "example.com", "USEDNS", "--source-address", "nope")
    assert Route.objects.get().source_address == ""


@pytest.mark.django_db
def test_new_refuses_an_existing_domain():
    make_route("example.com")
    with pytest.raises(CommandError, match=r"The value example\.com is already in the routing table\."):
        run("new", "example.com", "other.example.com")


@pytest.mark.django_db
def test_import_export_round_trip_and_replace(tmp_path):
    text = (
        "# comment\n\nexample.com  mx1.example.com/pri=10, mx2.example.com:2525/pri=10, [10.0.0.9]/pri=20\n"
        ".example.com USEDNS\ndrop.example.com /dev/null\nbücher.example [mx.bücher.example]\n"
        "v6.example [2001:db8::1]:2525, 2001:db8::2\nALL smarthost.example.net:587\n"
    )
    source = tmp_path / "routes.txt"
    source.write_text(text, encoding="utf-8")
    assert "6 added" in run("import", str(source))
    exported = tmp_path / "out.txt"
    run("export", str(exported))
    make_route("extra.example")
    assert "0 added, 0 changed, 1 removed, 6 unchanged" in run("import", str(exported), "--replace")
    assert len(services.table_text()) == 6
    assert services.table_text()["xn--bcher-kva.example"] == "[mx.xn--bcher-kva.example]"
    assert exported.read_text().split("\n", 3)[3] == services.export_text().split("\n", 3)[3]


@pytest.mark.django_db
def test_bad_import_lists_every_line_and_changes_nothing(tmp_path):
    make_route("keep.example")
    bad = tmp_path / "bad.txt"
    bad.write_text("ok.example mx.ok.example\nbad..example mx\nx.example mx:99999\nok.example other\n")
    with pytest.raises(CommandError) as info:
        run("import", str(bad), "--replace")
    text = str(info.value)
    assert "line 2:" in text and "line 3:" in text and "line 4:" in text
    assert services.table_text() == {"keep.example": "mx1.example.com"}


@pytest.mark.django_db
def test_clear_needs_yes_when_not_interactive():
    make_route("a.example")
    with pytest.raises(CommandError, match="--yes"):
        run("clear")
    assert Route.objects.count() == 1
    run("clear", "--yes")
    assert not Route.objects.exists()
    assert AuditEntry.objects.filter(action="clear").count() == 1


def _subprocess_env() -> dict[str, str]:
    cfg = connection.settings_dict
    env = dict(os.environ)
    if cfg["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{cfg['NAME']}"
    else:
        auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg["PASSWORD"] else "")
        env["DATABASE_URL"] = f"postgres://{auth}@{cfg['HOST']}:{cfg['PORT'] or 5432}/{cfg['NAME']}"
    return env


@pytest.mark.django_db(transaction=True)
def test_exit_codes_and_stderr_in_a_real_process():
    make_route("example.com", "mx.example.com:2525/pri=5")
    env = _subprocess_env()
    cmd = [sys.executable, str(ROOT / "manage.py"), "smtproutes"]
    ok = subprocess.run([*cmd, "print"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "example.com  mx.example.com:2525/pri=5" in ok.stdout
    bad = subprocess.run(
        [*cmd, "new", "x.example", "mx:99999"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert bad.returncode == 1
    assert "port must be from 1 to 65535" in bad.stderr and bad.stdout == ""
    usage = subprocess.run([*cmd, "frobnicate"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert usage.returncode != 0 and "invalid choice" in usage.stderr
    assert Route.objects.count() == 1
