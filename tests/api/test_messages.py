"""POST /api/v1/messages: injection through the listener's intake, delivered like an SMTP message."""

from __future__ import annotations

import base64
import re

import pytest

from delivery import worker
from delivery.models import MailLogLine, Message, MessageBody
from routes.models import AuditEntry, RelayNetwork
from tests.api.conftest import is_problem
from tests.delivery.conftest import fresh_runner, hosts_text, queue_message  # noqa: F401  (fresh_runner: a fixture)
from tests.routes.helpers import make_route

URL = "/api/v1/messages"
RAW = "From: <app@origin.test>\r\nTo: <a@dest.test>\r\nSubject: hello\r\nMessage-ID: <m@origin.test>\r\n\r\nHello.\r\n"


def _lines(mid):
    return [line.text for line in MailLogLine.objects.order_by("id") if line.mid == mid or f"MID {mid} " in line.text]


def _shape(lines, mid):
    """A message's story with its numbers taken out: what both ways of arriving must have in common."""
    out = []
    for text in lines:
        text = re.sub(r"\b(MID|ICID|DCID|RID) \d+", r"\1 N", text.replace(f"MID {mid}", "MID N"))
        text = re.sub(r"port: \d+|\d+ bytes|:\d+|queued as \d+", "#", text)
        out.append(text)
    return out


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_runner")
def test_an_injected_message_is_delivered_and_its_story_reads_as_an_smtp_one(api_client, bob, peers):
    peer = peers.start()
    make_route("dest.test", hosts_text((peer, 0)))
    response = api_client(bob, name="deploy").post(
        URL, {"sender": "sender@origin.test", "recipients": ["a@dest.test"], "message": RAW}, format="json"
    )
    assert response.status_code == 201, response.content
    mid, icid = response.json()["mid"], response.json()["icid"]
    message = Message.objects.get(pk=mid)
    assert (message.icid, message.sender, message.subject, message.auth_user) == (
        icid,
        "sender@origin.test",
        "hello",
        "api:bob/deploy",
    )
    body = bytes(MessageBody.objects.get(message_id=mid).data)
    assert body.startswith(b"Received: from [127.0.0.1] ([127.0.0.1])\r\n\tby ") and b"with HTTP id" in body
    assert body.endswith(RAW.encode())
    worker.deliver_batch([mid])
    (got,) = peer.wait_for_messages(1)
    assert got.rcpt_tos == ("a@dest.test",) and got.content.endswith(RAW.encode())
    connection = [line.text for line in MailLogLine.objects.filter(icid=icid).order_by("id")]
    assert connection[0].startswith(f"New SMTP ICID {icid} interface API ") and "address 127.0.0.1" in connection[0]
    assert f"SMTP Auth: (ICID {icid}) succeeded for user: api:bob/deploy using AUTH mechanism: API TOKEN" in connection
    assert connection[-1] == f"ICID {icid} close"
    smtp_mid = queue_message("a@dest.test", subject="hello")
    worker.deliver_batch([smtp_mid])
    injected = _shape(_lines(mid), mid)
    smtp = _shape(_lines(smtp_mid), smtp_mid)
    assert injected == smtp
    assert any(line.startswith("Message done DCID N MID N to RID [0]") for line in injected)


@pytest.mark.django_db
def test_a_raw_message_with_the_envelope_in_the_query(api_client, alice):
    make_route("dest.test", "127.0.0.1:9")
    response = api_client(alice).post(
        f"{URL}?sender=app@origin.test&recipient=a@dest.test&recipient=b@dest.test",
        RAW.encode(),
        content_type="message/rfc822",
    )
    assert response.status_code == 201, response.content
    message = Message.objects.get(pk=response.json()["mid"])
    assert sorted(message.recipients.values_list("address", flat=True)) == ["a@dest.test", "b@dest.test"]


@pytest.mark.django_db
def test_base64_keeps_an_8bit_body(api_client, alice):
    make_route("dest.test", "127.0.0.1:9")
    raw = "Subject: é\r\n\r\nÉté.\r\n".encode("latin-1")
    response = api_client(alice).post(
        URL,
        {"sender": "", "recipients": ["a@dest.test"], "message_base64": base64.b64encode(raw).decode()},
        format="json",
    )
    assert response.status_code == 201
    assert bytes(MessageBody.objects.get(message_id=response.json()["mid"]).data).endswith(raw)


@pytest.mark.django_db
def test_relaying_is_refused_as_the_listener_refuses_it(api_client, alice):
    RelayNetwork.objects.all().delete()  # the defaults relay for loopback, where the test client is
    response = api_client(alice).post(
        URL, {"sender": "a@origin.test", "recipients": ["x@elsewhere.test"], "message": RAW}, format="json"
    )
    body = is_problem(response, 403, "recipients")
    assert "Relaying denied" in body["detail"] and not Message.objects.exists()
    RelayNetwork.objects.create(network="127.0.0.0/8")  # the caller's address relays, as an SMTP client's would
    assert (
        api_client(alice)
        .post(URL, {"sender": "a@origin.test", "recipients": ["x@elsewhere.test"], "message": RAW}, format="json")
        .status_code
        == 201
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "field", "status"),
    [
        ({"sender": "bad sender", "recipients": ["a@dest.test"], "message": RAW}, "sender", 400),
        ({"sender": "", "recipients": [], "message": RAW}, "recipients", 400),
        ({"sender": "", "recipients": ["no-at-sign"], "message": RAW}, "recipients", 400),
        ({"sender": "", "recipients": ["a@dest.test"]}, "message", 400),
        ({"sender": "", "recipients": ["a@dest.test"], "message_base64": "***"}, "message_base64", 400),
        ({"sender": "", "recipients": ["a@dest.test"], "message": "   "}, "message", 400),
    ],
)
def test_bad_input_is_a_problem_at_its_field(api_client, alice, payload, field, status):
    make_route("dest.test", "127.0.0.1:9")
    response = api_client(alice).post(URL, payload, format="json")
    is_problem(response, response.status_code, field)
    assert response.status_code == status and not Message.objects.exists()


@pytest.mark.django_db
def test_the_listener_limits_apply(api_client, alice, settings):
    make_route("dest.test", "127.0.0.1:9")
    settings.ESAROUTES_SMTP_MAX_RECIPIENTS = 2
    three = ["a@dest.test", "b@dest.test", "c@dest.test"]
    response = api_client(alice).post(URL, {"sender": "", "recipients": three, "message": RAW}, format="json")
    assert "at most 2" in is_problem(response, response.status_code, "recipients")["errors"][0]["detail"]
    assert response.status_code in (400, 422)
    settings.ESAROUTES_SMTP_MAX_MESSAGE_SIZE = 50
    response = api_client(alice).post(URL, {"sender": "", "recipients": ["a@dest.test"], "message": RAW}, format="json")
    is_problem(response, 413, "message")
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_roles_and_read_only_tokens_are_refused(api_client, carol, dave, bob):
    make_route("dest.test", "127.0.0.1:9")
    payload = {"sender": "", "recipients": ["a@dest.test"], "message": RAW}
    is_problem(api_client(carol).post(URL, payload, format="json"), 403)
    is_problem(api_client(dave).post(URL, payload, format="json"), 403)
    is_problem(api_client(bob, read_only=True).post(URL, payload, format="json"), 403)
    assert not Message.objects.exists() and not AuditEntry.objects.filter(object_type="message").exists()
