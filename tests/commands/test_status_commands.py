"""hoststatus and tophosts: ESA-shaped output from real queue rows, host health and the route table."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.management import CommandError
from django.utils import timezone

from delivery.models import DeliveryAttempt, HostStatus, Recipient
from routes import snapshot
from tests.routes.helpers import make_route
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db


def value(out: str, label: str) -> str:
    """The value printed after a hoststatus label (right-aligned at the end of the line)."""
    match = re.search(rf"^\s*{re.escape(label)}\s+(.+?)\s*$", out, re.MULTILINE)
    assert match, f"{label!r} not in:\n{out}"
    return match.group(1)


@pytest.fixture
def dest():
    """dest.test: a route with two hosts; one delivered, one 550, one failover 451, one still queued."""
    make_route("dest.test", "mx1.dest.test/pri=10, mx2.dest.test:2525/pri=20")
    snapshot.invalidate()
    m = make_message(recipients=("a@dest.test", "b@dest.test", "c@dest.test"))
    attempt(m, host="mx1.dest.test", code=451, reply="4.3.0 busy", outcome=DeliveryAttempt.Outcome.NEXT_HOST, rids=(0,))
    attempt(m, host="mx2.dest.test", port=2525, rids=(0,))
    attempt(m, host="mx2.dest.test", port=2525, code=550, reply="5.1.1 no such user", outcome="bounced", rids=(1,))
    HostStatus.objects.filter(host="mx1.dest.test").update(down_until=timezone.now() + timedelta(minutes=5))
    return m


def test_hoststatus_prints_the_esa_sections(run, dest):
    out = run("hoststatus", "Dest.Test").out
    assert out.startswith("Host mail status for: dest.test\nStatus as of:         ")
    assert "Host up/down:         up" in out  # mx2 is up
    assert value(out, "Soft Bounced Events") == "1"
    assert value(out, "Completed Recipients") == "2"
    assert value(out, "Hard Bounced Recipients") == "1"
    assert value(out, "5XX Hard Bounces") == "1"
    assert value(out, "DNS Hard Bounces") == "0" and value(out, "Expired Hard Bounces") == "0"
    assert value(out, "Delivered Recipients") == "1"
    assert value(out, "Active Recipients") == "1" and value(out, "Unattempted Recipients") == "1"
    assert value(out, "Current Outbound Connections") == "0"
    assert value(out, "Oldest Message") != "No Messages"
    assert "550 5.1.1 no such user" in out
    # values end in one column, as on the ESA
    assert len({len(line) for line in out.splitlines() if line.endswith(" 0") or line.endswith(" 1")}) == 1


def test_hoststatus_lists_the_routes_hosts_with_state_and_last_error(run, dest):
    out = run("hoststatus", "dest.test").out
    routes = out[out.index("SMTP routes for this host:") :]
    assert "Route: dest.test" in routes
    mx1 = next(line for line in routes.splitlines() if "mx1.dest.test:25" in line)
    mx2 = next(line for line in routes.splitlines() if "mx2.dest.test:2525" in line)
    # in the order the next connection tries them: mx2 first, mx1 (down while mx2 is up) left out, last
    assert routes.index("mx2.dest.test:2525") < routes.index("mx1.dest.test:25")
    assert mx2.split()[:2] == ["1", "20"] and mx2.rstrip().endswith("up")
    assert mx1.split()[:2] == ["skip", "10"] and "down until" in mx1
    assert "last error" in routes and "451 4.3.0 busy" in routes


def test_hoststatus_domain_down_when_every_host_is(run, dest):
    HostStatus.objects.update(down_until=timezone.now() + timedelta(minutes=5))
    assert "Host up/down:         down" in run("hoststatus", "dest.test").out


def test_hoststatus_by_mx_does_not_query_dns_unless_asked(run, monkeypatch):
    m = make_message(recipients=("x@mx.test",))
    attempt(m, host="mail.mx.test")

    def no_dns(*args, **kwargs):
        raise AssertionError("looked up DNS")

    monkeypatch.setattr("delivery.outbound.dns.mx_hosts", no_dns)
    out = run("hoststatus", "mx.test").out
    assert "No route (delivered by MX records)" in out
    assert "MX hosts not looked up (add --dns)" in out and "mail.mx.test:25" in out


def test_hoststatus_dns_looks_the_mx_hosts_up(run, monkeypatch):
    from delivery import engine

    make_message(recipients=("x@mx.test",))
    monkeypatch.setattr("delivery.outbound.dns.mx_hosts", lambda domain, port=25: [engine.Host("mx9.mx.test", port, 5)])
    out = run("hoststatus", "mx.test", "--dns").out
    assert "MX hosts (looked up now), in the order the next connection tries them:" in out
    line = next(line for line in out.splitlines() if "mx9.mx.test" in line)
    assert line.split()[:2] == ["1", "5"] and "never tried" in line


def test_hoststatus_usedns_route_and_dns_failure(run, monkeypatch):
    from delivery.outbound import dns

    make_route(".mx.test", "USEDNS")
    snapshot.invalidate()
    make_message(recipients=("x@a.mx.test",))

    def fail(domain, port=25):
        raise dns.DnsHardFailure("5.1.2 Domain a.mx.test does not exist")

    monkeypatch.setattr("delivery.outbound.dns.mx_hosts", fail)
    out = run("hoststatus", "a.mx.test", "--dns").out
    assert ".mx.test: USEDNS (delivered by MX records)" in out
    assert "MX lookup failed: 5.1.2 Domain a.mx.test does not exist" in out


def test_hoststatus_unknown_domain_is_an_error(run):
    with pytest.raises(CommandError, match=r"No record of host: never\.test"):
        run("hoststatus", "never.test")
    with pytest.raises(CommandError, match="is not a domain name"):
        run("hoststatus", "a..b")


def test_hoststatus_splits_hard_bounces(run):
    m = make_message(recipients=("a@split.test", "b@split.test", "c@split.test"))
    Recipient.objects.filter(message=m, rid=0).update(state="bounced", dsn_status="5.4.7")
    Recipient.objects.filter(message=m, rid=1).update(state="bounced", dsn_status="5.1.2")
    Recipient.objects.filter(message=m, rid=2).update(state="bounced", dsn_status="5.0.0")
    out = run("hoststatus", "split.test").out
    assert value(out, "Expired Hard Bounces") == "1"
    assert value(out, "DNS Hard Bounces") == "1"
    assert value(out, "Other Hard Bounces") == "1"
    assert value(out, "Oldest Message") == "No Messages"


def test_tophosts_ranks_destinations(run, dest):
    make_message(recipients=("a@busy.test", "b@busy.test", "c@busy.test"))
    out = run("tophosts").out.splitlines()
    assert out[0].startswith("Status as of:")
    assert "Hosts marked with '*' were down as of the last delivery attempt." in out
    header = next(i for i, line in enumerate(out) if "Recipient Host" in line)
    assert out[header - 1].split() == ["Active", "Conn.", "Deliv.", "Soft", "Hard"]
    rows = [line.split() for line in out[header + 1 :]]
    assert rows[0] == ["1", "busy.test", "3", "0", "0", "0", "0"]
    assert rows[1] == ["2", "dest.test", "1", "0", "1", "1", "1"]


def test_tophosts_sorts_and_marks_down_hosts(run, dest):
    make_message(recipients=("a@busy.test", "b@busy.test"))
    HostStatus.objects.update(down_until=timezone.now() + timedelta(minutes=5))
    out = run("tophosts", "--sort", "delivered").out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d", line)]
    assert rows[0].split()[:2] == ["1*", "dest.test"]
    assert "Sorted by:                     delivered" in out
    with pytest.raises(CommandError, match="invalid choice"):
        run("tophosts", "--sort", "nonsense")


def test_tophosts_empty(run):
    assert "(no destination domain yet)" in run("tophosts").out


def test_hoststatus_shows_the_destination_control_and_its_counts_now(run, dest):
    from delivery import slots
    from delivery.models import BounceProfile
    from routes import services

    slots.flush()
    quiet = BounceProfile.objects.create(name="quiet")
    services.create_destination(
        data=services.DestinationData(
            destination="dest.test",
            max_connections=7,
            max_messages_per_connection=3,
            recipient_limit=30,
            recipient_minutes=1,
            ip_preference="ipv6-required",
            tls="required-verify",
            bounce_profile_id=quiet.pk,
        ),
        actor="test",
    )
    assert slots.acquire("dest.test", "w1:1", 7) and slots.acquire("dest.test", "w1:2", 7)
    assert slots.reserve("dest.test", 4, limit=30, minutes=1).count == 4
    out = run("hoststatus", "dest.test").out
    assert "Destination control: dest.test" in out
    assert value(out, "Concurrent Connections (max)") == "7"
    assert value(out, "Current Connections (all workers)") == "2"
    assert value(out, "Messages Per Connection (max)") == "3"
    assert value(out, "Recipient Limit") == "30 per 1 min, for the whole domain"
    assert value(out, "Recipients In Current Window") == "4"
    assert value(out, "TLS") == "required (verify)"  # the route's opportunistic and the destination's
    assert value(out, "IP Address Preference") == "IPv6 required"
    assert value(out, "Bounce Profile") == "quiet"
    slots.flush()


def test_hoststatus_falls_back_to_the_default_entry(run, dest):
    out = run("hoststatus", "dest.test").out
    assert "Destination control: Default" in out
    assert value(out, "Recipient Limit") == "none" and "Recipients In Current Window" not in out
    assert value(out, "TLS") == "preferred" and value(out, "Bounce Profile") == "Default"


def test_tophosts_marks_suspended_domains(run, dest):
    make_message(recipients=("a@busy.test", "b@busy.test"))
    run("suspenddel", "busy.test")
    out = run("tophosts").out
    assert "Hosts marked with 'S' have their deliveries suspended (resumedel to resume)." in out
    rows = {line.split()[-6]: line for line in out.splitlines() if re.match(r"^\s+\d", line)}
    assert rows["busy.test"].startswith("  1 S busy.test")
    assert rows["dest.test"].startswith("  2   dest.test")


def test_hoststatus_shows_the_slots_of_each_destination_ip_in_the_per_ip_scope(run, dest):
    from delivery import slots
    from routes import services

    slots.flush()
    services.create_destination(
        data=services.DestinationData(
            destination="dest.test", max_connections=2, recipient_limit=30, recipient_minutes=1, limit_scope="ip"
        ),
        actor="test",
    )
    assert slots.acquire("dest.test|127.0.0.2", "w1:1", 2) and slots.acquire("dest.test|127.0.0.2", "w1:2", 2)
    assert slots.acquire("dest.test|127.0.0.3", "w2:1", 2)
    assert slots.reserve("dest.test|127.0.0.3", 5, limit=30, minutes=1).count == 5
    out = run("hoststatus", "dest.test").out
    assert value(out, "Concurrent Connections (max)") == "2 per destination IP"
    assert value(out, "Current Connections (all workers)") == "3"  # every address's
    assert value(out, "Recipient Limit") == "30 per 1 min, for each destination IP"
    assert value(out, "Recipients In Current Window") == "5"
    block = out[out.index("Current Connections") : out.index("Messages Per Connection")]
    assert value(block, "127.0.0.2") == "2" and value(block, "127.0.0.3") == "1"
    window = out[out.index("Recipients In Current Window") : out.index("TLS")]
    assert value(window, "127.0.0.3") == "5" and "127.0.0.2" not in window
    slots.flush()
