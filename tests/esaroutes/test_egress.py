"""esaroutes.egress: which addresses an outgoing connection may go to (ESAROUTES_DELIVERY_ALLOWED_NETWORKS)."""

from __future__ import annotations

import pytest

from esaroutes import egress

LOOPBACK = egress.parse("127.0.0.0/8,::1/128")


@pytest.mark.parametrize(
    ("address", "networks", "expected"),
    [
        ("127.0.0.1", LOOPBACK, True),
        ("127.255.0.9", LOOPBACK, True),
        ("::1", LOOPBACK, True),
        ("192.168.1.10", LOOPBACK, False),
        ("10.0.0.1", LOOPBACK, False),
        ("2001:db8::1", LOOPBACK, False),
        ("::ffff:127.0.0.1", LOOPBACK, True),  # IPv4-mapped: checked as the IPv4 address it reaches
        ("::ffff:192.168.1.10", LOOPBACK, False),
        ("fe80::1%eth0", egress.parse("fe80::/10"), True),  # a zone id is ignored
        ("127.0.0.2", egress.parse("127.0.0.1/32"), False),
        ("127.0.0.1", egress.parse("127.0.0.1/32"), True),
        ("192.0.2.7", egress.EVERYWHERE, True),
        ("2001:db8::1", egress.EVERYWHERE, True),
        ("192.0.2.7", None, True),  # no restriction
        ("192.0.2.7", (), False),  # nothing allowed
        ("mx.example.test", LOOPBACK, False),  # a name is never checked: resolve it first
        ("", LOOPBACK, False),
    ],
)
def test_allowed_decides_by_the_resolved_address(address, networks, expected):
    assert egress.allowed(address, networks) is expected


def test_parse_reads_a_comma_separated_list_and_names_a_bad_item():
    assert [str(n) for n in egress.parse(" 10.0.0.0/8, ,::1/128 ")] == ["10.0.0.0/8", "::1/128"]
    assert [str(n) for n in egress.parse(["192.0.2.1"])] == ["192.0.2.1/32"]
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP network"):
        egress.parse("10.0.0.0/33")


def test_the_refusal_names_the_address_and_the_setting():
    assert egress.refusal("192.0.2.7") == "192.0.2.7 is outside ESAROUTES_DELIVERY_ALLOWED_NETWORKS: not connected"
