"""`/api/v1/bounce-profiles/`: the happy path and each refusal (role, read-only token, validation at its field,
If-Match, the Default kept, a profile in use), every change audited with the token's name."""

from __future__ import annotations

import pytest
from django.urls import reverse

from delivery import bounce_profiles
from delivery.models import BounceProfile
from routes import services
from routes.models import AuditEntry, DestinationControl
from tests.api.conftest import is_problem
from tests.routes.helpers import make_route

URL = "/api/v1/bounce-profiles/"
FIELDS = {
    "id",
    "is_default",
    "name",
    "max_retries",
    "max_queue_lifetime",
    "initial_retry",
    "max_retry_timeout",
    "send_bounces",
    "send_warnings",
    "warning_interval",
    "warning_max",
    "after_possible_delivery",
}


def new_profile(client, name="Short", **extra):
    return client.post(URL, {"name": name, **extra}, format="json")


def audited() -> list[tuple[str, str, str]]:
    rows = AuditEntry.objects.filter(object_type=bounce_profiles.OBJECT).order_by("pk")
    return list(rows.values_list("action", "actor_name", "object_repr"))


def test_create_read_list_change_replace_delete_and_audit(bob, api_client):
    client = api_client(bob, name="cmdb")
    response = new_profile(
        client, max_retries=5, initial_retry=30, send_warnings=True, warning_interval=600, warning_max=3
    )
    assert response.status_code == 201, response.content
    profile = response.json()
    assert set(profile) == FIELDS
    assert (profile["max_retries"], profile["initial_retry"], profile["warning_max"]) == (5, 30, 3)
    assert profile["max_queue_lifetime"] == 259_200 and profile["after_possible_delivery"] == "resend"
    assert profile["send_warnings"] is True and profile["send_bounces"] is True and profile["is_default"] is False
    url = f"{URL}{profile['id']}/"
    assert response["Location"].endswith(url)
    read = client.get(url)
    assert read.json() == profile and read["ETag"] == response["ETag"]
    assert [p["name"] for p in client.get(URL).json()["results"]] == ["Default", "Short"]
    changed = client.patch(
        url, {"send_bounces": False, "after_possible_delivery": "delivered"}, format="json", HTTP_IF_MATCH=read["ETag"]
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["send_bounces"] is False and changed.json()["max_retries"] == 5
    assert changed["ETag"] != read["ETag"] and client.get(url)["ETag"] == changed["ETag"]
    replaced = client.put(url, {"name": "Shorter"}, format="json", HTTP_IF_MATCH=changed["ETag"])
    assert replaced.status_code == 200, replaced.content
    assert replaced.json()["max_retries"] == 100 and replaced.json()["send_bounces"] is True  # PUT: the defaults
    assert client.delete(url, HTTP_IF_MATCH=replaced["ETag"]).status_code == 204
    assert not BounceProfile.objects.filter(pk=profile["id"]).exists()
    assert audited() == [
        ("create", "api:bob/cmdb", "Short"),
        ("update", "api:bob/cmdb", "Short"),
        ("update", "api:bob/cmdb", "Shorter"),
        ("delete", "api:bob/cmdb", "Shorter"),
    ]
    update = AuditEntry.objects.filter(object_type=bounce_profiles.OBJECT, action="update").order_by("pk").first()
    assert update is not None and update.before["send_bounces"] is True and update.after["send_bounces"] is False


def test_a_write_that_changes_nothing_is_not_audited(bob, api_client):
    client = api_client(bob)
    made = new_profile(client)
    url = f"{URL}{made.json()['id']}/"
    same = client.patch(url, {"max_retries": 100}, format="json", HTTP_IF_MATCH=made["ETag"])
    assert same.status_code == 200 and same["ETag"] == made["ETag"]
    assert [a for a, _, _ in audited()] == ["create"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "Default"}, "name"),  # taken
        ({"name": "p", "initial_retry": 0}, "initial_retry"),
        ({"name": "p", "initial_retry": 600, "max_retry_timeout": 60}, "max_retry_timeout"),
        ({"name": "p", "max_queue_lifetime": 0}, "max_queue_lifetime"),
        ({"name": "p", "warning_interval": 0}, "warning_interval"),
        ({"name": "p", "warning_max": 0}, "warning_max"),
        ({"name": "p", "warning_max": 101}, "warning_max"),
        ({"name": "p", "max_retries": -1}, "max_retries"),
        ({"name": "p", "max_retries": 2**31}, "max_retries"),  # past the column: a 400, never the database's 500
        ({"name": "p", "max_queue_lifetime": 10**20}, "max_queue_lifetime"),
        ({"name": "p", "send_warnings": "perhaps"}, "send_warnings"),
        ({"name": "p", "after_possible_delivery": "maybe"}, "after_possible_delivery"),
    ],
)
def test_invalid_profiles_are_refused_at_their_field(bob, api_client, body, field):
    is_problem(api_client(bob).post(URL, body, format="json"), 400, field)
    assert list(BounceProfile.objects.values_list("name", flat=True)) == ["Default"]
    assert audited() == []


def test_a_change_is_checked_against_the_whole_profile(bob, api_client):
    client = api_client(bob)
    made = new_profile(client, initial_retry=60, max_retry_timeout=600)
    url = f"{URL}{made.json()['id']}/"
    body = is_problem(client.patch(url, {"initial_retry": 900}, format="json", HTTP_IF_MATCH="*"), 400)
    assert [e["field"] for e in body["errors"]] == ["max_retry_timeout"]
    is_problem(client.patch(url, {"name": "Default"}, format="json", HTTP_IF_MATCH="*"), 400, "name")
    assert BounceProfile.objects.get(pk=made.json()["id"]).initial_retry == 60


def test_the_default_profile_is_neither_deleted_nor_renamed(bob, api_client):
    default = BounceProfile.objects.get(name="Default")
    client = api_client(bob)
    url = f"{URL}{default.pk}/"
    assert client.get(url).json()["is_default"] is True
    body = is_problem(client.delete(url, HTTP_IF_MATCH="*"), 409)
    assert "cannot be deleted" in body["detail"]
    body = is_problem(client.patch(url, {"name": "Main"}, format="json", HTTP_IF_MATCH="*"), 400, "name")
    assert "keep its name" in body["detail"]
    changed = client.patch(url, {"max_retries": 7}, format="json", HTTP_IF_MATCH="*")
    assert changed.status_code == 200 and changed.json()["max_retries"] == 7 and changed.json()["is_default"]
    assert BounceProfile.objects.get(pk=default.pk).name == "Default"
    assert [a for a, _, _ in audited()] == ["update"]


def test_a_profile_routes_use_is_kept_and_destination_controls_let_go(bob, api_client):
    client = api_client(bob)
    used = new_profile(client, "Used").json()
    route = make_route("a.example", bounce_profile_id=used["id"])
    body = is_problem(client.delete(f"{URL}{used['id']}/", HTTP_IF_MATCH="*"), 409)
    assert "1 route uses this bounce profile (a.example)" in body["detail"]
    assert BounceProfile.objects.filter(pk=used["id"]).exists()
    route.refresh_from_db()
    assert route.bounce_profile_id == used["id"]

    loose = new_profile(client, "Loose").json()
    services.create_destination(
        data=services.DestinationData(destination="dest.test", bounce_profile_id=loose["id"]), actor="test"
    )
    version = services.current_version()
    assert client.delete(f"{URL}{loose['id']}/", HTTP_IF_MATCH="*").status_code == 204
    assert DestinationControl.objects.get(destination="dest.test").bounce_profile_id is None
    assert services.current_version() > version  # the destination table changed: every process reloads it
    entry = AuditEntry.objects.get(object_type=bounce_profiles.OBJECT, action="delete")
    assert entry.before["destination_controls"] == ["dest.test"] and entry.object_repr == "Loose"


def test_writes_need_the_current_etag(bob, api_client):
    client = api_client(bob)
    made = new_profile(client)
    url = f"{URL}{made.json()['id']}/"
    is_problem(client.patch(url, {"max_retries": 3}, format="json"), 428)
    is_problem(client.put(url, {"name": "Short"}, format="json"), 428)
    is_problem(client.delete(url), 428)
    assert client.patch(url, {"max_retries": 3}, format="json", HTTP_IF_MATCH=made["ETag"]).status_code == 200
    is_problem(client.put(url, {"name": "Short"}, format="json", HTTP_IF_MATCH=made["ETag"]), 412)
    is_problem(client.delete(url, HTTP_IF_MATCH=made["ETag"]), 412)
    assert BounceProfile.objects.get(pk=made.json()["id"]).max_retries == 3
    is_problem(client.get(f"{URL}999999/"), 404)
    is_problem(client.patch(f"{URL}999999/", {"max_retries": 3}, format="json", HTTP_IF_MATCH="*"), 404)


def test_roles_and_read_only_tokens(alice, bob, carol, dave, api_client):
    made = new_profile(api_client(alice))
    assert made.status_code == 201
    url = f"{URL}{made.json()['id']}/"
    reader = api_client(carol)
    assert reader.get(url).status_code == 200 and reader.get(URL).status_code == 200
    is_problem(new_profile(reader, "Other"), 403)
    is_problem(reader.patch(url, {"max_retries": 3}, format="json", HTTP_IF_MATCH="*"), 403)
    is_problem(reader.delete(url, HTTP_IF_MATCH="*"), 403)
    is_problem(api_client(dave).get(URL), 403)
    is_problem(api_client(dave).get(url), 403)
    read_only = api_client(bob, read_only=True)
    assert read_only.get(url).status_code == 200
    is_problem(read_only.patch(url, {"max_retries": 3}, format="json", HTTP_IF_MATCH="*"), 403)
    is_problem(read_only.delete(url, HTTP_IF_MATCH="*"), 403)
    is_problem(new_profile(read_only, "Other"), 403)
    assert sorted(BounceProfile.objects.values_list("name", "max_retries")) == [("Default", 100), ("Short", 100)]
    assert [a for a, _, _ in audited()] == ["create"]


def test_the_admin_goes_through_the_same_audited_service(client, alice):
    client.force_login(alice)
    data = {
        "name": "Admin made",
        "max_retries": "10",
        "max_queue_lifetime": "3600",
        "initial_retry": "60",
        "max_retry_timeout": "600",
        "send_bounces": "on",
        "warning_interval": "14400",
        "warning_max": "1",
        "after_possible_delivery": "resend",
    }
    assert client.post(reverse("admin:delivery_bounceprofile_add"), data).status_code == 302
    made = BounceProfile.objects.get(name="Admin made")
    change = reverse("admin:delivery_bounceprofile_change", args=[made.pk])
    assert client.post(change, {**data, "max_retries": "11"}).status_code == 302
    delete = reverse("admin:delivery_bounceprofile_delete", args=[made.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert audited() == [
        ("create", "alice", "Admin made"),
        ("update", "alice", "Admin made"),
        ("delete", "alice", "Admin made"),
    ]
