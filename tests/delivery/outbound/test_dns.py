"""delivery.outbound.dns against a real authoritative server on loopback (tests/support/dnsserver.py).

No other network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from delivery.engine import Host
from delivery.outbound import dns as mx_dns
from tests.support.dnsserver import DnsServer


def hosts(domain: str, **kwargs: int) -> list[tuple[str, int]]:
    return [(h.address, h.priority) for h in mx_dns.mx_hosts(domain, **kwargs)]


# --- MX answers -----------------------------------------------------------------------------------------------


def test_mx_hosts_come_sorted_by_preference(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("example.test", "MX", "30 mx3.example.test.")
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    assert mx_dns.mx_hosts("example.test") == [
        Host("mx1.example.test", 25, 10),
        Host("mx2.example.test", 25, 20),
        Host("mx3.example.test", 25, 30),
    ]


def test_equal_preferences_keep_both_hosts_in_name_order(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 b.example.test.")
    dns_server.add("example.test", "MX", "10 a.example.test.")
    dns_server.add("example.test", "MX", "5 first.example.test.")
    assert hosts("example.test") == [("first.example.test", 5), ("a.example.test", 10), ("b.example.test", 10)]


def test_an_exchange_listed_twice_keeps_its_best_preference(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "30 mx.example.test.")
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    assert hosts("example.test") == [("mx.example.test", 10)]


def test_the_port_is_given_to_every_host(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    assert {h.port for h in mx_dns.mx_hosts("example.test", port=2525)} == {2525}


def test_mx_names_are_not_resolved_to_addresses(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")  # mx1 has no A record at all
    assert hosts("example.test") == [("mx1.example.test", 10)]
    assert [q.type for q in dns_server.queries] == ["MX"]


@pytest.mark.parametrize("domain", ["example.test", "example.test.", "EXAMPLE.Test", " example.test "])
def test_trailing_dots_and_case_do_not_matter(dns_server: DnsServer, domain: str) -> None:
    dns_server.add("example.test", "MX", "10 MX1.Example.TEST.")
    assert hosts(domain) == [("mx1.example.test", 10)]


def test_a_large_answer_is_fetched_over_tcp(dns_server: DnsServer) -> None:
    for i in range(120):
        dns_server.add("big.test", "MX", f"{i} mx{i:03}.a-rather-long-mail-exchanger-name.big.test.")
    result = hosts("big.test")
    assert len(result) == 120
    assert result[0] == ("mx000.a-rather-long-mail-exchanger-name.big.test", 0)
    assert [q.transport for q in dns_server.queries] == ["udp", "tcp"]


# --- IDNA ------------------------------------------------------------------------------------------------------


def test_a_unicode_domain_is_asked_and_answered_as_its_a_label(dns_server: DnsServer) -> None:
    dns_server.add("xn--bcher-kva.test", "MX", "10 mx.xn--bcher-kva.test.")
    assert hosts("bücher.test") == [("mx.xn--bcher-kva.test", 10)]
    assert hosts("xn--bcher-kva.test") == [("mx.xn--bcher-kva.test", 10)]
    assert {q.name for q in dns_server.queries} == {"xn--bcher-kva.test"}


def test_an_implicit_mx_of_a_unicode_domain_is_its_a_label(dns_server: DnsServer) -> None:
    dns_server.add("xn--bcher-kva.test", "A", "127.0.0.1")
    assert mx_dns.mx_hosts("bücher.test") == [Host("xn--bcher-kva.test", 25, 0)]


# --- implicit MX (RFC 5321 §5.1) --------------------------------------------------------------------------------


def test_no_mx_but_an_a_record_makes_the_domain_its_own_mail_host(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "A", "127.0.0.1")
    assert mx_dns.mx_hosts("example.test", port=2525) == [Host("example.test", 2525, 0)]


def test_no_mx_but_an_aaaa_record_makes_the_domain_its_own_mail_host(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "AAAA", "::1")
    assert mx_dns.mx_hosts("example.test.") == [Host("example.test", 25, 0)]
    assert [q.type for q in dns_server.queries] == ["MX", "A", "AAAA"]


def test_no_mx_and_no_address_bounces(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "TXT", '"v=spf1 -all"')
    with pytest.raises(mx_dns.DnsHardFailure) as caught:
        mx_dns.mx_hosts("example.test")
    assert str(caught.value) == "5.1.2 Domain example.test has no MX, A or AAAA record"


def test_an_empty_non_terminal_has_no_mail_host(dns_server: DnsServer) -> None:
    dns_server.add("mx.sub.example.test", "A", "127.0.0.1")
    with pytest.raises(mx_dns.DnsHardFailure, match=r"^5\.1\.2 Domain sub\.example\.test has no MX"):
        mx_dns.mx_hosts("sub.example.test")


def test_a_servfail_on_the_address_query_is_temporary(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "TXT", '"x"')
    dns_server.servfail("example.test")  # every type, so MX already fails: temporary, never a bounce
    with pytest.raises(mx_dns.DnsTempFailure):
        mx_dns.mx_hosts("example.test")


# --- null MX (RFC 7505) ---------------------------------------------------------------------------------------


def test_a_null_mx_bounces_with_5_1_10(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "0 .")
    dns_server.add("example.test", "A", "127.0.0.1")  # the address does not make it a mail host
    with pytest.raises(mx_dns.DnsHardFailure) as caught:
        mx_dns.mx_hosts("example.test")
    assert str(caught.value) == "5.1.10 Recipient address has null MX: example.test accepts no mail"
    assert [q.type for q in dns_server.queries] == ["MX"]


def test_a_null_mx_next_to_real_ones_is_ignored(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "0 .")
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    assert hosts("example.test") == [("mx1.example.test", 10)]


# --- hard and temporary failures -------------------------------------------------------------------------------


def test_nxdomain_bounces_with_5_1_2(dns_server: DnsServer) -> None:
    with pytest.raises(mx_dns.DnsHardFailure) as caught:
        mx_dns.mx_hosts("nowhere.test")
    assert str(caught.value) == "5.1.2 Domain nowhere.test does not exist"


def test_a_forced_nxdomain_wins_over_records(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.nxdomain("example.test")
    with pytest.raises(mx_dns.DnsHardFailure, match=r"^5\.1\.2 "):
        mx_dns.mx_hosts("example.test")


def test_servfail_is_a_temporary_failure(dns_server: DnsServer) -> None:
    dns_server.servfail("example.test")
    with pytest.raises(mx_dns.DnsTempFailure) as caught:
        mx_dns.mx_hosts("example.test")
    assert str(caught.value) == "4.4.3 DNS temporary failure for example.test: SERVFAIL"


def test_refused_is_a_temporary_failure(dns_server: DnsServer) -> None:
    dns_server.refused("example.test")
    with pytest.raises(mx_dns.DnsTempFailure) as caught:
        mx_dns.mx_hosts("example.test")
    assert str(caught.value) == "4.4.3 DNS temporary failure for example.test: REFUSED"


def test_a_silent_server_is_a_temporary_failure_within_the_timeout(dns_server: DnsServer, settings) -> None:
    settings.ESAROUTES_DNS_TIMEOUT = 0.6
    dns_server.stall("example.test")
    started = time.monotonic()
    with pytest.raises(mx_dns.DnsTempFailure) as caught:
        mx_dns.mx_hosts("example.test")
    elapsed = time.monotonic() - started
    assert str(caught.value) == "4.4.3 DNS temporary failure for example.test: timeout (MX)"
    assert 0.5 <= elapsed < 1.5


def test_a_lost_datagram_is_retried_within_the_budget(dns_server: DnsServer, settings, monkeypatch) -> None:
    settings.ESAROUTES_DNS_TIMEOUT = 0.6
    monkeypatch.setattr(mx_dns, "ATTEMPT_TIMEOUT", 0.2)
    dns_server.stall("example.test")
    with pytest.raises(mx_dns.DnsTempFailure):
        mx_dns.mx_hosts("example.test")
    assert dns_server.count("example.test", "MX") >= 2


def test_a_silent_server_is_skipped_for_the_next_one(dns_server: DnsServer, settings, monkeypatch) -> None:
    monkeypatch.setattr(mx_dns, "ATTEMPT_TIMEOUT", 0.2)  # the time given to the dead one before the next
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
    settings.ESAROUTES_DNS_SERVERS = [dead, dns_server.address]
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    assert hosts("example.test") == [("mx1.example.test", 10)]


def test_no_server_at_all_answering_is_temporary(settings) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
    settings.ESAROUTES_DNS_SERVERS = [dead]
    settings.ESAROUTES_DNS_TIMEOUT = 0.5
    try:
        with pytest.raises(mx_dns.DnsTempFailure, match=r"^4\.4\.3 DNS temporary failure for example\.test: "):
            mx_dns.mx_hosts("example.test")
    finally:
        mx_dns.clear_cache()


@pytest.mark.parametrize("domain", ["", ".", "a..b.test", "x" * 64 + ".test", ("a" * 60 + ".") * 5 + "test"])
def test_a_name_that_cannot_be_a_domain_bounces_without_a_query(dns_server: DnsServer, domain: str) -> None:
    with pytest.raises(mx_dns.DnsHardFailure, match=r"^5\.1\.2 Bad domain name "):
        mx_dns.mx_hosts(domain)
    assert dns_server.queries == []


# --- caching ---------------------------------------------------------------------------------------------------


def test_a_thousand_lookups_of_one_domain_ask_once(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    for _ in range(1000):
        assert hosts("example.test") == [("mx1.example.test", 10)]
    assert dns_server.count() == 1


def test_nxdomain_and_implicit_mx_answers_are_cached_too(dns_server: DnsServer) -> None:
    dns_server.add("implicit.test", "A", "127.0.0.1")
    for _ in range(50):
        with pytest.raises(mx_dns.DnsHardFailure):
            mx_dns.mx_hosts("nowhere.test")
        assert hosts("implicit.test") == [("implicit.test", 0)]
    assert dns_server.count("nowhere.test") == 1
    assert dns_server.count("implicit.test") == 2  # MX (NODATA) and A, once each


def test_a_zero_ttl_is_honoured(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.", ttl=0)
    for _ in range(3):
        hosts("example.test")
    assert dns_server.count() == 3


def test_failures_are_not_cached(dns_server: DnsServer) -> None:
    dns_server.servfail("example.test")
    for _ in range(3):
        with pytest.raises(mx_dns.DnsTempFailure):
            mx_dns.mx_hosts("example.test")
    assert dns_server.count() == 3


def test_clear_cache_forgets_answers(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    hosts("example.test")
    mx_dns.clear_cache()
    hosts("example.test")
    assert dns_server.count() == 2


def test_one_resolver_per_settings_value(dns_server: DnsServer, settings) -> None:
    first = mx_dns._resolver((dns_server.address,), 10.0)
    assert mx_dns._resolver((dns_server.address,), 10.0) is first
    assert mx_dns._resolver((dns_server.address,), 3.0) is not first
    assert first.lifetime == 10.0
    assert first.timeout == mx_dns.ATTEMPT_TIMEOUT


# --- settings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("192.0.2.1:5353", ("192.0.2.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("2001:db8::53", ("2001:db8::53", 53)),
    ],
)
def test_server_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert mx_dns.parse_server(text) == expected


@pytest.mark.parametrize(
    "text", ["ns1.example.test", "192.0.2.1:0", "192.0.2.1:99999", "192.0.2.1:", "[::1]", "300.1.1.1", ""]
)
def test_bad_server_addresses_are_refused(settings, text: str) -> None:
    with pytest.raises(ValueError):
        mx_dns.parse_server(text)
    settings.ESAROUTES_DNS_SERVERS = [text]
    with pytest.raises(ImproperlyConfigured, match="ESAROUTES_DNS_SERVERS"):
        mx_dns.mx_hosts("example.test")


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_a_timeout_that_is_not_positive_is_refused(settings, timeout: float) -> None:
    settings.ESAROUTES_DNS_SERVERS = ["127.0.0.1:53"]
    settings.ESAROUTES_DNS_TIMEOUT = timeout
    with pytest.raises(ImproperlyConfigured, match="ESAROUTES_DNS_TIMEOUT"):
        mx_dns.mx_hosts("example.test")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ESAROUTES_DNS_SERVERS", "127.0.0.1:5353,not-an-ip"),
        ("ESAROUTES_DNS_SERVERS", "127.0.0.1:70000"),
        ("ESAROUTES_DNS_TIMEOUT", "ten"),
        ("ESAROUTES_DNS_TIMEOUT", "0"),
    ],
)
def test_bad_environment_values_stop_start_up_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    env = {**os.environ, "ESAROUTES_DATA_DIR": str(tmp_path), variable: value}
    run = subprocess.run(
        [sys.executable, "-c", "import esaroutes.settings"], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode != 0
    assert "ImproperlyConfigured" in run.stderr
    assert variable in run.stderr.strip().splitlines()[-1]


def test_good_environment_values_are_read(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ESAROUTES_DATA_DIR": str(tmp_path),
        "ESAROUTES_DNS_SERVERS": "127.0.0.1:5353, ::1 ,[::1]:53",
        "ESAROUTES_DNS_TIMEOUT": "2.5",
    }
    code = "from esaroutes import settings as s; print(s.ESAROUTES_DNS_SERVERS, s.ESAROUTES_DNS_TIMEOUT)"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "['127.0.0.1:5353', '::1', '[::1]:53'] 2.5"
