from __future__ import annotations

import pytest

from routes import domains
from routes.domains import HostSpec, Special


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("example.com", "example.com"),
        ("  Example.COM  ", "example.com"),
        ("example.com.", "example.com"),
        (".example.com", ".example.com"),
        (".Sub.Example.com.", ".sub.example.com"),
        ("ALL", "ALL"),
        ("all", "ALL"),
        (" All ", "ALL"),
        ("localhost", "localhost"),
        (".com", ".com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        (".bücher.example", ".xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("bücher。example", "xn--bcher-kva.example"),  # ideographic full stop is a dot in IDNA
        ("a-b.example", "a-b.example"),
        ("1and1.com", "1and1.com"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_receiving_domain_is_stored_lower_case_idna(text, stored):
    assert domains.normalize_receiving_domain(text) == stored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("exa mple.com", '"exa mple.com" is not a valid domain: label "exa mple" contains a space'),
        ("ex_ample.com", 'label "ex_ample" contains "_" (only letters, digits and hyphens are allowed)'),
        ("-a.example.com", 'label "-a" starts with a hyphen'),
        ("a-.example.com", 'label "a-" ends with a hyphen'),
        ("a..example.com", "empty label"),
        ("..example.com", "empty label"),
        ("example.com..", "empty label"),
        ("", "it is empty"),
        ("   ", "it is empty"),
        (".", "it is empty"),
        ("a" * 64 + ".com", "is 64 characters long (the limit is 63)"),
        (".".join(["a" * 60] * 5), "characters long (the limit is 253)"),
        ("10.0.0.1", '"10.0.0.1" is an IP address; a receiving domain must be a domain name'),
        ("[10.0.0.1]", "is an IP address"),
        ("2001:db8::1", "is an IP address"),
        ("10.0.0.300", 'the last label "300" is all digits'),
        ("xn--zzzz.example", 'label "xn--zzzz" is not valid punycode'),
        ("exa\tmple.com", "control character"),
        ("user@example.com", 'contains "@"'),
    ],
)
def test_invalid_receiving_domain_says_why(text, message):
    with pytest.raises(domains.DomainError) as excinfo:
        domains.normalize_receiving_domain(text)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("xn--bcher-kva.example", "bücher.example"),
        (".xn--bcher-kva.example", ".bücher.example"),
        ("ALL", "ALL"),
        ("example.com", "example.com"),
        ("xn--zzzz.example", "xn--zzzz.example"),  # undecodable: shown as stored, never an exception
    ],
)
def test_display_domain_shows_unicode(stored, shown):
    assert domains.display_domain(stored) == shown


def test_display_domain_round_trips_with_normalize():
    for text in ["bücher.example", ".münchen.de", "例え.テスト"]:
        assert domains.display_domain(domains.normalize_receiving_domain(text)) == text


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("mx1.example.com", [HostSpec("mx1.example.com")]),
        ("MX1.Example.COM.", [HostSpec("mx1.example.com")]),
        ("mx1.example.com:2525", [HostSpec("mx1.example.com", port=2525)]),
        ("mx1.example.com/pri=10", [HostSpec("mx1.example.com", priority=10)]),
        ("mx1.example.com:2525/pri=10", [HostSpec("mx1.example.com", 2525, 10)]),
        ("mx1.example.com/PRI = 7", [HostSpec("mx1.example.com", priority=7)]),
        ("[mail.example.com]", [HostSpec("mail.example.com", a_only=True)]),
        ("[mail.example.com]:2525/pri=10", [HostSpec("mail.example.com", 2525, 10, a_only=True)]),
        ("10.0.0.9", [HostSpec("10.0.0.9")]),
        ("[10.0.0.9]/pri=20", [HostSpec("10.0.0.9", priority=20)]),  # brackets around an IP are dropped
        ("10.0.0.9:2525", [HostSpec("10.0.0.9", port=2525)]),
        ("2001:db8::1", [HostSpec("2001:db8::1")]),
        ("2001:0DB8:0:0::1/pri=5", [HostSpec("2001:db8::1", priority=5)]),
        ("[2001:db8::1]:2525", [HostSpec("2001:db8::1", port=2525)]),
        ("[2001:db8::1]", [HostSpec("2001:db8::1")]),
        ("2620:101:2004:4202::", [HostSpec("2620:101:2004:4202::")]),
        ("bücher.example", [HostSpec("xn--bcher-kva.example")]),
        ("relay", [HostSpec("relay")]),
        (
            "mx1.example.com/pri=10, mx2.example.com:2525/pri=10 ,[10.0.0.9]/pri=20",
            [
                HostSpec("mx1.example.com", priority=10),
                HostSpec("mx2.example.com", 2525, 10),
                HostSpec("10.0.0.9", priority=20),
            ],
        ),
        ("a.example,b.example", [HostSpec("a.example"), HostSpec("b.example")]),
        # /weight=N (1-100, default 1): the host's share of its priority's connections, with /pri= in any order
        ("mx1.example.com/pri=10/weight=3", [HostSpec("mx1.example.com", priority=10, weight=3)]),
        ("mx1.example.com/weight=3/pri=10", [HostSpec("mx1.example.com", priority=10, weight=3)]),
        ("[10.0.0.9]:2525/WEIGHT = 100", [HostSpec("10.0.0.9", 2525, weight=100)]),
        ("2001:db8::1/weight=7", [HostSpec("2001:db8::1", weight=7)]),
        ("mx1.example.com/weight=1", [HostSpec("mx1.example.com")]),
    ],
)
def test_parse_hosts_accepts_the_cli_syntax(text, hosts):
    assert domains.parse_hosts(text) == hosts


@pytest.mark.parametrize(
    ("text", "special"),
    [("USEDNS", Special.USEDNS), (" usedns ", Special.USEDNS), ("/dev/null", Special.DEVNULL)],
)
def test_special_destinations(text, special):
    assert domains.parse_hosts(text) is special


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ("mx1.example.com:99999", ['"mx1.example.com:99999": port must be from 1 to 65535']),
        ("mx1.example.com:0", ['"mx1.example.com:0": port must be from 1 to 65535']),
        ("mx1.example.com:", ['"mx1.example.com:": port is missing']),
        ("mx1.example.com:smtp", ['"mx1.example.com:smtp": port "smtp" is not a whole number']),
        ("mx1.example.com:-1", ['"mx1.example.com:-1": port must be from 1 to 65535']),
        ("mx1.example.com/pri=65536", ['"mx1.example.com/pri=65536": priority must be from 0 to 65535']),
        ("mx1.example.com/pri=", ['"mx1.example.com/pri=": priority is missing']),
        (
            "mx1.example.com/prio=5",
            ['"mx1.example.com/prio=5": unknown option "/prio=5" (the options are /pri=N and /weight=N)'],
        ),
        ("mx1.example.com/weight=0", ['"mx1.example.com/weight=0": weight must be from 1 to 100']),
        ("mx1.example.com/weight=101", ['"mx1.example.com/weight=101": weight must be from 1 to 100']),
        ("mx1.example.com/weight=", ['"mx1.example.com/weight=": weight is missing']),
        ("mx1.example.com/weight=2.5", ['"mx1.example.com/weight=2.5": weight "2.5" is not a whole number']),
        ("mx1.example.com/pri=1/pri=2", ['"mx1.example.com/pri=1/pri=2": /pri= is given twice']),
        ("mx1.example.com/weight=1/Weight=2", ['"mx1.example.com/weight=1/Weight=2": /weight= is given twice']),
        (
            "mx1.example.com/pri=1/",
            ['"mx1.example.com/pri=1/": unknown option "/" (the options are /pri=N and /weight=N)'],
        ),
        ("[mx1.example.com", ['"[mx1.example.com": "[" without a closing "]"']),
        ("[mx1.example.com]2525", ['"[mx1.example.com]2525": unexpected "2525" after "]" (expected ":port")']),
        ("10.0.0.256", ['"10.0.0.256": neither a valid IPv4 address nor a host name']),
        ("2001:db8::g", ['"2001:db8::g": "2001:db8::g" is not a valid IPv6 address']),
        ("fe80::1%eth0", ['"fe80::1%eth0": an IPv6 zone index (%...) is not allowed']),
        ("0.0.0.0", ['"0.0.0.0": 0.0.0.0 is the unspecified address, not a host']),
        ("224.0.0.1", ['"224.0.0.1": 224.0.0.1 is a multicast address']),
        (
            "mx_1.example.com",
            [
                '"mx_1.example.com": not a valid host name: label "mx_1" contains "_" '
                "(only letters, digits and hyphens are allowed)"
            ],
        ),
        ("", ["no destination hosts given"]),
        ("a.example, , b.example", ["entry 2 of the list is empty (two commas in a row?)"]),
        ("USEDNS, mx1.example.com", ["USEDNS must be the only destination of a route, not one of several"]),
        ("/dev/null, usedns", ["/dev/null and USEDNS must be the only destination of a route, not one of several"]),
        (
            "ok.example, bad host:1, mx:70000/pri=x",
            [
                '"bad host:1": not a valid host name: label "bad host" contains a space',
                '"mx:70000/pri=x": priority "x" is not a whole number',
            ],
        ),
    ],
)
def test_parse_hosts_lists_every_problem_naming_the_host(text, errors):
    with pytest.raises(domains.HostListError) as excinfo:
        domains.parse_hosts(text)
    assert excinfo.value.errors == errors
    assert isinstance(excinfo.value, ValueError)


def test_parse_host_rejects_a_special_as_one_host():
    with pytest.raises(domains.HostListError, match="must be the whole destination list"):
        domains.parse_host("USEDNS")


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (HostSpec("mx.example.com"), "mx.example.com"),
        (HostSpec("mx.example.com", 2525), "mx.example.com:2525"),
        (HostSpec("mx.example.com", priority=10), "mx.example.com/pri=10"),
        (HostSpec("mx.example.com", 587, 10, a_only=True), "[mx.example.com]:587/pri=10"),
        (HostSpec("10.0.0.9", priority=20), "10.0.0.9/pri=20"),
        (HostSpec("10.0.0.9", 2525), "10.0.0.9:2525"),
        (HostSpec("2001:db8::1", priority=5), "2001:db8::1/pri=5"),
        (HostSpec("2001:db8::1", 2525), "[2001:db8::1]:2525"),
        (HostSpec("mx.example.com", priority=10, weight=3), "mx.example.com/pri=10/weight=3"),
        (HostSpec("10.0.0.9", 2525, weight=100), "10.0.0.9:2525/weight=100"),
    ],
)
def test_host_format_is_canonical_and_parses_back(spec, text):
    assert spec.format() == text
    assert domains.parse_hosts(text) == [spec]


@pytest.mark.parametrize(
    ("text", "weight"), [("", 1), (" 3 ", 3), ("100", 100), ("0", "Weight must be from 1 to 100"), ("x", "not a whole")]
)
def test_parse_weight_for_its_own_field(text, weight):
    if isinstance(weight, int):
        assert domains.parse_weight(text) == weight
    else:
        with pytest.raises(ValueError, match=weight.lower()):
            domains.parse_weight(text)


def test_validate_route_checks_a_weight_built_field_by_field():
    problems = domains.validate_route("example.com", [HostSpec("mx.example.com", weight=0)])
    assert problems == ['"mx.example.com/weight=0": weight must be from 1 to 100']


def test_special_codes_match_the_model_choices():
    assert [s.code for s in Special] == ["usedns", "devnull"]
    assert Special.from_code("usedns") is Special.USEDNS
    assert Special.from_code("devnull") is Special.DEVNULL
    assert Special.from_code("") is None


def test_a_valid_route_has_no_errors():
    hosts = domains.parse_hosts("mx1.example.com/pri=10, mx2.example.com:2525/pri=10, [10.0.0.9]/pri=20")
    assert domains.validate_route("example.com", hosts) == []
    assert domains.validate_route("ALL", [HostSpec("smarthost.example.net", 587)]) == []
    assert domains.validate_route(".example.com", Special.USEDNS) == []
    assert domains.validate_route("ALL", Special.DEVNULL) == []


@pytest.mark.parametrize(
    ("domain", "hosts", "errors"),
    [
        (
            "ALL",
            Special.USEDNS,
            [
                "USEDNS cannot be the destination of the default route (ALL): "
                "mail for domains without a route is already delivered by MX records"
            ],
        ),
        ("example.com", [], ["a route needs at least one destination host"]),
        ("example.com", [HostSpec("mx"), HostSpec("mx")], ['"mx:25" is listed more than once']),
        (
            "example.com",
            [HostSpec("mx", 2525), HostSpec("mx", 2525, priority=9)],
            ['"mx:2525" is listed more than once'],
        ),
        (
            "example.com",
            [HostSpec("mx"), HostSpec("mx", 2525)],
            [f"The host mx is already using the standard port. {domains.ONE_PORT_PER_HOST}"],
        ),
        (
            "example.com",
            [HostSpec("mx", 2525), HostSpec("mx", 26)],
            [f"The host mx already has an alternate port (2525). {domains.ONE_PORT_PER_HOST}"],
        ),
        ("example.com", [HostSpec("mx"), HostSpec("mx", a_only=True)], ['"mx:25" is listed more than once']),
        ("example.com", [HostSpec("mx", port=0)], ['"mx:0": port must be from 1 to 65535']),
        ("example.com", [HostSpec("mx", port=65536)], ['"mx:65536": port must be from 1 to 65535']),
        ("example.com", [HostSpec("mx", priority=-1)], ['"mx/pri=-1": priority must be from 0 to 65535']),
        ("example.com", [HostSpec("mx", priority=65536)], ['"mx/pri=65536": priority must be from 0 to 65535']),
        ("example.com", [HostSpec("MX.example.com")], ['"MX.example.com": write the host as "mx.example.com"']),
        (
            "example.com",
            [HostSpec("bad host")],
            ['"bad host": not a valid host name: label "bad host" contains a space'],
        ),
        (
            "example.com",
            [HostSpec("10.0.0.9", a_only=True)],
            ['"10.0.0.9": brackets apply to host names only (an IP address is not looked up)'],
        ),
        (
            "example.com",
            [HostSpec("mx"), HostSpec("usedns")],
            ['"usedns": USEDNS and /dev/null must be a route\'s only destination, not a host'],
        ),
        ("exa mple.com", [HostSpec("mx")], ['"exa mple.com" is not a valid domain: label "exa mple" contains a space']),
    ],
)
def test_validate_route_names_each_problem(domain, hosts, errors):
    found = domains.validate_route(domain, hosts)
    assert len(found) == len(errors)
    for message, expected in zip(found, errors, strict=True):
        assert expected in message


def test_a_route_holds_at_most_100_hosts():
    hosts = [HostSpec(f"mx{i}.example.com") for i in range(domains.MAX_HOSTS_PER_ROUTE)]
    assert domains.validate_route("example.com", hosts) == []
    errors = domains.validate_route("example.com", [*hosts, HostSpec("one-more.example.com")])
    assert errors == ["a route may not contain more than 100 destination hosts (this one has 101)"]
