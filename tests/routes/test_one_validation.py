"""One validation for every writer: each rule the Routes and Access pages, the `smtproutes` command and the
import enforce is refused by the Django admin's real add/change views too, with the same message at the same
field, and nothing is written (rows, audit entries, route table version)."""

from __future__ import annotations

import html
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from delivery.models import BounceProfile
from routes import auth_profiles, importexport, services
from routes.access import services as access_services
from routes.models import (
    OPEN_RELAY_MESSAGE,
    AuditEntry,
    AuthProfile,
    DestinationHost,
    RecipientAccessRule,
    RelayNetwork,
    Route,
    SmtpUser,
)
from tests.routes.helpers import form_data, make_route

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("_fast_passwords")]

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def superuser(client, alice):
    client.force_login(alice)
    return client


def written() -> tuple[int, ...]:
    return (
        Route.objects.count(),
        DestinationHost.objects.count(),
        RecipientAccessRule.objects.count(),
        RelayNetwork.objects.count(),
        SmtpUser.objects.count(),
        AuthProfile.objects.count(),
        AuditEntry.objects.count(),
        services.current_version(),
    )


def text(response: Any) -> Any:
    return html.unescape(response.content.decode("utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Routes: the page, the admin (route form + host inline), the command and the import


def admin_route_post(domain: str, rows: list[tuple[str, str, str]], special: str = "") -> dict[str, Any]:
    data: dict[str, Any] = {
        "domain": domain,
        "special": special,
        "tls": "opportunistic",
        "hosts-TOTAL_FORMS": str(len(rows)),
        "hosts-INITIAL_FORMS": "0",
        "hosts-MIN_NUM_FORMS": "0",
        "hosts-MAX_NUM_FORMS": "100",
    }
    for i, (priority, destination, port) in enumerate(rows):
        data.update({f"hosts-{i}-priority": priority, f"hosts-{i}-destination": destination, f"hosts-{i}-port": port})
    return data


MX = ("0", "mx.example.com", "25")

# (id, domain, page/admin rows, admin "Deliver to", command/import host list or None, message)
ROUTE_RULES = [
    ("domain-space", "exa mple.com", [MX], "", "mx.example.com", 'label "exa mple" contains a space'),
    ("domain-underscore", "a_b.test", [MX], "", "mx.example.com", 'label "a_b" contains "_"'),
    ("domain-ip", "192.0.2.1", [MX], "", "mx.example.com", "is an IP address; a receiving domain must be a domain"),
    ("domain-empty-label", "example..com", [MX], "", "mx.example.com", "empty label"),
    ("port-0", "p.test", [("0", "mx.example.com", "0")], "", "mx.example.com:0", "port must be from 1 to 65535"),
    ("port-high", "p.test", [("0", "mx.example.com", "65536")], "", "mx.example.com:65536", "port must be from 1"),
    ("port-text", "p.test", [("0", "mx.example.com", "abc")], "", "mx.example.com:abc", 'port "abc" is not a whole'),
    ("priority-high", "p.test", [("65536", "mx.example.com", "")], "", "mx.example.com/pri=65536", "priority must"),
    (
        "priority-negative",
        "p.test",
        [("-1", "mx.example.com", "")],
        "",
        "mx.example.com/pri=-1",
        "priority must be from 0",
    ),
    ("priority-text", "p.test", [("x", "mx.example.com", "")], "", "mx.example.com/pri=x", 'priority "x" is not'),
    ("host-bad", "p.test", [("0", "mx_1.example.com", "")], "", "mx_1.example.com", 'contains "_"'),
    ("host-broadcast", "p.test", [("0", "255.255.255.255", "")], "", "255.255.255.255", "is the broadcast address"),
    ("host-multicast", "p.test", [("0", "224.0.0.1", "")], "", "224.0.0.1", "is a multicast address"),
    (
        "host-twice",
        "p.test",
        [MX, ("5", "mx.example.com", "25")],
        "",
        "mx.example.com, mx.example.com/pri=5",
        '"mx.example.com:25" is listed more than once',
    ),
    (
        "host-two-ports",
        "p.test",
        [MX, ("0", "mx.example.com", "2525")],
        "",
        "mx.example.com, mx.example.com:2525",
        "The host mx.example.com is already using the standard port.",
    ),
    (
        "usedns-on-all",
        "ALL",
        [("0", "USEDNS", "25")],
        "usedns",
        "USEDNS",
        "USEDNS cannot be the destination of the default route (ALL)",
    ),
    (
        "existing-domain",
        "EXISTING.test",
        [MX],
        "",
        None,  # an import changes an existing route rather than refusing it
        "The value existing.test is already in the routing table.",
    ),
]


@pytest.mark.parametrize(
    ("domain", "rows", "special", "hosts", "message"), [r[1:] for r in ROUTE_RULES], ids=[r[0] for r in ROUTE_RULES]
)
def test_a_route_rule_is_the_same_on_the_page_in_the_admin_the_command_and_the_import(
    superuser, domain, rows, special, hosts, message
):
    make_route("existing.test", "mx1.existing.test")
    before = written()
    page = superuser.post("/routes/add/", form_data(domain, rows), **HTMX)
    assert page.status_code == 422
    assert message.lower() in text(page).lower()
    admin_rows = [] if special else rows
    admin = superuser.post(reverse("admin:routes_route_add"), admin_route_post(domain, admin_rows, special))
    assert admin.status_code == 200  # the form again
    assert message.lower() in text(admin).lower()
    if hosts is not None:
        with pytest.raises(CommandError) as caught:
            call_command("smtproutes", "new", domain, hosts)
        assert message.lower() in str(caught.value).lower()
        parsed = importexport.parse_bytes(f"{domain.replace(' ', '')} {hosts}\n".encode())
        if " " not in domain:  # a space splits the line's columns: the file cannot carry that domain
            assert any(message.lower() in e.lower() for e in parsed.errors), parsed.errors
    else:
        with pytest.raises(CommandError) as caught:
            call_command("smtproutes", "new", domain, "mx.example.com")
        assert message in str(caught.value)
    assert written() == before


def test_renaming_a_route_onto_another_through_the_admin_change_view_is_refused(superuser):
    make_route("existing.test", "mx1.existing.test")
    route = make_route("other.test", "mx.other.test")
    before = written()
    data = admin_route_post("existing.test", [("0", "mx.other.test", "25")])
    data.update({"hosts-INITIAL_FORMS": "1", "hosts-0-id": str(route.hosts.get().pk), "hosts-0-route": str(route.pk)})
    response = superuser.post(reverse("admin:routes_route_change", args=[route.pk]), data)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["domain"] == [
        "The value existing.test is already in the routing table."
    ]
    assert written() == before


def test_a_route_changed_through_the_admin_is_audited_and_bumps_the_route_table_version(superuser, alice):
    route = make_route("example.com", "mx1.example.com")
    version = services.current_version()
    host = route.hosts.get()
    data = admin_route_post("example.com", [("0", "mx2.example.com", "2525")])
    data.update({"hosts-INITIAL_FORMS": "1", "hosts-0-id": str(host.pk), "hosts-0-route": str(route.pk)})
    response = superuser.post(reverse("admin:routes_route_change", args=[route.pk]), data)
    assert response.status_code == 302, text(response)[:3000]
    entry = AuditEntry.objects.get(action="update")
    assert entry.actor == alice
    assert (entry.before["destination"], entry.after["destination"]) == ("mx1.example.com", "mx2.example.com:2525")
    assert services.current_version() == version + 1


def test_a_new_auth_profile_without_a_password_is_refused_by_the_admin_and_the_service(superuser):
    before = written()
    response = superuser.post(reverse("admin:routes_authprofile_add"), {"name": "o365", "username": "relay"})
    assert response.context["adminform"].form.errors["password"] == ["A new profile needs a password."]
    with pytest.raises(ValidationError) as caught:
        auth_profiles.save(profile_id=None, name="o365", username="relay", password=None, actor="t")
    assert caught.value.message_dict == {"password": ["A new profile needs a password."]}
    assert written() == before


# ---------------------------------------------------------------------------------------------------------------
# Access tables: the Access page and the admin, field by field


# (id, page URL, page form in the context, page data, admin model, admin data, field, admin field, message)
ACCESS_RULES = [
    ("rat-all-accept", "rat", {"domain": "ALL", "action": "accept"}, "action", OPEN_RELAY_MESSAGE),
    ("rat-all-lower-accept", "rat", {"domain": " all ", "action": "accept"}, "action", OPEN_RELAY_MESSAGE),
    (
        "rat-bad-domain",
        "rat",
        {"domain": "bad_domain!", "action": "accept"},
        "domain",
        '"bad_domain!" is not a valid domain: label "bad_domain!" contains "_" (only letters, digits and hyphens '
        "are allowed)",
    ),
    (
        "rat-ip",
        "rat",
        {"domain": "192.0.2.1", "action": "reject"},
        "domain",
        '"192.0.2.1" is an IP address; a receiving domain must be a domain name',
    ),
    ("rat-empty", "rat", {"domain": "", "action": "reject"}, "domain", "This field is required."),
    (
        "rat-bad-action",
        "rat",
        {"domain": "x.test", "action": "relay"},
        "action",
        "Select a valid choice. relay is not one of the available choices.",
    ),
    (
        "relay-not-an-ip",
        "relay",
        {"network": "10.0.0.300"},
        "network",
        '"10.0.0.300" is not an IP address or network (CIDR, e.g. 10.0.0.0/8)',
    ),
    (
        "relay-every-ipv4",
        "relay",
        {"network": "0.0.0.0/0"},
        "network",
        "0.0.0.0/0 is every address: relaying for it makes this an open relay for every client. Refused.",
    ),
    (
        "relay-every-ipv6",
        "relay",
        {"network": "::/0"},
        "network",
        "::/0 is every address: relaying for it makes this an open relay for every client. Refused.",
    ),
    ("relay-twice", "relay", {"network": "10.9.0.1/16"}, "network", "10.9.0.0/16 is already a relay network."),
    (
        "user-space",
        "users",
        {"username": "app user", "password": "long-enough-pw"},
        "username",
        "A user name is printable characters without spaces.",
    ),
    (
        "user-control",
        "users",
        {"username": "app\x07", "password": "long-enough-pw"},
        "username",
        "A user name is printable characters without spaces.",
    ),
    (
        "user-short-password",
        "users",
        {"username": "app", "password": "short"},
        "password",
        "Use at least 10 characters.",
    ),
    ("user-no-password", "users", {"username": "app", "password": ""}, "password", "A new user needs a password."),
]

ADMIN = {
    "rat": ("routes_recipientaccessrule", "rat_form", lambda d: {"comment": "", **d}),
    "relay": ("routes_relaynetwork", "relay_form", lambda d: {"comment": "", **d}),
    "users": (
        "routes_smtpuser",
        "user_form",
        lambda d: {"username": d["username"], "new_password": d["password"], "is_active": "on"},
    ),
}


@pytest.mark.parametrize(
    ("table", "data", "field", "message"), [r[1:] for r in ACCESS_RULES], ids=[r[0] for r in ACCESS_RULES]
)
def test_an_access_rule_is_the_same_on_the_page_and_in_the_admin(superuser, table, data, field, message):
    RelayNetwork.objects.create(network="10.9.0.0/16")
    before = written()
    model, form_name, admin_data = ADMIN[table]
    page = superuser.post(f"/routes/access/{table}/", data)  # the whole page: its context has the forms
    assert page.status_code == 422
    assert page.context[form_name].errors[field] == [message]
    admin = superuser.post(reverse(f"admin:{model}_add"), admin_data(data))
    assert admin.status_code == 200  # the form again, with the message at the field
    admin_field = "new_password" if field == "password" else field
    assert admin.context["adminform"].form.errors[admin_field] == [message]
    assert written() == before


def test_a_second_rule_or_user_of_the_same_name_is_refused_by_the_admin_add_view(superuser):
    access_services.rat_save("t", "partner.test", "accept")
    access_services.user_save("t", "app", "long-enough-pw")
    before = written()
    rat = superuser.post(
        reverse("admin:routes_recipientaccessrule_add"), {"domain": "PARTNER.test", "action": "reject"}
    )
    assert rat.context["adminform"].form.errors["domain"] == ["partner.test already has a rule: change that one."]
    user = superuser.post(reverse("admin:routes_smtpuser_add"), {"username": " app ", "new_password": "x" * 12})
    assert user.context["adminform"].form.errors["username"] == ["There is already an SMTP user app."]
    assert written() == before


def test_renaming_a_rule_or_a_user_in_the_admin_changes_that_row_audited(superuser, alice):
    rule = access_services.rat_save("t", "old.test", "accept")
    user = access_services.user_save("t", "old-app", "long-enough-pw")
    stored = SmtpUser.objects.get().password
    response = superuser.post(
        reverse("admin:routes_recipientaccessrule_change", args=[rule.pk]),
        {"domain": "Bücher.Example", "action": "reject", "comment": "moved"},
    )
    assert response.status_code == 302, text(response)[:2000]
    assert list(RecipientAccessRule.objects.values_list("pk", "domain", "action")) == [
        (rule.pk, "xn--bcher-kva.example", "reject")
    ]
    response = superuser.post(
        reverse("admin:routes_smtpuser_change", args=[user.pk]), {"username": "new-app", "new_password": ""}
    )
    assert response.status_code == 302, text(response)[:2000]
    assert list(SmtpUser.objects.values_list("pk", "username", "password", "is_active")) == [
        (user.pk, "new-app", stored, False)
    ]
    entries = AuditEntry.objects.filter(actor=alice).order_by("id")
    assert [(e.object_type, e.before, e.after) for e in entries] == [
        (
            "RecipientAccessRule",
            {"domain": "old.test", "action": "accept", "comment": ""},
            {"domain": "xn--bcher-kva.example", "action": "reject", "comment": "moved"},
        ),
        ("SmtpUser", {"username": "old-app", "is_active": True}, {"username": "new-app", "is_active": False}),
    ]


def test_a_relay_network_comment_changed_or_users_deleted_in_bulk_through_the_admin_are_audited(superuser, alice):
    relay = access_services.relay_save("t", "10.1.0.0/16", "lab")
    users = [access_services.user_save("t", name, "long-enough-pw") for name in ("a", "b")]
    response = superuser.post(reverse("admin:routes_relaynetwork_change", args=[relay.pk]), {"comment": "office"})
    assert response.status_code == 302, text(response)[:2000]
    response = superuser.post(
        reverse("admin:routes_smtpuser_changelist"),
        {"action": "delete_selected", "_selected_action": [u.pk for u in users], "post": "yes"},
    )
    assert response.status_code == 302
    assert not SmtpUser.objects.exists()
    entries = AuditEntry.objects.filter(actor=alice).order_by("id")
    assert [(e.action, e.object_type, e.object_repr) for e in entries] == [
        ("update", "RelayNetwork", "10.1.0.0/16"),
        ("delete", "SmtpUser", "a"),
        ("delete", "SmtpUser", "b"),
    ]
    assert entries[0].after == {"network": "10.1.0.0/16", "comment": "office"}


# ---------------------------------------------------------------------------------------------------------------
# Bounce profiles: written through the admin only; their rules are the model's


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"initial_retry": "0"}, "initial_retry", "Wait at least 1 second before the first retry."),
        (
            {"initial_retry": "600", "max_retry_timeout": "60"},
            "max_retry_timeout",
            "at least the first wait (600 seconds).",
        ),
        ({"max_queue_lifetime": "0"}, "max_queue_lifetime", "Keep a message queued for at least 1 second."),
        ({"name": "Renamed"}, "name", 'The "Default" profile is used by every route without one: keep its name.'),
        ({"warning_interval": "0"}, "warning_interval", "Leave at least 1 second between two delay warnings."),
        ({"warning_max": "0"}, "warning_max", "Send from 1 to 100 delay warnings per message."),
        ({"warning_max": "101"}, "warning_max", "Send from 1 to 100 delay warnings per message."),
    ],
    ids=["initial-0", "ceiling-below-first", "lifetime-0", "default-renamed", "interval-0", "max-0", "max-101"],
)
def test_a_bounce_profile_rule_is_refused_by_the_admin(superuser, change, field, message):
    default = BounceProfile.objects.get(name="Default")
    data = {
        "name": "Default",
        "max_retries": "100",
        "max_queue_lifetime": "259200",
        "initial_retry": "60",
        "max_retry_timeout": "3600",
        "send_bounces": "on",
        "warning_interval": "14400",
        "warning_max": "1",
        "after_possible_delivery": "resend",
        **change,
    }
    response = superuser.post(reverse("admin:delivery_bounceprofile_change", args=[default.pk]), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors[field]
    assert any(message in e for e in errors), errors
    assert list(BounceProfile.objects.values_list("name", "initial_retry", "max_queue_lifetime")) == [
        ("Default", 60, 259200)
    ]


def test_delay_warnings_are_off_by_default_and_set_in_the_admin(superuser):
    default = BounceProfile.objects.get(name="Default")
    assert (default.send_warnings, default.warning_interval, default.warning_max) == (False, 14400, 1)
    data = {
        "name": "Default",
        "max_retries": "100",
        "max_queue_lifetime": "259200",
        "initial_retry": "60",
        "max_retry_timeout": "3600",
        "send_bounces": "on",
        "send_warnings": "on",
        "warning_interval": "7200",
        "warning_max": "3",
        "after_possible_delivery": "resend",
    }
    response = superuser.post(reverse("admin:delivery_bounceprofile_change", args=[default.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    default.refresh_from_db()
    assert (default.send_warnings, default.warning_interval, default.warning_max) == (True, 7200, 3)


def test_the_default_bounce_profile_cannot_be_deleted_through_the_admin(superuser):
    default = BounceProfile.objects.get(name="Default")
    other = BounceProfile.objects.create(name="Short")
    assert (
        superuser.post(reverse("admin:delivery_bounceprofile_delete", args=[default.pk]), {"post": "yes"}).status_code
        == 403
    )
    superuser.post(
        reverse("admin:delivery_bounceprofile_changelist"),
        {"action": "delete_selected", "_selected_action": [default.pk, other.pk], "post": "yes"},
    )
    assert sorted(BounceProfile.objects.values_list("name", flat=True)) == ["Default", "Short"]
