from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import maillog
from delivery.models import MailLogLine
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db


OUTCOME = re.compile(
    r"^(Delivery start |Delayed: |Bounced: |Possible Delivery: |Message done |Message finished "
    r"|MID \d+ RID \[.*\] Response )"
)


def outcome_of(line, mid: int) -> bool:
    return line.mid == mid and OUTCOME.match(line.text) is not None


def ids(response) -> list[int]:
    return [int(i) for i in re.findall(r'class="line" data-id="(\d+)"', response.content.decode())]


def test_page_shows_the_newest_lines_oldest_first_with_a_tail_cursor(as_user):
    m = make_message()
    response = as_user("dave").get("/log/")
    assert response.status_code == 200
    shown = ids(response)
    assert shown == sorted(shown) and shown[-1] == MailLogLine.objects.latest("id").pk
    assert f"after={shown[-1]}" in response.content.decode()
    assert f"Start MID {m.pk}" not in response.content.decode()  # the MID is a link, not plain text
    assert f'MID <a href="/tracking/{m.pk}/" class="id-link">{m.pk}</a>' in response.content.decode()


def test_tail_returns_only_lines_after_the_cursor_and_204_when_none(as_user):
    make_message()
    client = as_user("carol")
    last = MailLogLine.objects.latest("id").pk
    assert client.get(f"/log/?after={last}", headers={"HX-Request": "true"}).status_code == 204
    m2 = make_message(subject="second")
    response = client.get(f"/log/?after={last}", headers={"HX-Request": "true"})
    assert response.status_code == 200
    new = ids(response)
    assert new == list(MailLogLine.objects.filter(id__gt=last).order_by("id").values_list("id", flat=True))
    body = response.content.decode()
    assert body.count('id="log-tail"') == 1 and f"after={new[-1]}" in body
    assert "second" in body and m2.pk


def test_tail_caps_rows_per_response(as_user, settings):
    settings.ESAROUTES_LOG_PAGE_ROWS = 10
    make_message()
    first = MailLogLine.objects.latest("id").pk
    maillog.writer.write([maillog.lines.queued(i) for i in range(25)], at=timezone.now())
    response = as_user("alice").get(f"/log/?after={first}", headers={"HX-Request": "true"})
    assert len(ids(response)) == 10
    assert f"after={ids(response)[-1]}" in response.content.decode()


def test_tail_keeps_the_filters(as_user):
    m = make_message()
    other = make_message()
    last = MailLogLine.objects.latest("id").pk
    attempt(m, host="mx1.dest.test")
    attempt(other, host="mx1.dest.test")
    response = as_user("alice").get(f"/log/?mid={m.pk}&after={last}", headers={"HX-Request": "true"})
    texts = list(MailLogLine.objects.filter(id__in=ids(response)).values_list("mid", flat=True))
    assert texts and set(texts) == {m.pk}
    assert f"mid={m.pk}&amp;after=" in response.content.decode()


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ("mid={a}", lambda line, a, b, dcid: line.mid == a),
        ("dcid={dcid}", lambda line, a, b, dcid: line.dcid == dcid),
        ("icid=4242", lambda line, a, b, dcid: line.icid == 4242),
        ("domain=other.test", lambda line, a, b, dcid: line.domain == "other.test" or outcome_of(line, b)),
        ("host=mx1.dest.test", lambda line, a, b, dcid: line.host == "mx1.dest.test" or outcome_of(line, a)),
        ("level=Warning", lambda line, a, b, dcid: line.level == "Warning"),
        ("q=findme", lambda line, a, b, dcid: "findme" in line.text.lower()),
    ],
)
def test_filters(as_user, query, expect):
    a = make_message(subject="FindMe please", icid=4242)
    b = make_message(recipients=("x@other.test",))
    dcid = attempt(a, host="mx1.dest.test")
    maillog.writer.write([maillog.lines.tls_required_failed(dcid, "192.0.2.1")], at=timezone.now())
    response = as_user("dave").get("/log/?" + query.format(a=a.pk, dcid=dcid))
    assert response.status_code == 200
    shown = list(MailLogLine.objects.filter(id__in=ids(response)))
    assert shown, query
    everything = MailLogLine.objects.all()
    assert {line.pk for line in shown} == {line.pk for line in everything if expect(line, a.pk, b.pk, dcid)}


def test_time_range_and_default_bound_of_text_search(as_user):
    old = timezone.now() - timedelta(days=3)
    make_message(subject="ancient needle", at=old)
    make_message(subject="recent needle")
    client = as_user("alice")
    response = client.get("/log/?q=needle")
    assert b"recent needle" in response.content and b"ancient needle" not in response.content
    assert b"log-bounded" in response.content
    since = (old - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    response = client.get(f"/log/?q=needle&since={since}")
    assert b"ancient needle" in response.content and b"recent needle" in response.content
    until = (old + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    response = client.get(f"/log/?since={since}&until={until}")
    assert b"ancient needle" in response.content and b"recent needle" not in response.content
    assert b'id="log-tail"' not in response.content  # a closed range does not follow


def test_older_lines_by_keyset(as_user, settings):
    settings.ESAROUTES_LOG_PAGE_ROWS = 10
    maillog.writer.write([maillog.lines.queued(i) for i in range(1, 31)], at=timezone.now())
    client = as_user("alice")
    first_page = ids(client.get("/log/"))
    assert len(first_page) == 10
    older = ids(client.get(f"/log/?before={first_page[0]}"))
    assert len(older) == 10 and older[-1] < first_page[0] and older == sorted(older)


@pytest.mark.parametrize("query", ["mid=abc", "since=yesterday", "level=Loud", "after=-1"])
def test_bad_filters_are_400(as_user, query):
    assert as_user("alice").get("/log/?" + query).status_code == 400


def test_html_in_a_line_is_text(as_user):
    make_message(subject="<script>alert(1)</script>")
    body = as_user("alice").get("/log/").content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_download_current_and_rolled_files(as_user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        make_message(subject="on disk")
    log = maillog.writer.log_file()
    saved = log.rollover()
    with django_capture_on_commit_callbacks(execute=True):
        make_message(subject="after rollover")
    client = as_user("dave")
    page = client.get("/log/").content.decode()
    assert "mail.current" in page and saved is not None and saved.name in page
    current = b"".join(client.get("/log/files/mail.current").streaming_content)
    assert b"after rollover" in current
    rolled = b"".join(client.get(f"/log/files/{saved.name}").streaming_content)
    assert b"on disk" in rolled
    assert client.get("/log/files/..%2Fsecret-key").status_code == 404
    assert client.get("/log/files/esaroutes.log").status_code == 404


def test_a_domain_or_host_filter_keeps_each_message_story_whole(as_user):
    """The domain is in the recipient's To: line and the host in its connection's lines; the outcome lines of
    those messages (on other hosts too, and Message finished) come with them, other messages' lines do not."""
    m = make_message(recipients=("x@story.test",))
    other = make_message(recipients=("y@elsewhere.test",))
    attempt(m, host="busy.story.test", code=452, reply="4.3.1 full", outcome="delayed")
    attempt(m, host="good.story.test")
    attempt(other, host="good.story.test")
    maillog.writer.write(
        [maillog.lines.message_finished(m.pk), maillog.lines.message_finished(other.pk)], at=timezone.now()
    )
    client = as_user("alice")
    for query in ("domain=story.test", "host=busy.story.test"):
        shown = list(MailLogLine.objects.filter(id__in=ids(client.get(f"/log/?{query}"))).order_by("id"))
        texts = [line.text for line in shown]
        assert any(t.startswith("Delayed: ") and f"MID {m.pk} " in t for t in texts), query
        assert f"Message finished MID {m.pk} done" in texts, query
        assert sum(t.startswith("Delivery start ") and f"MID {m.pk} " in t for t in texts) == 2, query
        assert grep_message_done(texts, m.pk), query
        assert not any(line.mid == other.pk for line in shown), query


def grep_message_done(texts: list[str], mid: int) -> bool:
    return any(re.match(rf"Message done DCID \d+ MID {mid} ", t) for t in texts)


@pytest.mark.parametrize("name", ["after", "before"])
def test_a_cursor_past_the_id_range_is_a_bad_filter_not_a_500(as_user, name):
    make_message()
    client = as_user("dave")
    assert client.get(f"/log/?{name}={2**63}").status_code == 400
    assert client.get(f"/log/?{name}={2**63}", headers={"HX-Request": "true"}).status_code == 422
    assert client.get(f"/log/?{name}={2**63 - 1}").status_code == 200
