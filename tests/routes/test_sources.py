"""A route's source address and EHLO name: the text rules (a table) and the "one of this machine's" check."""

from __future__ import annotations

import re

import pytest

from routes import services, sources
from routes.models import AuditEntry, Route
from tests.routes.helpers import form_data, make_route


@pytest.mark.parametrize(
    ("text", "stored"),
    [("", ""), ("  ", ""), ("127.0.0.2", "127.0.0.2"), (" [127.0.0.3] ", "127.0.0.3"), ("::1", "::1")],
)
def test_source_address_stored_form(text, stored):
    assert sources.normalize_source_address(text) == stored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("relay.example", '"relay.example" is not an IP address'),
        ("127.0.0.300", "is not an IP address"),
        ("0.0.0.0", "0.0.0.0 cannot be the address a connection comes from"),
        ("224.0.0.1", "cannot be the address"),
        ("fe80::1%eth0", "zone index"),
    ],
)
def test_source_address_that_is_no_address(text, message):
    with pytest.raises(ValueError, match=message):
        sources.normalize_source_address(text)


def test_only_an_address_of_this_machine_can_be_bound():
    assert sources.local_address_problem("127.0.0.2") is None  # all of 127.0.0.0/8 is this machine's on Linux
    problem = sources.local_address_problem("192.0.2.1")  # TEST-NET-1: bound for a moment, never connected
    assert problem is not None and problem.startswith("192.0.2.1 is not an address of this machine (")


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("", ""),
        ("Relay-2.Example.COM", "relay-2.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("[127.0.0.2]", "[127.0.0.2]"),
        ("[IPv6:2001:DB8::1]", "[IPv6:2001:db8::1]"),
    ],
)
def test_ehlo_name_stored_form(text, stored):
    assert sources.normalize_ehlo_name(text) == stored


@pytest.mark.parametrize(
    ("text", "message"),
    [("relay example", "is not a host name"), ("[relay]", "not an address literal"), ("a..b", "empty label")],
)
def test_ehlo_name_that_is_no_name(text, message):
    with pytest.raises(ValueError, match=message):
        sources.normalize_ehlo_name(text)


@pytest.mark.django_db
def test_the_form_says_at_its_field_why_an_address_is_refused():
    from routes import forms

    data = form_data("example.com", [("0", "mx1.example.com", "")], source_address="192.0.2.1", ehlo_name="a b")
    editor = forms.RouteEditor(data)
    assert not editor.is_valid()
    (address_error,) = editor.form.errors["source_address"]
    assert address_error.startswith("192.0.2.1 is not an address of this machine")
    assert editor.form.errors["ehlo_name"] == ['"a b" is not a host name: label "a b" contains a space']
    ok = forms.RouteEditor(form_data("example.com", [("0", "mx1.example.com", "")], source_address="127.0.0.2"))
    assert ok.is_valid() and ok.data is not None and ok.data.source_address == "127.0.0.2"


@pytest.mark.django_db
def test_the_services_refuse_it_too_and_audit_both_fields():
    refused = re.escape("source address: 192.0.2.1 is not an address of this machine")
    with pytest.raises(services.RouteInvalid, match=refused):
        make_route("example.com", "mx1.example.com", source_address="192.0.2.1")
    route = make_route("example.com", "mx1.example.com", source_address="127.0.0.2", ehlo_name="Out.Example")
    stored = Route.objects.get(pk=route.pk)
    assert (stored.source_address, stored.ehlo_name) == ("127.0.0.2", "out.example")
    after = AuditEntry.objects.get(object_type="route", action="create").after
    assert after["source_address"] == "127.0.0.2" and after["ehlo_name"] == "out.example"
