from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routes import domains, importexport
from routes.domains import HostSpec, Special
from routes.importexport import Row

NOW = datetime(2024, 1, 2, 10, 15, tzinfo=UTC)

SAMPLE = """\
# File exported by the GUI at 20240102T101500
# receiving-domain   destination-hosts (comma separated, host[:port][/pri=N])
example.com       mx1.example.com/pri=10, mx2.example.com:2525/pri=10, [10.0.0.9]/pri=20
.example.com      USEDNS

drop.example.com  /dev/null
lab.example.net\t[relay.example.net]:587/pri=0
ALL               smarthost.example.net:587
"""


def test_parse_reads_every_route_with_its_line():
    result = importexport.parse(SAMPLE)
    assert result.errors == []
    assert result.ok
    assert result.rows == [
        Row(
            3,
            "example.com",
            (
                HostSpec("mx1.example.com", priority=10),
                HostSpec("mx2.example.com", 2525, 10),
                HostSpec("10.0.0.9", priority=20),
            ),
        ),
        Row(4, ".example.com", Special.USEDNS),
        Row(6, "drop.example.com", Special.DEVNULL),
        Row(7, "lab.example.net", (HostSpec("relay.example.net", 587, a_only=True),)),
        Row(8, "ALL", (HostSpec("smarthost.example.net", 587),)),
    ]


def test_parse_normalises_domains_and_line_endings():
    result = importexport.parse("\ufeffBücher.Example.  mx.bücher.example\r\nall relay\r\n")
    assert result.errors == []
    assert result.routes() == {
        "xn--bcher-kva.example": (HostSpec("mx.xn--bcher-kva.example"),),
        "ALL": (HostSpec("relay"),),
    }


def test_a_bad_file_lists_every_error_by_line():
    text = "\n".join(
        [
            "# header",
            "exa_mple.com  mx1.example.com",  # 2
            "example.com   mx1.example.com:99999, bad host",  # 3
            "example.org",  # 4
            "ALL           USEDNS",  # 5
            "a.example     mx, mx:2525",  # 6
            "Example.COM   mx1.example.com",  # 7: duplicate of line 3 (which had errors itself)
            "all           /dev/null",  # 8: a second default route
            "b.example     USEDNS, mx",  # 9
            "good.example  mx.good.example",
        ]
    )
    result = importexport.parse(text)
    assert result.errors == [
        'line 2: "exa_mple.com" is not a valid domain: label "exa_mple" contains "_" '
        "(only letters, digits and hyphens are allowed)",
        'line 3: "mx1.example.com:99999": port must be from 1 to 65535',
        'line 3: "bad host": not a valid host name: label "bad host" contains a space',
        'line 4: "example.org" has no destination hosts',
        "line 5: USEDNS cannot be the destination of the default route (ALL): "
        "mail for domains without a route is already delivered by MX records",
        f"line 6: The host mx is already using the standard port. {domains.ONE_PORT_PER_HOST}",
        'line 7: "Example.COM" is already routed on line 3',
        "line 8: there is already a default route (ALL) on line 5",
        "line 9: USEDNS must be the only destination of a route, not one of several",
    ]
    assert not result.ok
    assert [row.domain for row in result.rows] == ["good.example"]


def test_an_overlong_line_is_an_error_not_a_hang():
    result = importexport.parse("ok.example mx\nx.example " + "a" * 20_000 + "\n")
    assert result.errors == ["line 2: the line is 20,010 characters long (the limit is 20,000)"]


def test_parse_bytes_accepts_utf8_with_or_without_bom():
    data = "bücher.example mx.example\n".encode()
    assert importexport.parse_bytes(data).routes() == {"xn--bcher-kva.example": (HostSpec("mx.example"),)}
    assert importexport.parse_bytes(b"\xef\xbb\xbf" + data).ok


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            b"example.com mx\n\x7fELF\x00\x01",
            "line 2: NUL byte at byte offset 19: this looks like a binary file, not a routes text file",
        ),
        (
            b"example.com mx\nm\xfcnchen.de mx\n",
            "line 2: invalid UTF-8 at byte offset 16: save the file as UTF-8 text",
        ),
        (b"x" * 101, "the file is 101 bytes; the limit is 100 bytes (split it or remove comments)"),
    ],
)
def test_parse_bytes_refuses_junk_with_one_clear_error(data, error):
    assert importexport.parse_bytes(data, max_bytes=100).errors == [error]


def test_parse_bytes_default_limit_is_five_megabytes():
    line = b"#" * 99 + b"\n"
    assert importexport.parse_bytes(line * 50_000).ok
    assert importexport.parse_bytes(line * 50_000 + b"\n").errors == [
        "the file is 5,000,001 bytes; the limit is 5,000,000 bytes (split it or remove comments)"
    ]


def test_diff_shows_added_changed_and_removed():
    current: dict[str, domains.Destination] = {
        "example.com": [HostSpec("mx1"), HostSpec("mx2")],
        "keep.example": Special.DEVNULL,
        "gone.example": [HostSpec("mx")],
        "ALL": [HostSpec("relay")],
    }
    incoming: dict[str, domains.Destination] = {
        "example.com": (HostSpec("mx2"), HostSpec("mx1")),  # reordered: a change
        "keep.example": Special.DEVNULL,
        "ALL": (HostSpec("relay", 587),),
        ".example.com": Special.USEDNS,
    }
    result = importexport.diff(current, incoming)
    assert result == importexport.Diff(
        added=(".example.com",), changed=("example.com", "ALL"), removed=("gone.example",), unchanged=1
    )
    assert not result.is_empty
    assert importexport.diff(incoming, incoming).is_empty


def test_export_is_sorted_aligned_and_puts_all_last():
    rows: list[tuple[str, domains.Destination]] = [
        ("ALL", [HostSpec("smarthost.example.net", 587)]),
        ("example.net", [HostSpec("relay.example.net", a_only=True)]),
        ("drop.example.com", Special.DEVNULL),
        (".example.com", Special.USEDNS),
        ("example.com", [HostSpec("mx1.example.com", priority=10), HostSpec("2001:db8::1", 2525, 20)]),
    ]
    assert importexport.format_table(rows, now=NOW) == (
        "# File exported by esaroutes at 20240102T101500\n"
        "# receiving-domain   destination-hosts (comma separated, host[:port][/pri=N][/weight=N])\n"
        "# SMTP authentication profiles, bounce profiles and TLS settings are not part of this file.\n"
        "example.com       mx1.example.com/pri=10, [2001:db8::1]:2525/pri=20\n"
        ".example.com      USEDNS\n"
        "drop.example.com  /dev/null\n"
        "example.net       [relay.example.net]\n"
        "ALL               smarthost.example.net:587\n"
    )


def test_export_of_nothing_is_just_the_header():
    assert importexport.format_table([], now=NOW).count("\n") == 3
    assert importexport.parse(importexport.format_table([], now=NOW)).rows == []


def test_export_refuses_a_domain_twice():
    with pytest.raises(ValueError, match="appears twice"):
        importexport.format_table([("a.example", Special.DEVNULL), ("a.example", Special.DEVNULL)], now=NOW)


def test_sample_round_trips():
    parsed = importexport.parse(SAMPLE).routes()
    again = importexport.parse(importexport.format_table(parsed.items(), now=NOW))
    assert again.errors == []
    assert again.routes() == parsed


def test_weights_round_trip_and_a_plain_esa_file_stays_plain():
    plain = "example.com  mx1.example.com/pri=10, mx2.example.com/pri=10\n"
    routes = importexport.parse(plain).routes()
    assert [h.weight for h in routes["example.com"]] == [1, 1]
    assert importexport.format_table(routes.items(), now=NOW).splitlines()[-1] == plain.strip()
    weighted = importexport.parse("example.com  mx1.example.com/weight=3/pri=10, mx2.example.com/pri=10\n")
    exported = importexport.format_table(weighted.routes().items(), now=NOW)
    assert exported.splitlines()[-1] == "example.com  mx1.example.com/pri=10/weight=3, mx2.example.com/pri=10"
    assert importexport.diff(routes, weighted.routes()).changed == ("example.com",)
    before, after = routes["example.com"][0], weighted.routes()["example.com"][0]
    assert importexport.destination_changes([before], [after]) == [
        importexport.HostChange(
            "changed", "mx1.example.com", "mx1.example.com:25/pri=10", "mx1.example.com:25/pri=10/weight=3"
        )
    ]


# Round-trip property --------------------------------------------------------------------------------------------

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(lambda s: not s.isdigit())
unicode_label = st.sampled_from(["bücher", "münchen", "例え", "ÄÖÜ"])
name = st.lists(st.one_of(label, unicode_label), min_size=1, max_size=4).map(
    lambda parts: domains.normalize_receiving_domain(".".join(parts))
)
named_host = st.builds(
    HostSpec,
    host=name,
    port=st.integers(1, 65535),
    priority=st.integers(0, 65535),
    a_only=st.booleans(),
    weight=st.integers(1, 100),
)
ip_host = st.builds(
    HostSpec,
    host=st.ip_addresses()
    .filter(lambda ip: not (ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255"))
    .map(lambda ip: ip.compressed),
    port=st.integers(1, 65535),
    priority=st.integers(0, 65535),
    weight=st.integers(1, 100),
)
host_lists = st.lists(st.one_of(named_host, ip_host), min_size=1, max_size=6, unique_by=lambda h: h.host).map(tuple)
receiving = st.one_of(name, name.map(lambda n: "." + n), st.just("ALL"))


@st.composite
def route_tables(draw):
    table = {}
    for domain in draw(st.lists(receiving, unique=True, max_size=8)):
        choices = [host_lists, st.just(Special.DEVNULL)]
        if domain != "ALL":
            choices.append(st.just(Special.USEDNS))
        table[domain] = draw(st.one_of(*choices))
    return table


@given(route_tables())
def test_export_then_import_gives_the_same_routes(table):
    for domain, destination in table.items():
        assert domains.validate_route(domain, destination) == []
    text = importexport.format_table(table.items(), now=NOW)
    result = importexport.parse(text)
    assert result.errors == []
    assert result.routes() == table
    assert [row.domain for row in result.rows] == sorted(table, key=importexport.export_order)
    assert importexport.diff(table, result.routes()).is_empty


def test_a_domain_longer_than_the_column_still_gets_two_spaces():
    long_domain = ".".join(["a" * 20] * 3)
    text = importexport.format_table([(long_domain, Special.DEVNULL), ("b.example", Special.DEVNULL)], now=NOW)
    assert f"{long_domain}  /dev/null\n" in text
    assert f"b.example{' ' * 33}/dev/null\n" in text
    assert importexport.parse(text).ok


def test_destination_changes_host_by_host():
    before = domains.parse_hosts("a.example, [b.example]:2525/pri=5, c.example, 2001:db8::1")
    after = domains.parse_hosts("c.example, a.example/pri=10, b.example:2525/pri=5, xn--bcher-kva.example")
    assert importexport.destination_changes(before, after) == [
        importexport.HostChange("changed", "a.example", "a.example:25/pri=0", "a.example:25/pri=10"),
        importexport.HostChange("changed", "b.example", "[b.example]:2525/pri=5", "b.example:2525/pri=5"),
        importexport.HostChange("added", "bücher.example", "", "bücher.example:25/pri=0"),
        importexport.HostChange("removed", "[2001:db8::1]", "[2001:db8::1]:25/pri=0", ""),
    ]
    assert isinstance(before, list)
    assert importexport.destination_changes(before, list(reversed(before))) == []
    assert importexport.destination_changes(None, Special.DEVNULL) == [
        importexport.HostChange("added", "/dev/null", "", "/dev/null")
    ]


@pytest.mark.parametrize(
    ("current", "incoming", "warning"),
    [
        (None, None, ""),
        ("mx.example", "mx.example", ""),
        (
            None,
            "mx.example",
            "The file adds the ALL route: all mail for domains without a route will go to mx.example:25/pri=0.",
        ),
        (
            "mx.example",
            "/dev/null",
            "The file changes the ALL route: all mail for domains without a route will be "
            "accepted and dropped (/dev/null).",
        ),
        (
            "mx.example",
            None,
            "The file removes the ALL route: mail for domains without a route will be delivered by their MX records.",
        ),
    ],
)
def test_default_route_warning_in_words(current, incoming, warning):
    parse = lambda text: None if text is None else domains.parse_hosts(text)  # noqa: E731
    assert importexport.default_route_warning(parse(current), parse(incoming)) == warning


SENDER_SAMPLE = """\
example.com                     mx1.example.com/pri=10
example.com sender=app.example  mx-app.example.com/pri=10
example.com\tSENDER=<>\tbounces.example.com
ALL sender=alerts@App.Example   [10.0.0.9]:2525
"""


def test_a_sender_option_after_the_domain_makes_a_sender_route():
    result = importexport.parse(SENDER_SAMPLE)
    assert result.errors == []
    assert [(row.domain, row.sender) for row in result.rows] == [
        ("example.com", ""),
        ("example.com", "app.example"),
        ("example.com", "<>"),
        ("ALL", "alerts@app.example"),
    ]
    assert list(result.routes()) == [
        "example.com",
        "example.com sender=app.example",
        "example.com sender=<>",
        "ALL sender=alerts@app.example",
    ]


def test_sender_routes_round_trip_and_plain_files_stay_plain():
    routes = importexport.parse(SENDER_SAMPLE).routes()
    text = importexport.format_table(routes.items(), now=NOW)
    assert "example.com  sender=app.example         mx-app.example.com/pri=10" in text
    assert "example.com                             mx1.example.com/pri=10" in text
    assert importexport.parse(text).routes() == routes
    plain = importexport.format_table(importexport.parse(SAMPLE).routes().items(), now=NOW)
    assert "sender" not in plain


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("example.com sender= mx1.example.com", "line 1: sender= needs a pattern"),
        ("example.com sender=@app.example mx1.example.com", "line 1: sender: "),
        ("example.com sender=ALL mx1.example.com", "line 1: sender: ALL is not a sender pattern"),
        ("example.com sender=app.example", 'line 1: "example.com" has no destination hosts'),
        (
            "example.com sender=app.example a.example\nexample.com sender=APP.example b.example",
            'line 2: "example.com" is already routed for the sender app.example on line 1',
        ),
    ],
)
def test_bad_sender_options_are_line_numbered_errors(line, message):
    result = importexport.parse(line)
    assert not result.ok
    assert any(error.startswith(message) for error in result.errors), result.errors


def test_one_domain_for_two_senders_is_not_a_duplicate():
    result = importexport.parse("example.com a.example\nexample.com sender=<> b.example\n")
    assert result.ok and len(result.rows) == 2
