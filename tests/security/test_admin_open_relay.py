"""The Django admin cannot open the relay: a Recipient Access Table rule `ALL = ACCEPT` is refused there with the
Access page's message (the rule is the model's, so every writer meets it), and a client outside the relay
networks is still refused after the attempt, checked against a real listener on loopback."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from routes.access import services as access_services
from routes.models import AuditEntry, RecipientAccessRule, RelayNetwork
from tests.security.test_open_relay import foreign_client

pytestmark = pytest.mark.django_db(transaction=True)

OPEN_RELAY = "Accepting ALL domains makes this an open relay for every client. Refused."


def _refused_by_rat(smtpd: Any) -> bytes:
    smtpd.refresh()
    c = smtpd.raw()
    try:
        assert c.reply().startswith(b"220")
        assert c.cmd(b"EHLO probe.test").startswith(b"250")
        assert c.cmd(b"MAIL FROM:<spammer@elsewhere.test>").startswith(b"250")
        reply: bytes = c.cmd(b"RCPT TO:<victim@elsewhere.test>")
        c.cmd(b"QUIT")
    finally:
        c.close()
    return reply


@pytest.mark.parametrize("typed", ["ALL", "all", " All "])
def test_accept_all_through_the_admin_add_view_is_refused_and_nothing_relays(smtpd, client, alice, typed):
    foreign_client(smtpd, all_route=True)
    client.force_login(alice)
    response = client.post(
        reverse("admin:routes_recipientaccessrule_add"), {"domain": typed, "action": "accept", "comment": ""}
    )
    assert response.status_code == 200  # the form again, not a redirect to the list
    assert response.context["adminform"].form.errors["action"] == [OPEN_RELAY]
    assert not RecipientAccessRule.objects.exists()
    assert not AuditEntry.objects.exists()
    assert _refused_by_rat(smtpd) == b"550 5.7.1 <victim@elsewhere.test>... Relaying denied"


def test_changing_a_rule_to_accept_all_through_the_admin_is_refused(smtpd, client, alice):
    foreign_client(smtpd, all_route=True)
    reject_all = access_services.rat_save("test", "ALL", "reject")
    other = access_services.rat_save("test", "partner.test", "accept")
    client.force_login(alice)
    for rule, data in [
        (reject_all, {"domain": "ALL", "action": "accept", "comment": ""}),
        (other, {"domain": "all", "action": "accept", "comment": "renamed"}),  # a rename onto ALL, same rule
    ]:
        url = reverse("admin:routes_recipientaccessrule_change", args=[rule.pk])
        response = client.post(url, data)
        assert response.status_code == 200
        assert OPEN_RELAY in response.context["adminform"].form.errors["action"]
    assert sorted(RecipientAccessRule.objects.values_list("domain", "action")) == [
        ("ALL", "reject"),
        ("partner.test", "accept"),
    ]
    assert _refused_by_rat(smtpd) == b"550 5.7.1 <victim@elsewhere.test>... Relaying denied"


def test_the_service_refuses_accept_all_whoever_calls_it(smtpd):
    foreign_client(smtpd, all_route=True)
    with pytest.raises(access_services.AccessInvalid) as caught:
        access_services.rat_save("cli:root", "ALL", "accept")
    assert caught.value.errors == {"action": [OPEN_RELAY]}
    assert not RecipientAccessRule.objects.exists()
    assert _refused_by_rat(smtpd) == b"550 5.7.1 <victim@elsewhere.test>... Relaying denied"


def test_rows_that_open_the_relay_written_around_the_rules_are_ignored_by_the_listener(smtpd, caplog):
    """An `ALL = ACCEPT` rule or a `0.0.0.0/0` relay network saved before the rules held (or by SQL)."""
    foreign_client(smtpd, all_route=True)
    RecipientAccessRule.objects.create(domain="ALL", action="accept")
    RelayNetwork.objects.create(network="0.0.0.0/0")
    RelayNetwork.objects.create(network="::/0")
    with caplog.at_level("WARNING", logger="delivery.access"):
        assert _refused_by_rat(smtpd) == b"550 5.7.1 <victim@elsewhere.test>... Relaying denied"
    warnings = [r.getMessage() for r in caplog.records if r.name == "delivery.access"]
    assert any("ALL = ACCEPT ignored" in w for w in warnings), warnings
    assert any("'0.0.0.0/0' ignored" in w for w in warnings), warnings
    assert any("'::/0' ignored" in w for w in warnings), warnings


def test_the_migration_closes_rows_that_opened_the_relay_and_audits_them(transactional_db):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("routes", "0002_defaults")])  # 0003 changes no schema: going back only unapplies it
    RecipientAccessRule.objects.create(domain="ALL", action="accept", comment="set in the admin")
    RecipientAccessRule.objects.create(domain="partner.test", action="accept")
    for network in ("0.0.0.0/0", "::/0", "10.0.0.0/8"):
        RelayNetwork.objects.create(network=network)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert sorted(RecipientAccessRule.objects.values_list("domain", "action")) == [
        ("ALL", "reject"),
        ("partner.test", "accept"),
    ]
    assert set(RelayNetwork.objects.values_list("network", flat=True)) == {"10.0.0.0/8"}
    assert sorted(AuditEntry.objects.values_list("actor_name", "action", "object_repr")) == [
        ("migration", "delete", "0.0.0.0/0"),
        ("migration", "delete", "::/0"),
        ("migration", "update", "ALL REJECT"),
    ]
    assert AuditEntry.objects.get(action="update").before["comment"] == "set in the admin"
