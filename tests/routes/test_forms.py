from __future__ import annotations

import pytest

from routes import domains, forms
from tests.routes.helpers import form_data, make_route

pytestmark = pytest.mark.django_db


def editor(domain, rows, **extra):
    e = forms.RouteEditor(form_data(domain, rows, **extra))
    return e, e.is_valid()


def test_unicode_domain_and_hosts_are_stored_in_idna():
    e, ok = editor("Bücher.Example", [("0", "[MX.Bücher.Example]", ""), ("5", "2001:DB8::1", "2525")])
    assert ok, (e.form.errors, [f.errors for f in e.hosts.forms], e.route_errors)
    assert e.data.domain == "xn--bcher-kva.example"
    assert e.data.destination == [
        domains.HostSpec("mx.xn--bcher-kva.example", 25, 0, a_only=True),
        domains.HostSpec("2001:db8::1", 2525, 5),
    ]


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("exa_mple.com", 'contains "_"'),
        ("example..com", "empty label"),
        ("10.0.0.1", "is an IP address"),
        ("-bad.example", "starts with a hyphen"),
        ("", "This field is required."),
    ],
)
def test_bad_domains_are_reported_at_the_domain(domain, message):
    e, ok = editor(domain, [("0", "mx.example.com", "")])
    assert not ok
    assert any(message in m for m in e.form.errors["domain"])


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        (("0", "mx.example.com", "0"), "port", "Port must be from 1 to 65535"),
        (("0", "mx.example.com", "http"), "port", 'Port "http" is not a whole number'),
        (("65536", "mx.example.com", ""), "priority", "Priority must be from 0 to 65535"),
        (("-1", "mx.example.com", ""), "priority", "Priority must be from 0 to 65535"),
        (("0", "mx.example.com:2525", ""), "destination", "write the port (2525) in the Port column"),
        (("0", "mx.example.com/pri=5", ""), "destination", "Priority column"),
        (("0", "300.1.1.1", ""), "destination", "neither a valid IPv4 address nor a host name"),
        (("0", "224.0.0.1", ""), "destination", "multicast"),
        (("0", "[10.0.0.1", ""), "destination", 'without a closing "]"'),
    ],
)
def test_bad_cells_are_reported_at_their_cell_and_keep_the_text(row, field, message):
    e, ok = editor("example.com", [("0", "good.example.com", ""), row])
    assert not ok
    bad = e.hosts.forms[1]
    assert any(message in m for m in bad.errors[field]), bad.errors
    assert not e.hosts.forms[0].errors
    assert bad[field].value() == row[{"priority": 0, "destination": 1, "port": 2}[field]]


def test_route_rules_duplicates_and_limits():
    e, ok = editor("example.com", [("0", "a.example.com", "2525"), ("0", "a.example.com", "")])
    assert not ok and "already has an alternate port (2525)" in e.hosts.forms[1].errors["destination"][0]
    e, ok = editor("example.com", [("0", "", "")])
    assert not ok and e.route_errors == ["A route needs at least one destination host"]
    rows = [("0", f"h{i}.example.com", "") for i in range(101)]
    e, ok = editor("example.com", rows)
    assert not ok and "more than 100 destination hosts" in e.route_errors[0]
    e, ok = editor("ALL", [("0", "/dev/null", "")])
    assert ok and e.data.destination is domains.Special.DEVNULL


def test_edit_shows_hosts_in_unicode_and_specials():
    route = make_route("xn--bcher-kva.example", "[mx.xn--bcher-kva.example]:2525/pri=5")
    e = forms.RouteEditor(route=route)
    assert e.form.initial["domain"] == "bücher.example"
    assert e.hosts.forms[0].initial == {
        "priority": "5",
        "destination": "[mx.bücher.example]",
        "port": "2525",
        "weight": "1",
    }
    usedns = make_route(".example.org", "USEDNS")
    assert forms.RouteEditor(route=usedns).hosts.forms[0].initial["destination"] == "USEDNS"


def test_weight_column_is_stored_and_shown_back():
    e, ok = editor("example.com", [("10", "mx1.example.com", "", "3"), ("10", "mx2.example.com", "", "")])
    assert ok, [f.errors for f in e.hosts.forms]
    assert e.data.destination == [
        domains.HostSpec("mx1.example.com", priority=10, weight=3),
        domains.HostSpec("mx2.example.com", priority=10, weight=1),
    ]
    route = make_route("example.net", "mx1.example.net/pri=10/weight=7")
    assert forms.RouteEditor(route=route).hosts.forms[0].initial["weight"] == "7"


@pytest.mark.parametrize(
    ("weight", "message"),
    [("0", "Weight must be from 1 to 100"), ("101", "Weight must be from 1 to 100"), ("x", "not")],
)
def test_a_bad_weight_is_reported_at_its_cell(weight, message):
    e, ok = editor("example.com", [("0", "mx1.example.com", "", weight)])
    assert not ok
    assert any(message in m for m in e.hosts.forms[0].errors["weight"])


def test_a_weight_typed_after_the_host_points_to_its_column():
    e, ok = editor("example.com", [("0", "mx1.example.com/weight=3", "")])
    assert not ok
    assert e.hosts.forms[0].errors["destination"] == ["write the weight in the Weight column, not after the host"]
