from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routes import domains, matching
from routes.domains import HostSpec
from routes.matching import RouteEntry, RouteTable


def entry(route_id: int, domain: str) -> RouteEntry:
    return RouteEntry(id=route_id, domain=domain, hosts=(HostSpec(f"mx{route_id}.relay.test"),))


TABLE = RouteTable(
    [
        entry(1, "example.com"),
        entry(2, ".example.com"),
        entry(3, ".sub.example.com"),
        entry(4, "host1.sub.example.com"),
        entry(5, "xn--bcher-kva.example"),
        entry(6, ".xn--mnchen-3ya.de"),
        entry(7, "localhost"),
        entry(8, "ALL"),
    ],
    version=42,
)


@pytest.mark.parametrize(
    ("recipient", "route_id"),
    [
        ("example.com", 1),  # exact beats the partial .example.com
        ("user@example.com", 1),
        ("user@EXAMPLE.Com", 1),
        ("user@example.com.", 1),  # trailing dot
        ("a.example.com", 2),  # partial: a subdomain
        ("x.y.example.com", 2),  # partial: any depth
        ("sub.example.com", 2),  # .sub.example.com is for strict subdomains only
        ("a.sub.example.com", 3),  # the longer partial beats the shorter
        ("x.y.sub.example.com", 3),
        ("host1.sub.example.com", 4),  # exact beats both partials
        ("a.host1.sub.example.com", 3),  # an exact entry does not cover subdomains
        ("notexample.com", 8),  # suffix match is on label boundaries only
        ("example.com.au", 8),
        ("com", 8),
        ("user@bücher.example", 5),  # IDN in Unicode
        ("user@BÜCHER.example", 5),
        ("user@xn--bcher-kva.example", 5),  # and in punycode
        ("user@XN--BCHER-KVA.EXAMPLE", 5),
        ("user@mail.münchen.de", 6),
        ("user@mail.xn--mnchen-3ya.de", 6),
        ("münchen.de", 8),  # partial, not the bare domain
        ('"a@b"@example.com', 1),  # the domain follows the last @
        ('"a@evil.test"@x.example.com', 2),
        ("<user@example.com>", 1),
        ("postmaster@localhost", 7),
        ("user@[192.0.2.1]", 8),  # address literal: no named route, the default
        ("user@[IPv6:2001:db8::1]", 8),
        ("user@a..example.com", 8),  # not a name: must not fall through to .example.com
        ("user@", 8),
        ("user@bad_name.example.com", 2),  # ASCII names are not validated, only matched
    ],
)
def test_most_specific_route_wins(recipient, route_id):
    found = TABLE.lookup(recipient)
    assert found is not None
    assert found.id == route_id


def test_no_route_and_no_default_means_mx():
    table = RouteTable([entry(1, "example.com"), entry(2, ".example.net")])
    assert table.lookup("user@example.org") is None
    assert table.lookup("user@example.net") is None
    assert table.lookup("user@[192.0.2.1]") is None
    assert table.default is None


def test_table_indexes_and_counts_its_entries():
    assert len(TABLE) == 8
    assert TABLE.version == 42
    assert set(TABLE.exact) == {"example.com", "host1.sub.example.com", "xn--bcher-kva.example", "localhost"}
    assert set(TABLE.partial) == {"example.com", "sub.example.com", "xn--mnchen-3ya.de"}
    assert TABLE.default is not None
    assert TABLE.default.id == 8
    assert len(RouteTable([])) == 0


def test_a_domain_twice_is_refused():
    with pytest.raises(ValueError, match="appears twice"):
        RouteTable([entry(1, ".example.com"), entry(2, ".example.com")])
    with pytest.raises(ValueError, match="two default routes"):
        RouteTable([entry(1, "ALL"), entry(2, "ALL")])


def test_exact_and_partial_of_the_same_name_coexist():
    table = RouteTable([entry(1, "example.com"), entry(2, ".example.com")])
    assert len(table) == 2


def test_route_entry_defaults():
    route = entry(1, "example.com")
    assert (route.special, route.tls, route.defer_on_4xx) == ("", "opportunistic", False)
    assert route.auth_profile_id is None
    assert route.bounce_profile_id is None


# Properties -----------------------------------------------------------------------------------------------------

# A small alphabet so generated routes and recipients overlap often.
labels = st.sampled_from(["a", "b", "mx", "example", "com", "xn--bcher-kva"])
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
route_domains = st.one_of(names, names.map(lambda name: "." + name), st.just("ALL"))
route_sets = st.lists(route_domains, unique=True, max_size=12)


def reference_lookup(route_list: list[str], domain: str) -> str | None:
    """Brute force straight from the rules: score every matching entry, keep the most specific."""
    best: tuple[int, int] | None = None
    winner = None
    for candidate in route_list:
        if candidate == "ALL":
            score = (0, 0)
        elif candidate.startswith("."):
            if not domain.endswith(candidate):
                continue
            score = (1, len(candidate))
        elif candidate == domain:
            score = (2, 0)
        else:
            continue
        if best is None or score > best:
            best, winner = score, candidate
    return winner


def table_of(route_list: list[str]) -> RouteTable:
    return RouteTable(entry(i, domain) for i, domain in enumerate(route_list))


@given(route_sets, names)
def test_lookup_agrees_with_brute_force(route_list, domain):
    found = table_of(route_list).lookup(f"someone@{domain}")
    expected = reference_lookup(route_list, domain)
    assert (found.domain if found else None) == expected


@given(route_sets, st.lists(names, max_size=8), st.randoms(use_true_random=False))
def test_order_of_entry_never_matters(route_list, recipients, rnd: random.Random):
    shuffled = list(route_list)
    rnd.shuffle(shuffled)
    first, second = table_of(route_list), table_of(shuffled)
    for domain in recipients:
        a, b = first.lookup(domain), second.lookup(domain)
        assert (a.domain if a else None) == (b.domain if b else None)


@given(names)
def test_case_and_trailing_dot_do_not_matter(domain):
    table = table_of([domain, "." + domain])
    found = table.lookup(f"User@{domain.upper()}.")
    assert found is not None
    assert found.domain == domain


@given(names)
def test_stored_and_recipient_forms_agree(domain):
    """What the admin types (normalize) and what a recipient carries (lookup) reach the same key."""
    assert matching.recipient_domain(domain) == domains.normalize_receiving_domain(domain)


# ---------------------------------------------------------------------------------------------------------------
# Routes by sender


def sender_entry(route_id: int, domain: str, sender: str = "") -> RouteEntry:
    return RouteEntry(id=route_id, domain=domain, hosts=(HostSpec(f"mx{route_id}.relay.test"),), sender=sender)


SENDER_TABLE = RouteTable(
    [
        sender_entry(1, "example.com"),
        sender_entry(2, "ALL"),
        sender_entry(10, "example.com", "alerts@app.example"),
        sender_entry(11, "example.com", "app.example"),
        sender_entry(12, ".example.com", "app.example"),
        sender_entry(13, "example.com", ".app.example"),
        sender_entry(14, "example.com", ".example"),
        sender_entry(15, "ALL", ".mail.app.example"),
        sender_entry(16, "example.com", "<>"),
        sender_entry(17, "other.test", "alerts@app.example"),
    ]
)


@pytest.mark.parametrize(
    ("recipient", "sender", "route_id"),
    [
        ("user@example.com", None, 1),  # no sender given: the plain routes only
        ("user@example.com", "bob@elsewhere.test", 1),  # no pattern matches: the plain routes decide
        ("user@example.com", "alerts@app.example", 10),  # the address beats the domain
        ("user@example.com", "ALERTS@App.Example", 10),  # senders compare without case
        ("user@example.com", "<alerts@app.example>", 10),
        ("user@example.com", "bob@app.example", 11),  # the domain beats the partials
        ("a.example.com", "bob@app.example", 12),  # within a pattern: the longest receiving-domain match
        ("user@example.com", "bob@x.app.example", 13),  # the longer partial beats the shorter .example
        ("user@example.com", "bob@y.example", 14),
        ("user@example.com", "bob@app.example.org", 1),  # .example is a label suffix, not a text suffix
        ("user@example.com", "bob@z.mail.app.example", 15),  # .mail.app.example's ALL beats .app.example's domain
        ("user@example.com", "", 16),  # the null sender
        ("user@example.com", "<>", 16),
        ("a.example.com", "", 2),  # <> has no route for a.example.com: the plain routes decide
        ("user@other.test", "alerts@app.example", 17),
        ("user@other.test", "bob@app.example", 2),  # app.example has no route there, nor ALL: plain ALL
        ("user@[192.0.2.1]", "alerts@app.example", 2),  # an address literal: the patterns' ALL, else plain ALL
        ("user@[192.0.2.1]", "bob@z.mail.app.example", 15),
    ],
)
def test_sender_routes_are_tried_most_specific_pattern_first(recipient: str, sender: str | None, route_id: int) -> None:
    found = SENDER_TABLE.lookup(recipient, sender)
    assert found is not None
    assert found.id == route_id


def test_a_table_without_sender_routes_ignores_the_sender() -> None:
    assert not TABLE.by_sender
    assert TABLE.lookup("user@example.com", "alerts@app.example") is TABLE.lookup("user@example.com")


def test_sender_routes_are_counted_and_listed() -> None:
    assert len(SENDER_TABLE) == 10
    assert sorted(e.id for e in SENDER_TABLE.entries()) == [1, 2, 10, 11, 12, 13, 14, 15, 16, 17]


def test_one_domain_twice_for_one_sender_is_refused() -> None:
    with pytest.raises(ValueError, match=r"for the sender app\.example"):
        RouteTable([sender_entry(1, "example.com", "app.example"), sender_entry(2, "example.com", "app.example")])


@pytest.mark.parametrize(
    ("sender", "patterns"),
    [
        ("alerts@mail.app.example", ["alerts@mail.app.example", "mail.app.example", ".app.example", ".example"]),
        ("", ["<>"]),
        ("<>", ["<>"]),
        ("Bob@Bücher.Example", ["bob@xn--bcher-kva.example", "xn--bcher-kva.example", ".example"]),
        ("root@localhost", ["root@localhost", "localhost"]),
    ],
)
def test_sender_patterns_most_specific_first(sender: str, patterns: list[str]) -> None:
    assert matching.sender_patterns(sender) == patterns


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("", ""),
        ("  ", ""),
        ("<>", "<>"),
        ("< >", "<>"),
        ("Alerts@App.Example", "alerts@app.example"),
        ("app.example.", "app.example"),
        (".App.Example", ".app.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ('"odd@x"@app.example', '"odd@x"@app.example'),
    ],
)
def test_sender_patterns_are_stored_normalised(typed: str, stored: str) -> None:
    assert matching.normalize_sender_pattern(typed) == stored


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("ALL", "ALL is not a sender pattern"),
        ("@app.example", "nothing before the @"),
        ("alerts@", "has no domain"),
        (".", "has no domain"),
        ("a b@app.example", "is not a sender pattern"),
        ("<alerts@app.example>", "is not a sender pattern"),
        ("alerts@192.0.2.1", "IP address"),
        ("app_x.example", 'contains "_"'),
        (".alerts@app.example", "cannot start with a dot"),
    ],
)
def test_bad_sender_patterns_say_why(typed: str, message: str) -> None:
    with pytest.raises(matching.SenderPatternError, match=message):
        matching.normalize_sender_pattern(typed)
