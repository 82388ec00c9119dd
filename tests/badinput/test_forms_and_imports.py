"""Bad input through the browser's forms and the import page: a message at the field that is wrong, what was typed
kept, status 422, and nothing written (routes, hosts and audit entries counted before and after)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest

from routes.models import AuditEntry, DestinationHost, Route, RouteTableVersion
from tests.routes.helpers import form_data, make_route

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("_fast_passwords")]


@pytest.fixture
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin(client, alice) -> Any:
    client.force_login(alice)
    make_route("existing.test", "mx1.existing.test, mx2.existing.test/pri=5")
    return client


def counts() -> tuple[int, int, int, int]:
    version = RouteTableVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0
    return Route.objects.count(), DestinationHost.objects.count(), AuditEntry.objects.count(), version


def post_route(client: Any, domain: str, rows: list[tuple[str, str, str]], **extra: Any) -> Any:
    before = counts()
    response = client.post("/routes/add/", form_data(domain, rows, **extra), headers={"HX-Request": "true"})
    assert response.status_code == 422, response.status_code
    assert counts() == before
    return response


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("exa mple.com", "contains a space"),
        ("<script>.test", 'contains "<"'),
        ("example..com", "empty label"),
        ("-bad.test", "starts with a hyphen"),
        ("a" * 64 + ".test", "is 64 characters long (the limit is 63)"),
        ("192.168.1.1", "is an IP address"),
        ("example.com\x00", "Null characters are not allowed."),
        ("", "This field is required."),
        ("x" * 301, "at most 300 characters"),
        ("existing.test", "is already in the routing table"),
    ],
    ids=repr,
)
def test_bad_receiving_domain_is_refused_at_the_domain_field(admin, domain, message):
    response = post_route(admin, domain, [("0", "mx.example.com", "25")])
    errors = response.context["editor"].form.errors["domain"]
    assert any(message in e for e in errors), errors
    html = response.content.decode()
    assert 'id="domain-errors"' in html


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        (("0", "mx.example.com", "0"), "port", "Port must be from 1 to 65535"),
        (("0", "mx.example.com", "65536"), "port", "Port must be from 1 to 65535"),
        (("0", "mx.example.com", "abc"), "port", 'Port "abc" is not a whole number'),
        (("0", "mx.example.com", "25.5"), "port", "is not a whole number"),
        (("-1", "mx.example.com", "25"), "priority", "Priority must be from 0 to 65535"),
        (("65536", "mx.example.com", "25"), "priority", "Priority must be from 0 to 65535"),
        (("x", "mx.example.com", "25"), "priority", "is not a whole number"),
        (("0", "mx.exa mple.com", "25"), "destination", ""),
        (("0", "<b>x</b>", "25"), "destination", ""),
        (("0", "USEDNS", "25"), "destination", "must be the only destination"),
        (("0", "/dev/null", "25"), "destination", "must be the only destination"),
        (("0", "mx.example.com", "9" * 30), "port", "at most 20 characters"),
    ],
    ids=repr,
)
def test_bad_host_cell_is_refused_at_its_cell_and_keeps_what_was_typed(admin, row, field, message):
    response = post_route(admin, "new.test", [("0", "good.example.com", "25"), row])
    editor = response.context["editor"]
    bad = editor.hosts.forms[1]
    assert bad.errors.get(field), bad.errors
    assert any(message in e for e in bad.errors[field]), bad.errors
    assert not editor.hosts.forms[0].errors
    typed = dict(zip(("priority", "destination", "port"), row, strict=True))
    assert bad[field].value() == typed[field]


def test_route_level_rules(admin):
    response = post_route(admin, "new.test", [("0", f"h{i}.example.com", "25") for i in range(101)])
    assert any("more than 100 destination hosts" in e for e in response.context["editor"].route_errors)
    assert 'id="host-errors"' in response.content.decode()

    response = post_route(admin, "new.test", [("0", "a.example.com", "25"), ("5", "A.Example.com", "25")])
    assert response.context["editor"].hosts.forms[1].errors["destination"]

    response = post_route(admin, "ALL", [("0", "USEDNS", "25")])
    errors = [*response.context["editor"].route_errors, *response.context["editor"].form.errors.get("domain", [])]
    assert any("USEDNS" in e for e in errors), errors

    response = post_route(admin, "new.test", [("0", "/dev/null", "25"), ("0", "mx.example.com", "25")])
    assert any("only destination" in e for e in response.context["editor"].hosts.forms[0].errors["destination"])


def test_a_route_with_ten_thousand_host_rows_is_refused_whole(admin):
    """The page adds rows one at a time (at most 200); 10,000 rows is a forged POST: Django's field limit
    refuses it (400) before any form code runs, and nothing is written."""
    started = time.monotonic()
    before = counts()
    rows = [("0", f"h{i}.example.com", "25") for i in range(10_000)]
    response = admin.post("/routes/add/", form_data("huge.test", rows), headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert counts() == before
    assert time.monotonic() - started < 30


def test_three_hundred_host_rows_get_the_limit_message(admin):
    response = post_route(admin, "wide.test", [("0", f"h{i}.example.com", "25") for i in range(300)])
    html = response.content.decode()
    assert "more than 100 destination hosts (this one has 300)" in html


def test_the_host_row_endpoint_refuses_absurd_counters(admin):
    for value in ("-1", "abc", "100000", "1e9"):
        response = admin.get("/routes/host-row/", {"hosts-TOTAL_FORMS": value}, headers={"HX-Request": "true"})
        assert response.status_code == 400, value


# --- the import page ----------------------------------------------------------------------------------------------


def upload(client: Any, name: str, data: bytes, **extra: Any) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    before = counts()
    response = client.post("/routes/import/", {"file": SimpleUploadedFile(name, data), "mode": "replace", **extra})
    assert counts() == before
    return response


def test_a_10_mb_import_file_is_refused_whole(admin):
    line = b"d%07d.test  mx.example.com\n"
    data = b"".join(line % i for i in range(10_000_000 // len(line % 0) + 1))
    assert len(data) > 10_000_000
    response = upload(admin, "big.txt", data)
    assert response.status_code == 422
    assert b"the limit is 5,000,000 bytes" in response.content
    assert b"Nothing was changed" in response.content


def test_a_file_of_binary_junk_is_refused_with_one_clear_error(admin):
    junk = random.Random(7).randbytes(200_000)
    response = upload(admin, "junk.bin", junk)
    assert response.status_code == 422
    errors = response.context["errors"]
    assert len(errors) == 1 and ("binary" in errors[0] or "UTF-8" in errors[0]), errors


def test_printable_junk_lists_its_errors_in_a_bounded_page(admin):
    """Five megabytes of text that is not a routes file: refused, and the page stays a page."""
    rnd = random.Random(3)
    alphabet = "abcdefghijklmnopqrstuvwxyz<>&\"' .:/=,_-"
    data = "\n".join("".join(rnd.choice(alphabet) for _ in range(48)) for _ in range(100_000)).encode()
    assert len(data) < 5_000_000
    started = time.monotonic()
    response = upload(admin, "junk.txt", data)
    assert time.monotonic() - started < 60
    assert response.status_code == 422
    assert len(response.content) < 2_000_000, len(response.content)
    assert b"<script" not in response.content.split(b"</head>", 1)[-1].replace(b'<script src="', b"")


def test_a_route_line_with_ten_thousand_hosts_is_refused(admin):
    hosts = ", ".join(f"h{i}.example.com" for i in range(10_000))
    response = upload(admin, "wide.txt", f"wide.test {hosts}\n".encode())
    assert response.status_code == 422
    assert any("line 1:" in e for e in response.context["errors"])


def test_a_file_with_one_bad_line_changes_nothing(admin):
    data = b"a.test mx.a.test\nb.test mx.b.test:0\nc.test mx.c.test\n"
    response = upload(admin, "one-bad.txt", data)
    assert response.status_code == 422
    assert response.context["errors"] == ["line 2: port must be from 1 to 65535"] or any(
        e.startswith("line 2:") for e in response.context["errors"]
    )


def test_a_forged_confirmation_token_is_refused(admin):
    for token in ("../../etc/passwd", "x" * 200, "nonexistent-token", "a/b"):
        response = upload(admin, "none.txt", b"", token=token)
        assert response.status_code == 422, token
        assert b"upload the file again" in response.content


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX only")
def test_the_import_preview_file_is_not_world_readable(admin, settings):
    response = upload(admin, "ok.txt", b"ok.test mx.ok.test\n")
    assert response.status_code == 200
    token = response.context["token"]
    mode = (settings.DATA_DIR / "route-imports" / f"{token}.txt").stat().st_mode
    assert mode & 0o077 == 0, oct(mode)
