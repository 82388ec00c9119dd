"""Every operator page, for every role: what each persona gets from the server (the UI hides the rest)."""

from __future__ import annotations

import pytest

from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db

OK, DENIED, TO_TRACKING = 200, 403, 302

# alice = Administrator, bob = Operator, carol = Read-only operator, dave = Help desk
PAGES = [
    ("/", (OK, OK, OK, TO_TRACKING)),
    ("/log/", (OK, OK, OK, OK)),
    ("/log/?mid={mid}", (OK, OK, OK, OK)),
    ("/tracking/", (OK, OK, OK, OK)),
    ("/tracking/?recipient=user", (OK, OK, OK, OK)),
    ("/tracking/{mid}/", (OK, OK, OK, OK)),
    ("/tracking/{mid}/raw", (OK, DENIED, DENIED, DENIED)),
    ("/queue/", (OK, OK, OK, DENIED)),
    ("/hosts/", (OK, OK, OK, DENIED)),
    ("/hosts/domain/dest.test/", (OK, OK, OK, DENIED)),
    ("/audit/", (OK, OK, OK, DENIED)),
]


@pytest.fixture
def mid() -> int:
    m = make_message()
    attempt(m, host="mx1.dest.test")
    return m.pk


@pytest.mark.parametrize(("path", "expected"), PAGES)
@pytest.mark.parametrize("who", range(4), ids=["alice", "bob", "carol", "dave"])
def test_each_role_gets_what_it_may_see(as_user, mid, path, expected, who):
    name = ("alice", "bob", "carol", "dave")[who]
    response = as_user(name).get(path.format(mid=mid))
    assert response.status_code == expected[who], (name, path)


@pytest.mark.parametrize("path", [p for p, _ in PAGES])
def test_pages_need_login(client, mid, path):
    response = client.get(path.format(mid=mid))
    assert response.status_code == 302
    assert response.url.startswith("/login/")


def test_navigation_hides_what_the_role_cannot_open(as_user):
    nav = as_user("dave").get("/tracking/").content.decode()
    assert 'href="/tracking/"' in nav and 'href="/log/"' in nav
    for hidden in ('href="/queue/"', 'href="/hosts/"', 'href="/audit/"', 'href="/routes/"', ">Dashboard<"):
        assert hidden not in nav
    nav = as_user("carol").get("/").content.decode()
    for shown in ('href="/queue/"', 'href="/hosts/"', 'href="/audit/"', 'href="/routes/"', 'href="/log/"'):
        assert shown in nav


def test_raw_download_link_only_for_administrators(as_user, mid):
    assert b"raw-download" in as_user("alice").get(f"/tracking/{mid}/").content
    assert b"raw-download" not in as_user("bob").get(f"/tracking/{mid}/").content


def test_raw_download_is_an_attachment(as_user, mid):
    response = as_user("alice").get(f"/tracking/{mid}/raw")
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == f'attachment; filename="mid-{mid}.eml"'
    assert b"Subject: Hello" in response.content
