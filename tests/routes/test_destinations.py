"""routes.destinations: which destination control entry applies, what it is counted by, and the field rules.

Pure: no database, no network.
"""

from __future__ import annotations

from typing import Any

import pytest

from routes import destinations
from routes.destinations import DestinationLimits, DestinationTable

TABLE = DestinationTable(
    [
        DestinationLimits("default", max_connections=500),
        DestinationLimits("example.com", max_connections=2),
        DestinationLimits(".example.com", max_connections=3),
        DestinationLimits(".deep.example.com", max_connections=4),
        DestinationLimits("xn--bcher-kva.example", max_connections=5),
        DestinationLimits("192.0.2.1", max_connections=6),
        DestinationLimits("2001:db8::1", max_connections=7, limit_scope="ip"),
    ]
)


@pytest.mark.parametrize(
    ("recipient", "entry"),
    [
        ("example.com", "example.com"),
        ("user@Example.COM", "example.com"),
        ("user@example.com.", "example.com"),
        ("a.example.com", ".example.com"),
        ("x.y.example.com", ".example.com"),
        ("a.deep.example.com", ".deep.example.com"),  # the longest partial wins
        ("deep.example.com", ".example.com"),  # a partial never matches its own name
        ("user@bücher.example", "xn--bcher-kva.example"),
        ("user@xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("user@[192.0.2.1]", "192.0.2.1"),
        ("192.0.2.1", "192.0.2.1"),
        ("user@[IPv6:2001:DB8:0::1]", "2001:db8::1"),
        ("user@[192.0.2.2]", "default"),
        ("other.test", "default"),
        ("notexample.com", "default"),
        ("bad..example.com", "default"),
        ("user@", "default"),
        ("", "default"),
    ],
)
def test_lookup_exact_then_longest_partial_then_default(recipient, entry):
    assert TABLE.lookup(recipient).destination == entry


def test_lookup_never_returns_none_and_falls_back_to_the_builtin_default():
    empty = DestinationTable([DestinationLimits("example.com", max_connections=2)])
    assert empty.lookup("other.test") is destinations.BUILTIN_DEFAULT
    assert empty.lookup("other.test").is_default
    assert (empty.default.max_connections, empty.default.max_messages_per_connection) == (500, 50)
    assert empty.default.tls == "preferred" and empty.default.ip_preference == "ipv4-preferred"
    assert DestinationTable().lookup("example.com").destination == "default"


def test_entries_list_the_default_first():
    assert next(e.destination for e in TABLE.entries()) == "default"
    assert len(TABLE) == 7


@pytest.mark.parametrize(
    "entries",
    [
        [DestinationLimits("default"), DestinationLimits("default")],
        [DestinationLimits("example.com"), DestinationLimits("example.com")],
        [DestinationLimits(".example.com"), DestinationLimits(".example.com")],
    ],
)
def test_a_duplicate_entry_is_refused(entries):
    with pytest.raises(ValueError, match=r"two Default|appears twice"):
        DestinationTable(entries)


@pytest.mark.parametrize(
    ("recipient", "ip", "key"),
    [
        ("example.com", None, "example.com"),  # an exact entry: the domain
        ("user@Example.com", None, "example.com"),
        ("a.example.com", None, "a.example.com"),  # a partial: each subdomain its own copy
        ("b.example.com", None, "b.example.com"),
        ("other.test", None, "other.test"),  # the Default: each domain its own copy
        ("other.test", "127.0.0.1", "other.test"),  # domain scope: the IP does not split the count
        ("user@[192.0.2.1]", None, "192.0.2.1"),
        ("user@bücher.example", None, "xn--bcher-kva.example"),
    ],
)
def test_counting_key_is_the_recipient_domain_in_domain_scope(recipient, ip, key):
    assert destinations.counting_key(TABLE.lookup(recipient), recipient, ip) == key


@pytest.mark.parametrize(
    ("recipient", "ip", "key"),
    [
        ("example.com", "127.0.0.1", "example.com|127.0.0.1"),
        ("example.com", "[::1]", "example.com|::1"),
        ("example.com", "0:0::1", "example.com|::1"),
        ("a.example.com", "127.0.0.2", "a.example.com|127.0.0.2"),
        ("example.com", None, "example.com"),  # before a host is chosen: the domain's count
    ],
)
def test_counting_key_is_per_destination_ip_in_ip_scope(recipient, ip, key):
    limits = DestinationLimits(".example.com", limit_scope="ip")
    assert destinations.counting_key(limits, recipient, ip) == key


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("Default", "default"),
        (" DEFAULT ", "default"),
        ("Example.COM.", "example.com"),
        (".Example.com", ".example.com"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("192.0.2.1", "192.0.2.1"),
        ("[192.0.2.1]", "192.0.2.1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("[IPv6:2001:db8::1]", "2001:db8::1"),
    ],
)
def test_normalize_destination(typed, stored):
    assert destinations.normalize_destination(typed) == stored


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("bad..name", '"bad..name" is not a valid domain: it has an empty label'),
        ("", "Type a destination"),
        ("ALL", 'the entry for every other domain is "default"'),
        ("a_b.example", 'contains "_"'),
        ("[mx.example.com]", "only an address goes in brackets"),
        ("fe80::1%eth0", "zone index"),
    ],
)
def test_normalize_destination_refuses_with_the_reason(typed, message):
    with pytest.raises(destinations.DestinationError) as info:
        destinations.normalize_destination(typed)
    assert message in str(info.value)


GOOD: dict[str, Any] = {
    "max_connections": 500,
    "max_messages_per_connection": 50,
    "recipient_limit": None,
    "recipient_minutes": None,
    "limit_scope": "domain",
    "ip_preference": "ipv4-preferred",
    "tls": "preferred",
}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"max_connections": 0}, "max_connections", "from 1 to 1,000 (not 0)"),
        ({"max_connections": 1001}, "max_connections", "from 1 to 1,000 (not 1001)"),
        ({"max_connections": None}, "max_connections", "Type the maximum concurrent connections"),
        ({"max_messages_per_connection": 0}, "max_messages_per_connection", "from 1 to 1,000 (not 0)"),
        ({"max_messages_per_connection": 1001}, "max_messages_per_connection", "from 1 to 1,000 (not 1001)"),
        ({"recipient_limit": 30}, "recipient_minutes", "counts over a number of minutes"),
        ({"recipient_minutes": 5}, "recipient_limit", "how many recipients"),
        ({"recipient_limit": 30, "recipient_minutes": 61}, "recipient_minutes", "from 1 to 60 (not 61)"),
        ({"recipient_limit": 30, "recipient_minutes": 0}, "recipient_minutes", "from 1 to 60 (not 0)"),
        ({"recipient_limit": 0, "recipient_minutes": 1}, "recipient_limit", "from 1 to 1,000,000,000"),
        ({"limit_scope": "mxip"}, "limit_scope", "use domain or ip"),
        ({"ip_preference": "v6"}, "ip_preference", "ipv6-preferred or ipv6-required"),
        ({"tls": "on"}, "tls", "use none, preferred, required, preferred-verify or required-verify"),
    ],
)
def test_limits_problems_name_the_field(change, field, message):
    problems = destinations.limits_problems(**{**GOOD, **change})
    assert list(problems) == [field]
    assert message in problems[field][0]


def test_good_limits_have_no_problems():
    assert destinations.limits_problems(**GOOD) == {}
    assert destinations.limits_problems(**{**GOOD, "recipient_limit": 30, "recipient_minutes": 60}) == {}
    assert destinations.limits_problems(**{**GOOD, "max_connections": 1, "max_messages_per_connection": 1000}) == {}


def test_the_route_table_carries_the_destinations():
    from routes import matching

    assert matching.RouteTable([]).destinations.lookup("example.com").is_default
    assert matching.RouteTable([], destinations=TABLE).destinations.lookup("a.example.com").max_connections == 3


@pytest.mark.parametrize(
    ("stored", "key"),
    [
        ("example.com", "example.com"),
        ("[192.0.2.1]", "192.0.2.1"),
        ("[ipv6:::1]", "::1"),  # a recipient's domain as the queue stores `user@[IPv6:::1]`
        ("[IPv6:0:0::1]", "::1"),
        ("[ipv6:2001:DB8::1]", "2001:db8::1"),
        ("[not an address]", "[not an address]"),
    ],
)
def test_counting_domain_is_the_key_a_stored_recipient_domain_counts_under(stored, key):
    assert destinations.counting_domain(stored) == key
    assert destinations.counting_key(destinations.BUILTIN_DEFAULT, stored) == key
