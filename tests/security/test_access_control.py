"""Who may open what, checked on the server: every URL of the resolver needs a login (bar a few public ones), each
role is refused (403) every view and htmx endpoint it may not use, with the POSTs sent directly (no page hides
anything here), CSRF is enforced on every POST, and the Django admin is for staff only.

A URL added without an entry in ACCESS fails `test_every_url_is_classified`: decide who may use it, here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from delivery.listener import sendtest
from delivery.models import BounceProfile, HostStatus, MailLogLine, Message, Recipient
from delivery.webhooks.models import Webhook
from esaroutes import apitokens
from esaroutes.models import ApiToken
from routes.models import (
    AuditEntry,
    AuthProfile,
    DestinationControl,
    RecipientAccessRule,
    RelayNetwork,
    Route,
    SmtpUser,
)
from tests.api.conftest import make_token
from tests.conftest import PASSWORD
from tests.routes.helpers import form_data
from tests.support.messages import attempt, make_message

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("_fast_passwords")]

A, B, C, D = "alice", "bob", "carol", "dave"  # Administrator, Operator, Read-only operator, Help desk
EVERYONE = {A, B, C, D}
VIEWERS = {A, B, C}
CHANGERS = {A, B}
PUBLIC = {"login", "healthz", "metrics", "favicon"}


def _post(**data: Any) -> dict[str, Any]:
    return data


# (url name, method, data or None, roles allowed). Kwargs come from `url_kwargs`.
ACCESS: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("delivery:dashboard", "GET", None, VIEWERS),  # the help desk is sent to tracking (302), tested apart
    ("delivery:maillog", "GET", None, EVERYONE),
    ("delivery:maillog-download", "GET", None, EVERYONE),
    ("delivery:tracking", "GET", None, EVERYONE),
    ("delivery:message-detail", "GET", None, EVERYONE),
    ("delivery:message-raw", "GET", None, {A}),
    ("delivery:queue", "GET", None, VIEWERS),
    ("delivery:queue-deliver-now", "POST", _post(mid="{mid}", confirm="1"), CHANGERS),
    ("delivery:queue-bounce", "POST", _post(mid="{mid}", confirm="1"), CHANGERS),
    ("delivery:queue-delete", "POST", _post(mid="{mid}", confirm="1"), CHANGERS),
    ("delivery:queue-redirect", "POST", _post(mid="{mid}", relay="127.0.0.1:9", confirm="1"), CHANGERS),
    ("delivery:queue-suspend", "POST", _post(domain="dest.test"), CHANGERS),
    ("delivery:queue-resume", "POST", _post(domain="dest.test"), CHANGERS),
    ("delivery:host-list", "GET", None, VIEWERS),
    ("delivery:host-retry", "POST", _post(), CHANGERS),
    ("delivery:domain-detail", "GET", None, VIEWERS),
    ("delivery:audit-list", "GET", None, VIEWERS),
    ("delivery:webhook-list", "GET", None, {A}),
    ("delivery:webhook-list", "POST", _post(name="new", url="http://127.0.0.1:9/", events="delivered"), {A}),
    ("delivery:webhook-edit", "GET", None, {A}),
    ("delivery:webhook-edit", "POST", _post(name="siem", url="http://127.0.0.1:9/y", events="bounced"), {A}),
    ("delivery:webhook-delete", "POST", _post(), {A}),
    ("routes:route-list", "GET", None, VIEWERS),
    ("routes:route-add", "GET", None, CHANGERS),
    ("routes:route-add", "POST", form_data("new.test", [("0", "127.0.0.1", "9")]), CHANGERS),
    ("routes:route-edit", "GET", None, CHANGERS),
    ("routes:route-edit", "POST", form_data("dest.test", [("5", "127.0.0.1", "9")]), CHANGERS),
    ("routes:host-row", "GET", None, VIEWERS),
    ("routes:route-delete", "GET", None, CHANGERS),
    ("routes:route-delete", "POST", _post(ids="{route}"), CHANGERS),
    ("routes:routes-clear", "GET", None, CHANGERS),
    ("routes:routes-clear", "POST", _post(), CHANGERS),
    ("routes:route-test", "GET", None, VIEWERS),
    ("routes:route-test", "POST", _post(address="x@dest.test", connect="1"), CHANGERS),
    ("routes:route-send-test", "POST", _post(address="x@dest.test"), CHANGERS),
    ("routes:routes-export", "GET", None, VIEWERS),
    ("routes:routes-import", "GET", None, CHANGERS),
    ("routes:routes-import", "POST", _post(mode="replace"), CHANGERS),
    ("routes:audit-list", "GET", None, VIEWERS),
    ("routes:destination-list", "GET", None, VIEWERS),
    ("routes:destination-add", "GET", None, CHANGERS),
    (
        "routes:destination-add",
        "POST",
        _post(
            destination="new.test",
            max_connections="5",
            max_messages_per_connection="5",
            limit_scope="domain",
            ip_preference="ipv4-preferred",
            tls="preferred",
        ),
        CHANGERS,
    ),
    ("routes:destination-edit", "GET", None, CHANGERS),
    (
        "routes:destination-edit",
        "POST",
        _post(
            destination="dest.test",
            max_connections="6",
            max_messages_per_connection="5",
            limit_scope="domain",
            ip_preference="ipv4-preferred",
            tls="preferred",
        ),
        CHANGERS,
    ),
    ("routes:destination-delete", "GET", None, CHANGERS),
    ("routes:destination-delete", "POST", _post(), CHANGERS),
    ("routes:access-list", "GET", None, VIEWERS),
    ("routes:access-rat-save", "POST", _post(domain="open.test", action="accept", comment=""), CHANGERS),
    ("routes:access-rat-delete", "POST", _post(), CHANGERS),
    ("routes:access-relay-add", "POST", _post(network="10.9.0.0/16", comment=""), CHANGERS),
    ("routes:access-relay-delete", "POST", _post(), CHANGERS),
    (
        "routes:access-user-save",
        "POST",
        _post(username="mallory", password="a long new password", is_active="on"),
        CHANGERS,
    ),
    ("routes:access-user-delete", "POST", _post(), CHANGERS),
    ("logout", "POST", _post(), EVERYONE),
    ("token-list", "GET", None, EVERYONE),
    ("token-create", "POST", _post(name="new-token"), EVERYONE),
    ("token-revoke", "POST", _post(), {A}),  # alice's token: its owner, or an administrator
]

# The REST API (/api/v1/): (url name, method, body or None, roles allowed), called with a token of each role.
# Anonymous callers get 401 problem+json, never the login page: DRF views are exempt from LoginRequiredMiddleware.
API_ACCESS: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("api:schema", "GET", None, EVERYONE),
    ("api:docs", "GET", None, EVERYONE),
    ("api:redoc", "GET", None, EVERYONE),
    ("api:route-list", "GET", None, VIEWERS),
    ("api:route-list", "POST", _post(domain="api.test", destination=["127.0.0.1:9"]), CHANGERS),
    ("api:route-detail", "GET", None, VIEWERS),
    ("api:route-detail", "PATCH", _post(tls="required"), CHANGERS),
    ("api:route-detail", "DELETE", None, CHANGERS),
    ("api:route-test", "POST", _post(address="x@dest.test"), VIEWERS),
    ("api:route-export", "GET", None, VIEWERS),
    ("api:route-import", "POST", None, CHANGERS),
    ("api:destination-list", "GET", None, VIEWERS),
    ("api:destination-list", "POST", _post(destination="api.test"), CHANGERS),
    ("api:destination-detail", "GET", None, VIEWERS),
    ("api:destination-detail", "PATCH", _post(max_connections=3), CHANGERS),
    ("api:destination-detail", "DELETE", None, CHANGERS),
    ("api:access-rat-list", "GET", None, VIEWERS),
    ("api:access-rat-list", "POST", _post(domain="new-rat.test", action="accept"), CHANGERS),
    ("api:access-rat-detail", "GET", None, VIEWERS),
    ("api:access-rat-detail", "PATCH", _post(comment="x"), CHANGERS),
    ("api:access-rat-detail", "DELETE", None, CHANGERS),
    ("api:access-relay-list", "GET", None, VIEWERS),
    ("api:access-relay-list", "POST", _post(network="10.5.0.0/16"), CHANGERS),
    ("api:access-relay-detail", "GET", None, VIEWERS),
    ("api:access-relay-detail", "PATCH", _post(comment="x"), CHANGERS),
    ("api:access-relay-detail", "DELETE", None, CHANGERS),
    ("api:access-user-list", "GET", None, VIEWERS),
    ("api:access-user-list", "POST", _post(username="new", password="long-enough-pw"), CHANGERS),
    ("api:access-user-detail", "GET", None, VIEWERS),
    ("api:access-user-detail", "PATCH", _post(is_active=False), CHANGERS),
    ("api:access-user-detail", "DELETE", None, CHANGERS),
    (
        "api:message-inject",
        "POST",
        _post(sender="a@origin.test", recipients=["user@dest.test"], message="Subject: x\r\n\r\nHi.\r\n"),
        CHANGERS,
    ),
    ("api:maillog", "GET", None, EVERYONE),
    ("api:audit-list", "GET", None, VIEWERS),
    ("api:message-list", "GET", None, EVERYONE),
    ("api:message-detail", "GET", None, EVERYONE),
    ("api:message-raw", "GET", None, {A}),
    ("api:host-list", "GET", None, VIEWERS),
    ("api:domain-status", "GET", None, VIEWERS),
    ("api:queue-destinations", "GET", None, VIEWERS),
    ("api:queue-recipients", "GET", None, VIEWERS),
    ("api:queue-actions", "POST", _post(action="deliver-now", all=True), CHANGERS),
    ("api:webhook-list", "GET", None, {A}),
    ("api:webhook-list", "POST", _post(name="new", url="http://127.0.0.1:9/", events=["delivered"]), {A}),
    ("api:webhook-detail", "GET", None, {A}),
    ("api:webhook-detail", "PATCH", _post(enabled=False), {A}),
    ("api:webhook-detail", "DELETE", None, {A}),
    ("api:webhook-attempts", "GET", None, {A}),
    ("api:bounce-profile-list", "GET", None, VIEWERS),
    ("api:bounce-profile-list", "POST", _post(name="api-made"), CHANGERS),
    ("api:bounce-profile-detail", "GET", None, VIEWERS),
    ("api:bounce-profile-detail", "PATCH", _post(max_retries=3), CHANGERS),
    ("api:bounce-profile-detail", "DELETE", None, CHANGERS),
    ("api:auth-profile-list", "GET", None, VIEWERS),
    ("api:auth-profile-list", "POST", _post(name="api-made", username="u", password="pw"), CHANGERS),
    ("api:auth-profile-detail", "GET", None, VIEWERS),
    ("api:auth-profile-detail", "PATCH", _post(username="other"), CHANGERS),
    ("api:auth-profile-detail", "DELETE", None, CHANGERS),
]
POST_URLS = sorted({name for name, method, _, _ in ACCESS if method == "POST"} | {"login"})


def named_urls() -> Iterator[tuple[str, URLPattern]]:
    def walk(patterns: list[Any], namespace: str) -> Iterator[tuple[str, URLPattern]]:
        for p in patterns:
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, namespace + (f"{p.namespace}:" if p.namespace else ""))
            elif p.name:
                yield namespace + p.name, p

    yield from walk(get_resolver().url_patterns, "")


@pytest.fixture
def world(alice, bob, carol, dave, tmp_path, settings, monkeypatch) -> dict[str, Any]:
    """One of everything a URL can point at; hosts on loopback port 9 (nothing listens: a probe is refused)."""
    message = make_message(recipients=("user@dest.test",))
    attempt(message, host="127.0.0.1", port=9, code=451, reply="busy", outcome="delayed")
    route = Route.objects.create(domain="dest.test")
    route.hosts.create(host="127.0.0.1", port=9, priority=0, position=0)
    monkeypatch.setattr(sendtest, "send_test_message", lambda to, **kw: "250 fake")
    (settings.MAIL_LOG_DIR).mkdir(parents=True, exist_ok=True)
    (settings.MAIL_LOG_DIR / "mail.current").write_text("Begin Logfile\n")
    return {
        "mid": message.pk,
        "route": route.pk,
        "host": HostStatus.objects.get(host="127.0.0.1", port=9).pk,
        "rat": RecipientAccessRule.objects.create(domain="rat.test", action="accept").pk,
        "destination": DestinationControl.objects.create(destination="dest.test").pk,
        "relay": RelayNetwork.objects.create(network="10.1.0.0/16").pk,
        "smtpuser": SmtpUser.objects.create(username="app", password=make_password("x" * 20)).pk,
        "token": apitokens.create(user=alice, name="alices", read_only=False, expires_days=None, actor="test").token.pk,
        "webhook": Webhook.objects.create(name="siem", url="http://127.0.0.1:9/x", events=["delivered"], secret="s").pk,
        "bounceprofile": BounceProfile.objects.create(name="Short").pk,
        "authprofile": AuthProfile.objects.create(name="smarthost", username="relay").pk,
    }


def url_kwargs(name: str, world: dict[str, Any]) -> dict[str, Any]:
    return {
        "delivery:maillog-download": {"name": "mail.current"},
        "delivery:message-detail": {"mid": world["mid"]},
        "delivery:message-raw": {"mid": world["mid"]},
        "delivery:host-retry": {"pk": world["host"]},
        "delivery:domain-detail": {"domain": "dest.test"},
        "routes:route-edit": {"pk": world["route"]},
        "routes:destination-edit": {"pk": world["destination"]},
        "routes:destination-delete": {"pk": world["destination"]},
        "routes:access-rat-delete": {"pk": world["rat"]},
        "routes:access-relay-delete": {"pk": world["relay"]},
        "routes:access-user-delete": {"pk": world["smtpuser"]},
        "token-revoke": {"pk": world["token"]},
        "delivery:webhook-edit": {"pk": world["webhook"]},
        "api:webhook-detail": {"pk": world["webhook"]},
        "api:message-detail": {"mid": world["mid"]},
        "api:domain-status": {"domain": "dest.test"},
        "api:message-raw": {"mid": world["mid"]},
        "api:webhook-attempts": {"pk": world["webhook"]},
        "delivery:webhook-delete": {"pk": world["webhook"]},
        "api:route-detail": {"pk": world["route"]},
        "api:destination-detail": {"pk": world["destination"]},
        "api:access-rat-detail": {"pk": world["rat"]},
        "api:access-relay-detail": {"pk": world["relay"]},
        "api:access-user-detail": {"pk": world["smtpuser"]},
        "api:bounce-profile-detail": {"pk": world["bounceprofile"]},
        "api:auth-profile-detail": {"pk": world["authprofile"]},
    }.get(name, {})


def fill(data: dict[str, Any] | None, world: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.format(**world) if isinstance(v, str) else v) for k, v in (data or {}).items()}


def state() -> tuple[Any, ...]:
    """Everything a refused request could have changed."""
    return (
        AuditEntry.objects.count(),
        list(Route.objects.order_by("pk").values_list("domain", "updated_at")),
        list(Recipient.objects.order_by("pk").values_list("state", "next_attempt_at")),
        list(HostStatus.objects.order_by("pk").values_list("down_until", "consecutive_failures")),
        RecipientAccessRule.objects.count(),
        list(DestinationControl.objects.order_by("pk").values_list("destination", "max_connections")),
        RelayNetwork.objects.count(),
        SmtpUser.objects.count(),
        list(Webhook.objects.order_by("pk").values_list("name", "url", "updated_at")),
        list(BounceProfile.objects.order_by("pk").values_list("name", "max_retries")),
        list(AuthProfile.objects.order_by("pk").values_list("name", "username", "password_encrypted")),
        Message.objects.count(),
        MailLogLine.objects.count(),
        ApiToken.objects.count(),
    )


def request(client: Client, method: str, path: str, data: dict[str, Any] | None, *, htmx: bool = False) -> Any:
    headers = {"HX-Request": "true"} if htmx else {}
    if method == "GET":
        return client.get(path, headers=headers)
    return client.post(path, data or {}, headers=headers)


def test_every_url_is_classified():
    classified = {name for name, _, _, _ in ACCESS} | {name for name, _, _, _ in API_ACCESS} | PUBLIC
    unclassified = sorted(n for n, _ in named_urls() if not n.startswith("admin:") and n not in classified)
    assert unclassified == [], "add these URLs to ACCESS in tests/security/test_access_control.py"


@pytest.mark.parametrize(("name", "method", "data", "allowed"), ACCESS, ids=[f"{m} {n}" for n, m, _, _ in ACCESS])
@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx"])
def test_anonymous_is_sent_to_login_and_changes_nothing(client, world, name, method, data, allowed, htmx):
    path = reverse(name, kwargs=url_kwargs(name, world))
    before = state()
    response = request(client, method, path, fill(data, world), htmx=htmx)
    if name == "logout":
        assert response.status_code == 302  # logging out when not logged in: harmless
    else:
        assert response.status_code == 302, (name, response.status_code)
        assert response.url.startswith("/login/?next="), response.url
    assert state() == before


@pytest.mark.parametrize(("name", "method", "data", "allowed"), ACCESS, ids=[f"{m} {n}" for n, m, _, _ in ACCESS])
@pytest.mark.parametrize("who", [A, B, C, D])
def test_each_role_is_refused_what_it_may_not_do(client, world, name, method, data, allowed, who):
    assert client.login(username=who, password=PASSWORD)
    path = reverse(name, kwargs=url_kwargs(name, world))
    before = state()
    for htmx in (False, True):
        response = request(client, method, path, fill(data, world), htmx=htmx)
        if who in allowed:
            assert response.status_code != 403, (who, method, name)
            assert response.status_code < 500, (who, method, name, response.status_code)
            break  # an allowed POST changed things: once is enough
        if name == "delivery:dashboard" and who == D:
            assert response.status_code == 302 and response.url == reverse("delivery:tracking")
        else:
            assert response.status_code == 403, (who, method, name, response.status_code)
        assert state() == before, (who, method, name)


@pytest.mark.parametrize("name", POST_URLS)
def test_csrf_is_enforced_on_every_post(world, name):
    client = Client(enforce_csrf_checks=True)
    if name == "login":
        response = client.post(reverse("login"), {"username": A, "password": PASSWORD})
        assert response.status_code == 403
        assert "_auth_user_id" not in client.session
        return
    client.force_login(get_user_model().objects.get(username=A))
    entry = next(e for e in ACCESS if e[0] == name and e[1] == "POST")
    before = state()
    for htmx in (False, True):
        response = request(
            client, "POST", reverse(name, kwargs=url_kwargs(name, world)), fill(entry[2], world), htmx=htmx
        )
        assert response.status_code == 403, (name, response.status_code)
        assert b"CSRF" in response.content
    assert state() == before


def test_csrf_token_is_accepted_when_sent_the_htmx_way(world):
    """The same POST with the token in the X-CSRFToken header (base.html's hx-headers) goes through."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.get(username=A))
    page = client.get(reverse("routes:access-list"))
    token = page.context["csrf_token"]
    assert f'"X-CSRFToken": "{token}"'.encode() in page.content
    response = client.post(
        reverse("routes:access-relay-add"),
        {"network": "10.8.0.0/16", "comment": ""},
        headers={"HX-Request": "true", "X-CSRFToken": str(token)},
    )
    assert response.status_code == 200
    assert RelayNetwork.objects.filter(network="10.8.0.0/16").exists()


def api_request(client: APIClient, method: str, path: str, data: dict[str, Any] | None) -> Any:
    return getattr(client, method.lower())(path, data, format="json", HTTP_IF_MATCH="*")


@pytest.mark.parametrize(
    ("name", "method", "data", "allowed"), API_ACCESS, ids=[f"{m} {n}" for n, m, _, _ in API_ACCESS]
)
def test_api_anonymous_gets_401_and_changes_nothing(world, name, method, data, allowed):
    before = state()
    response = api_request(APIClient(), method, reverse(name, kwargs=url_kwargs(name, world)), fill(data, world))
    assert response.status_code == 401, (name, response.status_code)
    assert response["Content-Type"].startswith("application/problem+json")
    assert state() == before


def test_every_api_url_authenticates():
    """Whatever is added under /api/ later: an anonymous GET is refused (401), never answered or redirected."""
    api = [(n, p) for n, p in named_urls() if n.startswith("api:")]
    assert {n for n, _ in api} == {n for n, _, _, _ in API_ACCESS}
    for name, pattern in api:
        kwargs = dict.fromkeys(pattern.pattern.regex.groupindex, "1")
        response = APIClient().get(reverse(name, kwargs=kwargs))
        assert response.status_code == 401, (name, response.status_code)


@pytest.mark.parametrize(
    ("name", "method", "data", "allowed"), API_ACCESS, ids=[f"{m} {n}" for n, m, _, _ in API_ACCESS]
)
@pytest.mark.parametrize("who", [A, B, C, D])
def test_api_each_role_is_refused_what_it_may_not_do(world, name, method, data, allowed, who):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token(get_user_model().objects.get(username=who))}")
    path = reverse(name, kwargs=url_kwargs(name, world))
    before = state()
    response = api_request(client, method, path, fill(data, world))
    if who in allowed:
        assert response.status_code != 403, (who, method, name)
        assert response.status_code < 500, (who, method, name, response.status_code)
    else:
        assert response.status_code == 403, (who, method, name, response.status_code)
        assert state()[:-1] == before[:-1], (who, method, name)  # the last: the token made for the call


def test_admin_is_for_staff_only(client, world):
    admin_urls = [(n, p) for n, p in named_urls() if n.startswith("admin:")]
    assert len(admin_urls) > 50
    paths = []
    for name, pattern in admin_urls:
        if name in ("admin:login", "admin:logout"):
            continue
        keys = list(pattern.pattern.regex.groupindex)
        kwargs = {k: ("1" if k in ("object_id", "content_type_id") else "x") for k in keys}
        if "app_label" in kwargs:
            kwargs["app_label"] = "routes"
        try:
            paths.append(reverse(name, kwargs=kwargs))
        except Exception:  # a pattern whose arguments we cannot fill blindly: skip it
            continue
    assert len(paths) > 50
    for who in (None, B, C, D):  # anonymous, and every role that is not staff
        client.logout()
        if who:
            assert client.login(username=who, password=PASSWORD)
        for path in paths:
            response = client.get(path)
            assert response.status_code == 302, (who, path, response.status_code)
            assert response.url.startswith("/admin/login/") or response.url.startswith("/login/"), (who, path)
            response = client.post(path, {})
            assert response.status_code in (302, 405), (who, path, response.status_code)


def test_public_urls_show_nothing_private(client, world):
    assert client.get(reverse("healthz")).content == b"ok\n"
    metrics = client.get(reverse("metrics"), REMOTE_ADDR="192.168.1.10")  # data only: nothing connects there
    assert metrics.status_code == 403
    login = client.get(reverse("login"))
    assert login.status_code == 200 and b"dest.test" not in login.content
