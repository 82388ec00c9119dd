"""`/api/v1/access/`: recipient access rules, relay networks and SMTP users: happy paths, refusals (role,
read-only token, validation at its field, If-Match), and the SMTP password never read back."""

from __future__ import annotations

import pytest
from django.contrib.auth.hashers import check_password

from routes.models import AuditEntry, RecipientAccessRule, RelayNetwork, SmtpUser
from tests.api.conftest import is_problem

RAT, RELAY, USERS = "/api/v1/access/rat/", "/api/v1/access/relay/", "/api/v1/access/users/"


def test_rules_networks_and_users_round_trip_audited(bob, api_client):
    client = api_client(bob, name="cmdb")
    rule = client.post(RAT, {"domain": "rat.test", "action": "accept"}, format="json")
    assert rule.status_code == 201, rule.content
    url = f"{RAT}{rule.json()['id']}/"
    changed = client.patch(url, {"comment": "ours"}, format="json", HTTP_IF_MATCH=rule["ETag"])
    assert changed.status_code == 200 and changed.json()["comment"] == "ours" and changed.json()["action"] == "accept"
    assert client.get(RAT).json()["results"][0]["domain"] == "rat.test"
    network = client.post(RELAY, {"network": "10.9.0.0/16"}, format="json")
    assert network.status_code == 201, network.content
    assert client.delete(f"{RELAY}{network.json()['id']}/", HTTP_IF_MATCH=network["ETag"]).status_code == 204
    assert not RelayNetwork.objects.filter(network="10.9.0.0/16").exists()
    assert client.delete(url, HTTP_IF_MATCH=changed["ETag"]).status_code == 204
    assert not RecipientAccessRule.objects.filter(domain="rat.test").exists()
    names = AuditEntry.objects.exclude(actor_name="test").values_list("actor_name", "action")
    assert sorted(names) == sorted(("api:bob/cmdb", a) for a in ("create", "update", "create", "delete", "delete"))


def test_smtp_passwords_are_write_only(bob, api_client):
    client = api_client(bob)
    made = client.post(USERS, {"username": "app", "password": "s3cret-password"}, format="json")
    assert made.status_code == 201, made.content
    assert "password" not in made.json() and b"s3cret" not in made.content
    url = f"{USERS}{made.json()['id']}/"
    read = client.get(url)
    assert "password" not in read.json() and "password" not in client.get(USERS).json()["results"][0]
    assert check_password("s3cret-password", SmtpUser.objects.get(username="app").password)
    kept = client.patch(url, {"is_active": False}, format="json", HTTP_IF_MATCH=read["ETag"])
    assert kept.status_code == 200 and kept.json()["is_active"] is False
    assert check_password("s3cret-password", SmtpUser.objects.get(username="app").password)
    changed = client.patch(url, {"password": "another-password"}, format="json", HTTP_IF_MATCH="*")
    assert changed.status_code == 200 and "password" not in changed.json()
    assert check_password("another-password", SmtpUser.objects.get(username="app").password)
    assert "another-password" not in str(list(AuditEntry.objects.values_list("after", flat=True)))


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        (RAT, {"domain": "bad domain", "action": "accept"}, "domain"),
        (RAT, {"domain": "a.test", "action": "maybe"}, "action"),
        (RELAY, {"network": "not-a-network"}, "network"),
        (USERS, {"username": "app2", "password": "short"}, "password"),
        (USERS, {"username": "app3"}, "password"),
    ],
)
def test_invalid_rows_are_refused_at_their_field(bob, api_client, url, body, field):
    is_problem(api_client(bob).post(url, body, format="json"), 400, field)
    assert not SmtpUser.objects.exists() and not RelayNetwork.objects.filter(network="not-a-network").exists()


def test_duplicates_are_refused_not_overwritten(bob, api_client):
    client = api_client(bob)
    assert client.post(USERS, {"username": "app", "password": "s3cret-password"}, format="json").status_code == 201
    is_problem(client.post(USERS, {"username": "app", "password": "other-password"}, format="json"), 400, "username")
    assert check_password("s3cret-password", SmtpUser.objects.get(username="app").password)
    assert client.post(RAT, {"domain": "rat.test", "action": "reject"}, format="json").status_code == 201
    is_problem(client.post(RAT, {"domain": "rat.test", "action": "accept"}, format="json"), 400, "domain")
    assert RecipientAccessRule.objects.get(domain="rat.test").action == "reject"


def test_if_match_roles_and_read_only_tokens(bob, carol, dave, api_client):
    made = api_client(bob).post(RELAY, {"network": "10.7.0.0/16"}, format="json")
    url = f"{RELAY}{made.json()['id']}/"
    client = api_client(bob)
    is_problem(client.patch(url, {"comment": "x"}, format="json"), 428)
    is_problem(client.delete(url), 428)
    assert client.patch(url, {"comment": "x"}, format="json", HTTP_IF_MATCH=made["ETag"]).status_code == 200
    is_problem(client.delete(url, HTTP_IF_MATCH=made["ETag"]), 412)
    reader = api_client(carol)
    assert reader.get(url).status_code == 200
    is_problem(reader.post(RELAY, {"network": "10.6.0.0/16"}, format="json"), 403)
    is_problem(reader.delete(url, HTTP_IF_MATCH="*"), 403)
    is_problem(api_client(dave).get(RAT), 403)
    read_only = api_client(bob, read_only=True)
    is_problem(read_only.post(USERS, {"username": "x", "password": "long-enough-pw"}, format="json"), 403)
    is_problem(read_only.delete(url, HTTP_IF_MATCH="*"), 403)
    assert RelayNetwork.objects.filter(network="10.7.0.0/16").exists() and not SmtpUser.objects.exists()
