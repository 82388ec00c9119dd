from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from routes import auth_profiles, services
from routes.models import AuditEntry, AuthProfile, Route
from tests.routes.helpers import form_data, make_route

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def client_alice(client, alice):
    client.force_login(alice)
    return client


def test_list_shows_routes_unicode_and_default_apart(client_alice):
    make_route("xn--bcher-kva.example", "mx.example.com:2525/pri=5, [relay.example.net]")
    make_route("ALL", "smarthost.example.net:587")
    page = client_alice.get(reverse("routes:route-list")).content.decode()
    assert "bücher.example" in page
    assert "mx.example.com:2525" in page and "[relay.example.net]" in page
    assert "All other domains" in page and "smarthost.example.net:587" in page


def test_list_sorts_unicode_domains_as_they_are_typed(client_alice):
    for domain in ("xn--bcher-kva.example", "apfel.example", "zebra.example", "cafe.example"):
        make_route(domain, "mx.example.com")
    page = client_alice.get(reverse("routes:route-list")).content.decode()
    order = [page.index(f">{d}</a>") for d in ("apfel.example", "bücher.example", "cafe.example", "zebra.example")]
    assert order == sorted(order) and "xn--bcher-kva" not in page
    page = client_alice.get(reverse("routes:route-list"), {"sort": "-domain"}).content.decode()
    order = [page.index(f">{d}</a>") for d in ("zebra.example", "cafe.example", "bücher.example", "apfel.example")]
    assert order == sorted(order)


def test_list_search_returns_the_table_partial_for_htmx(client_alice):
    make_route("alpha.example", "mx.alpha.example")
    make_route("beta.example", "relay.gamma.test")
    response = client_alice.get(reverse("routes:route-list"), {"q": "gamma"}, **HTMX)
    body = response.content.decode()
    assert body.lstrip().startswith('<form id="route-table"')
    assert "beta.example" in body and "alpha.example" not in body
    by_domain = client_alice.get(reverse("routes:route-list"), {"q": "ALPHA"}, **HTMX).content.decode()
    assert "alpha.example" in by_domain and "beta.example" not in by_domain


def test_list_search_accepts_unicode(client_alice):
    make_route("xn--bcher-kva.example", "mx.example.com")
    body = client_alice.get(reverse("routes:route-list"), {"q": "bücher"}, **HTMX).content.decode()
    assert "bücher.example" in body


def test_list_queries_do_not_grow_with_the_page(client_alice, django_assert_max_num_queries):
    for i in range(60):
        make_route(f"d{i:03}.example", f"mx{i}.example.com, mx{i}b.example.com/pri=10")
    with django_assert_max_num_queries(12):
        response = client_alice.get(reverse("routes:route-list"), {"sort": "-domain", "page": "2"})
    assert "d009.example" in response.content.decode()


def test_add_route_with_hosts_redirects_and_audits(client_alice, alice):
    data = form_data(
        "Example.COM", [("10", "mx1.example.com", "25"), ("10", "mx2.example.com", "2525"), ("20", "10.0.0.9", "")]
    )
    response = client_alice.post(reverse("routes:route-add"), data, **HTMX)
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("routes:route-list")
    route = Route.objects.get(domain="example.com")
    assert [(h.host, h.port, h.priority) for h in route.hosts.order_by("position")] == [
        ("mx1.example.com", 25, 10),
        ("mx2.example.com", 2525, 10),
        ("10.0.0.9", 25, 20),
    ]
    entry = AuditEntry.objects.get()
    assert entry.actor == alice and entry.action == "create"
    assert entry.after["destination"] == "mx1.example.com/pri=10, mx2.example.com:2525/pri=10, 10.0.0.9/pri=20"


def test_invalid_form_is_422_with_errors_at_the_field_and_keeps_input(client_alice):
    data = form_data("example.com", [("0", "mx1.example.com", "70000"), ("x5", "mx2.example.com", "25")])
    response = client_alice.post(reverse("routes:route-add"), data, **HTMX)
    assert response.status_code == 422
    body = response.content.decode()
    assert body.lstrip().startswith('<form id="route-form"')
    assert "Port must be from 1 to 65535" in body
    assert "Priority &quot;x5&quot; is not a whole number" in body or 'Priority "x5" is not a whole number' in body
    assert 'value="70000"' in body and 'value="x5"' in body
    assert not Route.objects.exists()


def test_duplicate_host_and_usedns_on_all_errors(client_alice):
    dup = form_data("example.com", [("0", "mx.example.com", "25"), ("5", "MX.example.com", "25")])
    body = client_alice.post(reverse("routes:route-add"), dup, **HTMX).content.decode()
    assert "is listed more than once" in body
    usedns = form_data("ALL", [("0", "USEDNS", "")])
    response = client_alice.post(reverse("routes:route-add"), usedns, **HTMX)
    assert response.status_code == 422
    assert "USEDNS cannot be the destination of the default route" in response.content.decode()


def test_existing_domain_is_refused_at_the_domain_field(client_alice):
    make_route("example.com")
    response = client_alice.post(reverse("routes:route-add"), form_data("example.com", [("0", "a.example", "")]))
    assert response.status_code == 422
    assert "The value example.com is already in the routing table." in response.content.decode()


def test_edit_renames_and_changes_priority(client_alice):
    route = make_route("old.example", "mx1.example.com/pri=10, mx2.example.com/pri=20")
    page = client_alice.get(reverse("routes:route-edit", args=[route.pk])).content.decode()
    assert 'value="mx2.example.com"' in page and 'value="20"' in page
    data = form_data("new.example", [("10", "mx1.example.com", "25"), ("5", "mx2.example.com", "25")])
    data["hosts-INITIAL_FORMS"] = "2"
    response = client_alice.post(reverse("routes:route-edit", args=[route.pk]), data)
    assert response.status_code == 302
    route.refresh_from_db()
    assert route.domain == "new.example"
    assert services.route_state(route)["destination"] == "mx1.example.com/pri=10, mx2.example.com/pri=5"
    update = AuditEntry.objects.filter(action="update").get()
    assert update.before["domain"] == "old.example" and update.after["domain"] == "new.example"


def test_remove_row_and_blank_rows_are_ignored(client_alice):
    data = form_data("example.com", [("0", "a.example.com", ""), ("0", "b.example.com", ""), ("0", "", "25")])
    data["hosts-1-DELETE"] = "on"
    assert client_alice.post(reverse("routes:route-add"), data).status_code == 302
    assert services.route_state(Route.objects.get())["destination"] == "a.example.com"


def test_special_destination_typed_alone(client_alice):
    assert (
        client_alice.post(reverse("routes:route-add"), form_data(".example.com", [("0", "usedns", "")])).status_code
        == 302
    )
    assert Route.objects.get().special == "usedns"
    mixed = form_data("x.example", [("0", "/dev/null", ""), ("0", "mx.example.com", "")])
    response = client_alice.post(reverse("routes:route-add"), mixed)
    assert response.status_code == 422
    assert "must be the only destination" in response.content.decode()


def test_host_row_returns_a_row_and_the_counter_out_of_band(client_alice):
    response = client_alice.get(reverse("routes:host-row"), {"hosts-TOTAL_FORMS": "3"}, **HTMX)
    body = response.content.decode()
    assert 'name="hosts-3-destination"' in body
    assert 'id="id_hosts-TOTAL_FORMS"' in body and 'value="4"' in body and 'hx-swap-oob="true"' in body


def test_auth_profile_dropdown_or_message(client_alice):
    page = client_alice.get(reverse("routes:route-add")).content.decode()
    assert "No outgoing SMTP authentication profiles are configured." in page
    auth_profiles.save(profile_id=None, name="o365", username="relay", password="s3cret!", actor="test")
    page = client_alice.get(reverse("routes:route-add")).content.decode()
    assert "o365" in page and "s3cret" not in page
    profile = AuthProfile.objects.get()
    data = form_data("example.com", [("0", "mx.example.com", "")], auth_profile=str(profile.pk))
    assert client_alice.post(reverse("routes:route-add"), data).status_code == 302
    assert Route.objects.get().auth_profile == profile


def test_bulk_delete_confirms_then_deletes(client_alice):
    a, b = make_route("a.example"), make_route("b.example")
    make_route("c.example")
    confirm = client_alice.get(reverse("routes:route-delete"), {"ids": [a.pk, b.pk]})
    assert confirm.status_code == 200 and "Delete 2 routes?" in confirm.content.decode()
    assert Route.objects.count() == 3
    response = client_alice.post(reverse("routes:route-delete"), {"ids": [a.pk, b.pk]})
    assert response.status_code == 302
    assert list(Route.objects.values_list("domain", flat=True)) == ["c.example"]
    assert AuditEntry.objects.filter(action="delete").count() == 2


def test_bulk_delete_skips_ids_that_are_no_ids(client_alice):
    a, b = make_route("a.example"), make_route("b.example")
    junk = [str(2**63), "9" * 40, "²", "-1", "x"]  # past a bigint, or not ASCII digits: skipped, never a 500
    response = client_alice.post(reverse("routes:route-delete"), {"ids": [*junk, a.pk]})
    assert response.status_code == 302
    assert list(Route.objects.values_list("domain", flat=True)) == [b.domain]


def test_clear_asks_then_clears(client_alice):
    make_route("a.example")
    make_route("ALL", "smart.example.net")
    assert "Are you sure" in client_alice.get(reverse("routes:routes-clear")).content.decode()
    client_alice.post(reverse("routes:routes-clear"))
    assert not Route.objects.exists()
    assert AuditEntry.objects.get(action="clear").before == {"a.example": "mx1.example.com", "ALL": "smart.example.net"}


def test_export_downloads_the_table(client_alice):
    make_route("example.com", "mx1.example.com/pri=10, [10.0.0.9]:2525/pri=20")
    make_route("ALL", "smart.example.net:587")
    response = client_alice.get(reverse("routes:routes-export"))
    assert response["Content-Disposition"].startswith('attachment; filename="smtp-routes-')
    lines = [line for line in response.content.decode().splitlines() if not line.startswith("#")]
    assert lines == ["example.com  mx1.example.com/pri=10, 10.0.0.9:2525/pri=20", "ALL          smart.example.net:587"]


def _upload(client, text, mode="replace", name="routes.txt"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = text.encode() if isinstance(text, str) else text
    return client.post(reverse("routes:routes-import"), {"file": SimpleUploadedFile(name, data), "mode": mode}, **HTMX)


def test_import_previews_then_applies_on_confirmation(client_alice):
    make_route("keep.example", "mx.keep.example")
    make_route("change.example", "old.example.net")
    make_route("gone.example", "mx.gone.example")
    text = "keep.example mx.keep.example\nchange.example new.example.net\nnew.example USEDNS\n"
    preview = _upload(client_alice, text)
    body = preview.content.decode()
    assert preview.status_code == 200
    assert "1 to add" in body and "1 to change" in body and "1 to remove" in body and "gone.example" in body
    assert Route.objects.count() == 3 and Route.objects.filter(domain="gone.example").exists()  # nothing yet
    token = body.split('name="token" value="')[1].split('"')[0]
    version = body.split('name="version" value="')[1].split('"')[0]
    done = client_alice.post(
        reverse("routes:routes-import"), {"token": token, "mode": "replace", "version": version}, **HTMX
    )
    assert done["HX-Redirect"] == reverse("routes:route-list")
    assert services.table_text() == {
        "keep.example": "mx.keep.example",
        "change.example": "new.example.net",
        "new.example": "USEDNS",
    }
    entry = AuditEntry.objects.get(action="import")
    assert entry.before == {"change.example": "old.example.net", "gone.example": "mx.gone.example"}


def test_import_preview_lists_each_route_host_by_host_and_warns_about_all(client_alice):
    make_route("xn--bcher-kva.example", "a.example.net, b.example.net:2525/pri=5, gone.example.net")
    make_route("ALL", "smarthost.example.net")
    text = (
        "xn--bcher-kva.example a.example.net/pri=10, b.example.net:2526/pri=5, new.example.net\n"
        "ALL relay1.example.net:587, relay2.example.net/pri=10\n"
    )
    body = _upload(client_alice, text).content.decode()
    route = body[body.index("bücher.example") : body.index("ALL (all other domains)")]
    assert (
        "<td>a.example.net</td><td>changed</td><td>a.example.net:25/pri=0</td><td>a.example.net:25/pri=10</td>" in route
    )
    assert "<td>b.example.net:2525/pri=5</td><td>b.example.net:2526/pri=5</td>" in route
    assert "<td>new.example.net</td><td>added</td><td>—</td><td>new.example.net:25/pri=0</td>" in route
    assert "<td>gone.example.net</td><td>removed</td><td>gone.example.net:25/pri=0</td><td>—</td>" in route
    warning = body[body.index('id="default-route-warning"') :]
    assert warning.index(
        "The file changes the ALL route: all mail for domains without a route will go to "
        "relay1.example.net:587/pri=0, relay2.example.net:25/pri=10."
    ) < warning.index("</p>")
    assert Route.objects.get(domain="ALL").hosts.get().host == "smarthost.example.net"  # nothing written


def test_import_preview_says_one_problem_in_the_singular(client_alice):
    one = _upload(client_alice, "bad_domain mx.example\n").content.decode()
    assert "Correct this problem and upload" in one and "these 1" not in one
    two = _upload(client_alice, "bad_domain mx.example\nx.example mx:99999\n").content.decode()
    assert "Correct these 2 problems and upload" in two


def test_import_merge_removes_nothing(client_alice):
    make_route("keep.example", "mx.keep.example")
    body = _upload(client_alice, "new.example mx.new.example\n", mode="merge").content.decode()
    assert "merge removes nothing" in body and "0 to remove" in body


def test_import_refuses_a_bad_file_listing_every_line(client_alice):
    make_route("keep.example")
    response = _upload(client_alice, "ok.example mx.ok.example\nbad_domain mx.example\nx.example mx:99999\n")
    assert response.status_code == 422
    body = response.content.decode()
    assert "line 2:" in body and "line 3:" in body and "Nothing was changed" in body
    assert list(Route.objects.values_list("domain", flat=True)) == ["keep.example"]


def test_import_refuses_binary_and_huge_files(client_alice):
    assert "binary file" in _upload(client_alice, b"\x00\x01\x02").content.decode()
    huge = _upload(client_alice, b"a.example mx.example.com\n" * 420_000)
    assert huge.status_code == 422 and "the limit is" in huge.content.decode()


def test_import_confirmation_refuses_a_stale_preview(client_alice):
    body = _upload(client_alice, "new.example mx.new.example\n").content.decode()
    token = body.split('name="token" value="')[1].split('"')[0]
    make_route("meanwhile.example")
    response = client_alice.post(
        reverse("routes:routes-import"), {"token": token, "mode": "replace", "version": "0"}, **HTMX
    )
    assert response.status_code == 409
    assert "changed since this preview" in response.content.decode()
    assert not Route.objects.filter(domain="new.example").exists()


def test_route_test_shows_match_and_host_order(client_alice):
    from datetime import timedelta

    from django.utils import timezone

    from delivery.models import HostStatus

    make_route(".example.com", "b.example.net/pri=20, a.example.net/pri=10, c.example.net/pri=10")
    HostStatus.objects.create(
        host="c.example.net", port=25, down_until=timezone.now() + timedelta(minutes=5), last_error="connection refused"
    )
    body = client_alice.get(reverse("routes:route-test"), {"address": "user@x.example.com"}, **HTMX).content.decode()
    assert body.lstrip().startswith('<div id="test-result"')
    assert ".example.com" in body
    assert body.index("a.example.net") < body.index("b.example.net") < body.index("c.example.net")
    assert "skipped" in body and "down" in body and "connection refused" in body
    none = client_alice.get(reverse("routes:route-test"), {"address": "u@other.test"}, **HTMX).content.decode()
    assert "delivered by its MX records" in none


def test_route_test_and_the_list_show_the_weights(client_alice):
    make_route("weights.example", "mx1.example.net/pri=10/weight=7, mx2.example.net/pri=10")
    body = client_alice.get(reverse("routes:route-test"), {"address": "u@weights.example"}, **HTMX).content.decode()
    assert '<th scope="col">Weight</th>' in body
    assert "<td>7</td>" in body and "<td>1</td>" in body
    listing = client_alice.get(reverse("routes:route-list")).content.decode()
    assert "weight 7" in listing and "weight 1" not in listing


def test_route_test_refuses_text_that_is_not_an_address_at_the_field(client_alice):
    make_route("ALL", "smarthost.example.net")
    response = client_alice.get(reverse("routes:route-test"), {"address": "not-an-address"}, **HTMX)
    assert response.status_code == 422
    body = response.content.decode()
    field = body[body.index('id="id_address"') : body.index("</form>")]
    assert 'aria-invalid="true"' in field and 'aria-describedby="address-errors"' in field
    assert "&quot;not-an-address&quot; is not an email address: type one like user@example.com" in field
    assert "Matching route" not in body and "Send test message" not in body
    sent = client_alice.post(reverse("routes:route-send-test"), {"address": "not-an-address"})
    assert sent.status_code == 422 and "Not sent" in sent.content.decode()


def test_one_post_flags_all_four_bad_fields(client_alice):
    data = form_data("", [("-1", "bad_host..name!", "70000")])
    body = client_alice.post(reverse("routes:route-add"), data, **HTMX).content.decode()
    assert "This field is required." in body  # the domain
    assert "Priority must be from 0 to 65535" in body
    assert "Port must be from 1 to 65535" in body
    assert "&quot;bad_host..name!&quot;: not a valid host name" in body
    assert "is not a whole number" not in body
    assert body.count('aria-invalid="true"') == 4
    assert not Route.objects.exists()


def test_a_duplicate_host_is_flagged_while_the_domain_is_wrong(client_alice):
    data = form_data("exa_mple.com", [("0", "127.0.0.1", "2525"), ("0", "127.0.0.1", "")])
    body = client_alice.post(reverse("routes:route-add"), data, **HTMX).content.decode()
    assert "contains &quot;_&quot;" in body
    assert "The host 127.0.0.1 already has an alternate port (2525)." in body
    assert "under another of its addresses or host names" in body


def test_read_only_user_cannot_edit(client, django_user_model):
    viewer = django_user_model.objects.create_user("victor", password="x" * 12)
    viewer.user_permissions.add(Permission.objects.get(codename="view_route"))
    client.force_login(viewer)
    assert client.get(reverse("routes:route-list")).status_code == 200
    assert client.get(reverse("routes:route-add")).status_code == 403
    assert client.post(reverse("routes:routes-clear")).status_code == 403
    nobody = django_user_model.objects.create_user("hal", password="x" * 12)
    client.force_login(nobody)
    assert client.get(reverse("routes:route-list")).status_code == 403


def test_route_test_connects_to_each_host_when_asked(client_alice):
    from aiosmtpd.controller import Controller

    from tests.routes.helpers import closed_port

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=closed_port(), server_hostname="peer.test")
    controller.start()
    try:
        make_route("loop.test", f"127.0.0.1:{controller.port}, 127.0.0.2:{closed_port()}/pri=10")
        body = client_alice.post(
            reverse("routes:route-test"), {"address": "u@loop.test", "connect": "1"}, **HTMX
        ).content.decode()
    finally:
        controller.stop()
    assert "220 peer.test" in body and "221" in body
    assert "answered" in body and "failed" in body and "no answer" in body


def test_route_test_says_a_host_outside_the_allowed_networks_was_not_connected(client_alice, settings):
    from esaroutes import egress
    from tests.routes.helpers import closed_port

    settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS = egress.parse("127.0.0.1/32")
    make_route("loop.test", f"127.0.0.2:{closed_port()}")
    response = client_alice.post(reverse("routes:route-test"), {"address": "u@loop.test", "connect": "1"}, **HTMX)
    body = response.content.decode()
    assert response.status_code == 200 and "failed" in body
    assert "refused: 127.0.0.2 is outside ESAROUTES_DELIVERY_ALLOWED_NETWORKS: not connected" in body


def test_read_only_user_may_look_up_but_not_connect(client, django_user_model):
    viewer = django_user_model.objects.create_user("rita", password="x" * 12)
    viewer.user_permissions.add(Permission.objects.get(codename="view_route"))
    client.force_login(viewer)
    make_route("example.com", "127.0.0.1:1")
    assert client.get(reverse("routes:route-test"), {"address": "a@example.com"}).status_code == 200
    response = client.post(reverse("routes:route-test"), {"address": "a@example.com", "connect": "1"})
    assert response.status_code == 403


def test_changes_link_leads_to_the_audit_log_which_filters_unicode_domains(client_alice):
    make_route("xn--bcher-kva.example", "mx.example.com")
    make_route("other.example", "mx.example.com", actor="cli:bob")
    page = client_alice.get(reverse("routes:route-list")).content.decode()
    assert f'href="{reverse("routes:audit-list")}">Route changes</a>' in page
    old = client_alice.get(reverse("routes:audit-list"), {"q": "bücher"})
    assert old.status_code == 302 and old.url == reverse("delivery:audit-list") + "?q=b%C3%BCcher&object_type=route"
    body = client_alice.get(reverse("delivery:audit-list")).content.decode()
    assert "cli:bob" in body and "route bücher.example" in body and "xn--" not in body
    filtered = client_alice.get(reverse("delivery:audit-list"), {"q": "bücher"}, **HTMX).content.decode()
    assert filtered.lstrip().startswith('<section id="audit-table"')
    assert "bücher.example" in filtered and "other.example" not in filtered


def test_send_test_message_calls_the_listener_and_shows_its_reply(client_alice, monkeypatch):
    from delivery.listener import sendtest

    sent: list[str] = []

    def fake_send(to: str, sender: str | None = None) -> str:
        sent.append(to)
        return "250 ok queued as 42"

    monkeypatch.setattr(sendtest, "send_test_message", fake_send)
    make_route("example.com", "mx.example.com")
    page = client_alice.get(reverse("routes:route-test"), {"address": "u@example.com"}).content.decode()
    assert "Send test message" in page
    body = client_alice.post(reverse("routes:route-send-test"), {"address": "u@example.com"}, **HTMX).content.decode()
    assert sent == ["u@example.com"] and "250 ok queued as 42" in body

    def failing(to: str, sender: str | None = None) -> str:
        raise RuntimeError("554 no thanks")

    monkeypatch.setattr(sendtest, "send_test_message", failing)
    body = client_alice.post(reverse("routes:route-send-test"), {"address": "u@example.com"}, **HTMX).content.decode()
    assert "Not sent: 554 no thanks" in body


def test_route_test_shows_the_destination_control_that_applies(client_alice):
    from delivery import slots
    from routes import services

    slots.flush()
    make_route("dest.example", "mx1.example.net", tls="required")
    services.create_destination(
        data=services.DestinationData(destination=".example", max_connections=4, ip_preference="ipv6-preferred"),
        actor="test",
    )
    assert slots.acquire("dest.example", "w:1", 4)
    body = client_alice.get(reverse("routes:route-test"), {"address": "u@dest.example"}, **HTMX).content.decode()
    table = body[body.index('id="destination-control"') :]
    assert "<strong>.example</strong>" in table and "its own copy of the limits, for dest.example" in table
    assert "1 in use now, of at most 4" in table
    assert "<td>required</td>" in table  # the route's required beats the entry's preferred
    assert "IPv6 preferred" in table and "<td>none</td>" in table and "<td>Default</td>" in table
    mx = client_alice.get(reverse("routes:route-test"), {"address": "u@other.test"}, **HTMX).content.decode()
    assert "delivered by its MX records" in mx and 'id="destination-control"' in mx and "<td>Default</td>" in mx
    slots.flush()


def test_route_test_shows_the_slots_of_each_destination_ip_in_the_per_ip_scope(client_alice):
    from delivery import slots
    from routes import services

    slots.flush()
    make_route("dest.example", "mx1.example.net")
    services.create_destination(
        data=services.DestinationData(destination="dest.example", max_connections=3, limit_scope="ip"), actor="test"
    )
    assert slots.acquire("dest.example|192.0.2.1", "w:1", 3) and slots.acquire("dest.example|192.0.2.1", "w:2", 3)
    assert slots.acquire("dest.example|2001:db8::1", "w:3", 3)
    assert slots.acquire("other.example", "w:4", 3)  # another domain's: not counted here
    body = client_alice.get(reverse("routes:route-test"), {"address": "u@dest.example"}, **HTMX).content.decode()
    table = body[body.index('id="destination-control"') :]
    assert "3 in use now, of at most 3 per destination IP" in table
    assert "192.0.2.1: 2, 2001:db8::1: 1" in table
    slots.flush()
