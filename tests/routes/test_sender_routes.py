"""Routes by sender in every place routes are: the form, the list, the route tester, the command, the admin."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from routes import services
from routes.models import AuditEntry, Route
from tests.routes.helpers import form_data, make_route

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def client_alice(client, alice):
    client.force_login(alice)
    return client


def run(*args: str) -> str:
    out = StringIO()
    call_command("smtproutes", *args, stdout=out)
    return out.getvalue()


def test_the_form_saves_a_sender_pattern_and_the_same_domain_for_another_sender(client_alice):
    make_route("example.com", "mx1.example.com")
    data = form_data("example.com", [("0", "mx-app.example.com", "25")], sender="Alerts@App.Example")
    response = client_alice.post(reverse("routes:route-add"), data, **HTMX)
    assert response.status_code == 200, response.content.decode()[:2000]
    route = Route.objects.get(sender="alerts@app.example")
    assert route.domain == "example.com"
    assert AuditEntry.objects.filter(object_repr="example.com sender=alerts@app.example", action="create").exists()
    edit = client_alice.get(reverse("routes:route-edit", args=[route.pk])).content.decode()
    assert 'value="alerts@app.example"' in edit and "from alerts@app.example" in edit


@pytest.mark.parametrize(
    ("sender", "message"),
    [
        ("@app.example", "has nothing before the @"),
        ("ALL", "ALL is not a sender pattern"),
        ("alerts@10.0.0.1", "IP address"),
        ("a b@app.example", "is not a sender pattern"),
    ],
)
def test_a_bad_sender_is_a_422_with_the_error_at_the_sender_field(client_alice, sender, message):
    data = form_data("example.com", [("0", "mx.example.com", "70000")], sender=sender)
    response = client_alice.post(reverse("routes:route-add"), data, **HTMX)
    assert response.status_code == 422
    body = response.content.decode()
    errors = body[body.index('id="sender-errors"') :]
    assert message in errors[: errors.index("</ul>")]
    assert "Port must be from 1 to 65535" in body  # the other fields are checked in the same answer
    assert not Route.objects.exists()


def test_the_same_domain_and_sender_twice_is_refused_at_the_domain_field(client_alice):
    make_route("example.com", "mx1.example.com", sender="<>")
    data = form_data("example.com", [("0", "a.example", "")], sender="<>")
    response = client_alice.post(reverse("routes:route-add"), data, **HTMX)
    assert response.status_code == 422
    assert "The value example.com for the sender &lt;&gt; is already in the routing table." in response.content.decode()


def test_the_list_shows_the_sender_and_filters_sender_routes(client_alice):
    make_route("example.com", "mx1.example.com")
    make_route("example.com", "mx-app.example.com", sender="app.example")
    make_route("ALL", "smart.example.net", sender="<>")
    body = client_alice.get(reverse("routes:route-list")).content.decode()
    assert "app.example" in body and "&lt;&gt;" in body
    assert "(not defined: delivered by MX records)" in body  # a sender's ALL is not the default route
    only = client_alice.get(reverse("routes:route-list"), {"kind": "sender"}, **HTMX).content.decode()
    assert "mx-app.example.com" in only and "mx1.example.com" not in only
    found = client_alice.get(reverse("routes:route-list"), {"q": "app.example"}, **HTMX).content.decode()
    assert "mx-app.example.com" in found


def test_the_route_tester_takes_a_sender(client_alice):
    make_route("example.com", "mx1.example.com")
    make_route("example.com", "mx-app.example.com", sender="alerts@app.example")
    url = reverse("routes:route-test")
    plain = client_alice.get(url, {"address": "u@example.com"}, **HTMX).content.decode()
    assert "mx1.example.com" in plain and "mx-app.example.com" not in plain
    app = client_alice.get(url, {"address": "u@example.com", "sender": "alerts@app.example"}, **HTMX).content
    assert "mx-app.example.com" in app.decode() and "for mail from" in app.decode()
    other = client_alice.get(url, {"address": "u@example.com", "sender": "bob@app.example"}, **HTMX).content.decode()
    assert "mx1.example.com" in other and "no route for this sender" in other
    bad = client_alice.get(url, {"address": "u@example.com", "sender": "bob"}, **HTMX)
    assert bad.status_code == 422 and 'id="sender-errors"' in bad.content.decode()


def test_the_command_adds_edits_prints_and_deletes_sender_routes():
    run("new", "example.com", "mx1.example.com")
    assert "Added example.com sender=app.example" in run(
        "new", "example.com", "mx-app.example.com", "--sender", "App.Example"
    )
    printed = run("print")
    assert "sender=app.example" in printed and "mx-app.example.com" in printed
    run("edit", "example.com", "mx-new.example.com", "--sender", "app.example", "--set-sender", ".app.example")
    assert services.table_text() == {
        "example.com": "mx1.example.com",
        "example.com sender=.app.example": "mx-new.example.com",
    }
    run("edit", "example.com", "mx2.example.com")  # without --sender: the route for every sender
    assert services.table_text()["example.com"] == "mx2.example.com"
    run("delete", "example.com", "--sender", ".app.example")
    assert list(Route.objects.values_list("sender", flat=True)) == [""]
    assert AuditEntry.objects.filter(object_repr="example.com sender=.app.example", action="delete").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("new", "example.com", "mx.example.com", "--sender", "@app.example"), "--sender: .*nothing before the @"),
        (("new", "example.com", "mx.example.com", "--sender", "ALL"), "--sender: ALL is not a sender pattern"),
        (("edit", "example.com", "mx.example.com", "--sender", "<>"), "with the sender <>: that entry does not"),
        (("delete", "example.com", "--sender", "x@y.example"), "that entry does not appear"),
    ],
)
def test_command_sender_errors_are_command_errors(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Route.objects.exists()


def test_the_command_names_the_sender_routes_of_a_domain_without_a_plain_route():
    make_route("example.com", "mx.example.com", sender="app.example")
    with pytest.raises(CommandError, match=r"name one with --sender app\.example"):
        run("delete", "example.com")


def test_the_admin_saves_and_checks_the_sender(client_alice):
    make_route("example.com", "mx1.example.com", sender="app.example")
    data = {
        "domain": "example.com",
        "sender": "app.example",
        "special": "",
        "tls": "opportunistic",
        "hosts-TOTAL_FORMS": "1",
        "hosts-INITIAL_FORMS": "0",
        "hosts-MIN_NUM_FORMS": "0",
        "hosts-MAX_NUM_FORMS": "100",
        "hosts-0-priority": "0",
        "hosts-0-destination": "mx2.example.com",
        "hosts-0-port": "25",
    }
    body = client_alice.post(reverse("admin:routes_route_add"), data).content.decode()
    assert "The value example.com for the sender app.example is already in the routing table." in body
    assert "already exists" not in body
    bad = client_alice.post(reverse("admin:routes_route_add"), {**data, "sender": "@x.example"}).content.decode()
    assert "Has nothing before the @" in bad or "has nothing before the @" in bad
    response = client_alice.post(reverse("admin:routes_route_add"), {**data, "sender": "<>"})
    assert response.status_code == 302
    assert Route.objects.filter(domain="example.com", sender="<>").exists()
    listing = client_alice.get(reverse("admin:routes_route_changelist")).content.decode()
    assert "&lt;&gt;" in listing


def _upload(client, text):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("routes.txt", text.encode(), content_type="text/plain")
    return client.post(reverse("routes:routes-import"), {"file": upload}, **HTMX)


def test_the_import_page_previews_and_applies_sender_routes_and_exports_them(client_alice):
    make_route("example.com", "mx1.example.com")
    text = "example.com mx1.example.com\nexample.com sender=app.example mx-app.example.com\n"
    preview = _upload(client_alice, text)
    body = preview.content.decode()
    assert preview.status_code == 200 and "1 to add" in body and "sender=app.example" in body
    token = body.split('name="token" value="')[1].split('"')[0]
    version = body.split('name="version" value="')[1].split('"')[0]
    client_alice.post(reverse("routes:routes-import"), {"token": token, "mode": "replace", "version": version}, **HTMX)
    assert Route.objects.filter(domain="example.com", sender="app.example").exists()
    exported = client_alice.get(reverse("routes:routes-export")).content.decode()
    assert "sender=app.example" in exported
    bad = _upload(client_alice, "example.com sender=@app.example mx.example.com\n")
    assert bad.status_code == 422 and "line 1: sender:" in bad.content.decode()


def test_the_route_tester_says_where_a_routes_connections_come_from(client_alice):
    make_route("example.com", "mx1.example.com", source_address="127.0.0.1", ehlo_name="out1.example.net")
    make_route("plain.example", "mx1.example.com")
    body = client_alice.get(reverse("routes:route-test"), {"address": "u@example.com"}, **HTMX).content.decode()
    assert "Connections come from <strong>127.0.0.1</strong> and say <strong>EHLO out1.example.net</strong>" in body
    plain = client_alice.get(reverse("routes:route-test"), {"address": "u@plain.example"}, **HTMX).content.decode()
    assert "Connections come from" not in plain


def test_the_admin_shows_and_checks_weight_source_address_and_ehlo_name(client_alice):
    data = {
        "domain": "example.com",
        "sender": "",
        "special": "",
        "tls": "opportunistic",
        "source_address": "192.0.2.77",
        "ehlo_name": "Out1.Example.NET",
        "hosts-TOTAL_FORMS": "1",
        "hosts-INITIAL_FORMS": "0",
        "hosts-MIN_NUM_FORMS": "0",
        "hosts-MAX_NUM_FORMS": "100",
        "hosts-0-priority": "0",
        "hosts-0-destination": "mx1.example.com",
        "hosts-0-port": "25",
        "hosts-0-weight": "3",
    }
    page = client_alice.get(reverse("admin:routes_route_add")).content.decode()
    assert 'name="source_address"' in page and 'name="ehlo_name"' in page and 'name="hosts-0-weight"' in page
    bad = client_alice.post(reverse("admin:routes_route_add"), data).content.decode()
    field = bad[bad.index("field-source_address") :]
    field = field[: field.index("field-ehlo_name")]
    assert "192.0.2.77 is not an address of this machine" in field and "errorlist" in field
    assert not Route.objects.exists()
    ehlo = client_alice.post(reverse("admin:routes_route_add"), {**data, "source_address": "", "ehlo_name": "a_b!"})
    assert "is not a host name" in ehlo.content.decode()[ehlo.content.decode().index("field-ehlo_name") :]
    weight = client_alice.post(reverse("admin:routes_route_add"), {**data, "source_address": "", "hosts-0-weight": "x"})
    assert "is not a whole number" in weight.content.decode() and not Route.objects.exists()
    saved = client_alice.post(reverse("admin:routes_route_add"), {**data, "source_address": "127.0.0.1"})
    assert saved.status_code == 302
    route = Route.objects.get()
    assert (route.source_address, route.ehlo_name) == ("127.0.0.1", "out1.example.net")
    assert route.hosts.get().weight == 3
    edit = client_alice.get(reverse("admin:routes_route_change", args=[route.pk])).content.decode()
    assert 'value="127.0.0.1"' in edit and 'value="out1.example.net"' in edit and 'value="3"' in edit
