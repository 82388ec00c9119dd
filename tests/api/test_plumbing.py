"""The API's shared rules, on a tiny API over relay networks (tests/api/plumbing.py): tokens and the session,
roles and read-only tokens, problem+json, ETag/If-Match, keyset pages, the rate limit and the body limit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from esaroutes.models import ApiToken
from routes.models import AuditEntry, RelayNetwork
from tests.api.conftest import is_problem, make_token
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.urls("tests.api.plumbing"), pytest.mark.usefixtures("_fast_passwords")]


@pytest.fixture
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def relay():
    return RelayNetwork.objects.create(network="10.1.0.0/16", comment="lab")


def test_no_credentials_is_401_with_a_bearer_challenge(relay):
    response = APIClient().get("/relays/")
    is_problem(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer a b", "Bearer", "bearer esr_unknown"])
def test_a_bad_token_is_refused_not_ignored(relay, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    is_problem(client.get("/relays/"), 401)


def test_a_token_reads_with_its_users_role(relay, carol, api_client):
    response = api_client(carol).get(f"/relays/{relay.pk}/")
    assert response.status_code == 200
    assert response.json() == {"id": relay.pk, "network": "10.1.0.0/16", "comment": "lab"}
    assert response["ETag"].startswith('"')
    assert ApiToken.objects.get(user=carol).last_used_at is not None


def test_an_expired_token_is_refused(relay, alice):
    secret = make_token(alice, expires_days=1)
    ApiToken.objects.filter(user=alice).update(expires_at=timezone.now() - timedelta(seconds=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert "expired" in is_problem(client.get("/relays/"), 401)["detail"]


def test_an_inactive_users_token_is_refused(relay, alice, api_client):
    client = api_client(alice)
    get_user_model().objects.filter(pk=alice.pk).update(is_active=False)
    is_problem(client.get("/relays/"), 401)


def test_the_role_decides_as_on_the_pages(relay, carol, dave, api_client):
    is_problem(api_client(dave).get("/relays/"), 403)  # the help desk sees no access tables
    reader = api_client(carol)
    etag = reader.get(f"/relays/{relay.pk}/")["ETag"]
    body = is_problem(reader.patch(f"/relays/{relay.pk}/", {"comment": "x"}, format="json", HTTP_IF_MATCH=etag), 403)
    assert "access.change" in body["detail"]
    assert RelayNetwork.objects.get(pk=relay.pk).comment == "lab"


def test_a_read_only_token_of_an_operator_may_not_write(relay, bob, api_client):
    client = api_client(bob, read_only=True)
    etag = client.get(f"/relays/{relay.pk}/")["ETag"]
    body = is_problem(client.patch(f"/relays/{relay.pk}/", {"comment": "x"}, format="json", HTTP_IF_MATCH=etag), 403)
    assert "read-only" in body["detail"]
    assert RelayNetwork.objects.get(pk=relay.pk).comment == "lab"


def test_a_write_with_the_current_etag_is_audited_with_the_tokens_name(relay, bob, api_client):
    client = api_client(bob, name="cmdb-sync")
    etag = client.get(f"/relays/{relay.pk}/")["ETag"]
    response = client.patch(f"/relays/{relay.pk}/", {"comment": "moved"}, format="json", HTTP_IF_MATCH=etag)
    assert response.status_code == 200, response.content
    assert response.json()["comment"] == "moved"
    entry = AuditEntry.objects.get(object_type="RelayNetwork")
    assert entry.actor_name == "api:bob/cmdb-sync" and entry.actor == bob


def test_a_write_with_a_stale_etag_is_412_and_changes_nothing(relay, bob, api_client):
    client = api_client(bob)
    etag = client.get(f"/relays/{relay.pk}/")["ETag"]
    RelayNetwork.objects.filter(pk=relay.pk).update(comment="changed in the browser")
    is_problem(client.patch(f"/relays/{relay.pk}/", {"comment": "x"}, format="json", HTTP_IF_MATCH=etag), 412)
    assert RelayNetwork.objects.get(pk=relay.pk).comment == "changed in the browser"
    assert not AuditEntry.objects.filter(object_type="RelayNetwork").exists()


def test_a_write_without_if_match_is_428_and_star_overwrites(relay, bob, api_client):
    client = api_client(bob)
    is_problem(client.patch(f"/relays/{relay.pk}/", {"comment": "x"}, format="json"), 428)
    assert client.patch(f"/relays/{relay.pk}/", {"comment": "x"}, format="json", HTTP_IF_MATCH="*").status_code == 200


def test_validation_errors_name_the_field(relay, bob, api_client):
    client = api_client(bob)
    body = is_problem(client.patch(f"/relays/{relay.pk}/", {"comment": "y" * 30}, format="json"), 400, "comment")
    assert body["detail"].startswith("comment: ")
    is_problem(client.patch(f"/relays/{relay.pk}/", "{not json", content_type="application/json"), 400)
    is_problem(client.patch(f"/relays/{relay.pk}/", "comment=x", content_type="text/plain"), 415)
    is_problem(client.get("/relays/999999/"), 404)


def test_the_session_works_and_needs_csrf_for_writes(relay, bob):
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="bob", password=PASSWORD)
    response = client.get(f"/relays/{relay.pk}/")
    assert response.status_code == 200
    body = is_problem(
        client.patch(f"/relays/{relay.pk}/", {"comment": "x"}, format="json", HTTP_IF_MATCH=response["ETag"]), 403
    )
    assert "CSRF" in body["detail"]
    assert RelayNetwork.objects.get(pk=relay.pk).comment == "lab"


def test_lists_are_keyset_pages_by_id(alice, api_client, settings):
    for n in range(5):
        RelayNetwork.objects.create(network=f"10.{n}.0.0/16")
    everything = list(RelayNetwork.objects.order_by("pk").values_list("network", flat=True))
    client = api_client(alice)
    seen, url = [], "/relays/?limit=2"
    while url:
        page = client.get(url).json()
        assert len(page["results"]) <= 2
        seen += [r["network"] for r in page["results"]]
        url = page["next"]
    assert seen == everything
    is_problem(client.get("/relays/?limit=0"), 400, "limit")
    is_problem(client.get(f"/relays/?limit={settings.ESAROUTES_API_MAX_PAGE_SIZE + 1}"), 400, "limit")
    is_problem(client.get("/relays/?after=-1"), 400, "after")
    is_problem(client.get(f"/relays/?after={2**80}"), 400, "after")


def test_the_rate_limit_is_per_token(relay, alice, api_client, settings):
    settings.ESAROUTES_API_RATE = "2/minute"
    first, second = api_client(alice), api_client(alice)
    assert [first.get("/relays/").status_code for _ in range(2)] == [200, 200]
    response = first.get("/relays/")
    is_problem(response, 429)
    assert int(response["Retry-After"]) >= 1
    assert second.get("/relays/").status_code == 200  # another token has its own count


def test_a_body_over_the_limit_is_413(relay, bob, api_client, settings):
    settings.ESAROUTES_API_MAX_BODY = 1024
    body = '{"comment": "' + "x" * 2000 + '"}'
    response = api_client(bob).patch(f"/relays/{relay.pk}/", body, content_type="application/json", HTTP_IF_MATCH="*")
    is_problem(response, 413)
    assert RelayNetwork.objects.get(pk=relay.pk).comment == "lab"
