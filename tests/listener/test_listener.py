"""The listener over real SMTP on loopback: access, limits, timeouts, malformed input, durability, log lines."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import OperationalError, connection

from delivery import maillog
from delivery.listener import headers, sendtest
from delivery.models import MailLogLine, Message, MessageBody, Recipient
from delivery.spool import intake
from routes.models import RecipientAccessRule, RelayNetwork, Route, SmtpUser
from tests.conftest import needs_postgres
from tests.listener.conftest import SENDER, log_texts, send, wait_for

ESA_LINE = re.compile(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} Info: (.*)$")


def not_a_relay_client(smtpd: Any) -> None:
    RelayNetwork.objects.all().delete()
    RelayNetwork.objects.create(network="192.0.2.0/24")
    smtpd.refresh()


def mail_current() -> list[str]:
    assert maillog.writer.flush(10)  # the listener appends from its background writer, just after the commit
    path = Path(settings.MAIL_LOG_DIR) / "mail.current"
    header = ("Begin Logfile", "Version: ", "Time offset from UTC")
    return [line for line in path.read_text().splitlines() if not any(h in line for h in header)]


# --- the happy path, line by line ------------------------------------------------------------------------------


def test_relay_client_message_is_stored_and_logged_line_by_line(smtpd):
    body = (
        b"From: Alice <alice@sender.test>\r\nTo: bob@dest.test\r\nMessage-ID: <m1@sender.test>\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9_report?=\r\n\r\nHello Bob.\r\n"
    )
    errors, reply = smtpd.send(["bob@dest.test", "Carol@Bücher.Example"], body, mail_options=["SMTPUTF8"])
    assert errors == {}
    queued = re.fullmatch(r"2\.0\.0 Ok: queued as (\d+)", reply)
    assert queued is not None
    mid = int(queued.group(1))
    message = Message.objects.get(pk=mid)
    assert message.sender == SENDER
    assert message.subject == "café report"
    assert message.message_id == "<m1@sender.test>"
    assert message.client_address == "127.0.0.1"
    assert message.state == Message.State.QUEUED
    data = bytes(MessageBody.objects.get(message=message).data)
    assert data.startswith(b"Received: from ")
    assert b"by relay.test (esaroutes) with ESMTP id " in data
    assert data.endswith(body)
    assert message.size == len(data)
    rcpts = list(Recipient.objects.filter(message=message).values_list("rid", "address", "domain", "state"))
    assert rcpts == [
        (0, "bob@dest.test", "dest.test", "queued"),
        (1, "Carol@Bücher.Example", "xn--bcher-kva.example", "queued"),
    ]
    icid = message.icid
    wait_for(lambda: MailLogLine.objects.filter(text=f"ICID {icid} close").exists())
    expected = [
        f"New SMTP ICID {icid} interface Data 1 (127.0.0.1) address 127.0.0.1 reverse dns host unknown verified no",
        f"ICID {icid} RELAY SG RELAYLIST match 127.0.0.0/8 SBRS not enabled",
        f"Start MID {mid} ICID {icid}",
        f"MID {mid} ICID {icid} From: <{SENDER}>",
        f"MID {mid} ICID {icid} RID 0 To: <bob@dest.test>",
        f"MID {mid} ICID {icid} RID 1 To: <Carol@Bücher.Example>",
        f"MID {mid} Message-ID '<m1@sender.test>'",
        f"MID {mid} Subject 'café report'",
        f"MID {mid} ready {len(data)} bytes from <{SENDER}>",
        f"MID {mid} queued for delivery",
        f"ICID {icid} close",
    ]
    assert log_texts() == expected
    assert set(MailLogLine.objects.filter(mid=mid).values_list("icid", flat=True)) == {icid, None}
    file_lines = mail_current()
    assert [m.group(1) if (m := ESA_LINE.fullmatch(line)) else line for line in file_lines] == expected


def test_null_sender_is_stored_as_empty(smtpd):
    errors, _ = smtpd.send(["bob@dest.test"], sender="")
    assert errors == {}
    message = Message.objects.get()
    assert message.sender == ""
    assert f"MID {message.pk} ready {message.size} bytes from <>" in log_texts()


def test_subject_with_cr_lf_cannot_start_a_log_line(smtpd):
    body = b"Subject: =?utf-8?q?hello=0D=0AThu_Jan__1_00:00:00_2026_Info:_MID_1_queued_for_delivery?=\r\n\r\nx\r\n"
    smtpd.send(["bob@dest.test"], body)
    message = Message.objects.get()
    assert "\r\n" in message.subject
    wait_for(lambda: MailLogLine.objects.filter(text__endswith=" close").exists())
    for line in mail_current():
        assert ESA_LINE.fullmatch(line), line
    subject_line = next(t for t in log_texts() if " Subject " in t)
    assert "\\r\\n" in subject_line and "\n" not in subject_line


# --- relaying: network, RAT, AUTH --------------------------------------------------------------------------------


def test_relay_network_may_send_anywhere(smtpd):
    errors, _ = smtpd.send(["anyone@anywhere.test"])
    assert errors == {}


def test_client_outside_relay_networks_is_denied_unknown_domain(smtpd):
    not_a_relay_client(smtpd)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
        smtpd.send(["bob@elsewhere.test"])
    refused = info.value.recipients[0]
    assert (refused.code, refused.message) == (550, "5.7.1 <bob@elsewhere.test>... Relaying denied")
    assert Message.objects.count() == 0
    wait_for(lambda: MailLogLine.objects.filter(text__endswith=" close").exists())
    texts = log_texts()
    assert any(re.fullmatch(r"ICID \d+ ACCEPT SG UNKNOWNLIST match ALL SBRS not enabled", t) for t in texts)
    assert any(re.fullmatch(r"ICID \d+ To: <bob@elsewhere\.test> Rejected by RAT", t) for t in texts)


def test_domain_with_a_route_is_accepted_by_default_and_rat_rows_override(smtpd):
    Route.objects.create(domain="dest.test")
    Route.objects.create(domain=".sub.test")
    RecipientAccessRule.objects.create(domain="blocked.sub.test", action="reject")
    RecipientAccessRule.objects.create(domain=".rat.test", action="accept")
    not_a_relay_client(smtpd)
    from routes import snapshot

    snapshot.invalidate()
    smtpd.refresh()
    errors, _ = smtpd.send(["a@dest.test", "b@x.sub.test", "c@y.rat.test", "d@blocked.sub.test", "e@sub.test"])
    assert sorted(errors) == ["d@blocked.sub.test", "e@sub.test"]
    assert all(code == 550 for code, _ in errors.values())
    assert list(Recipient.objects.order_by("rid").values_list("address", flat=True)) == [
        "a@dest.test",
        "b@x.sub.test",
        "c@y.rat.test",
    ]


def test_an_all_route_does_not_open_relaying(smtpd):
    Route.objects.create(domain="ALL")
    not_a_relay_client(smtpd)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        smtpd.send(["bob@elsewhere.test"])
    RecipientAccessRule.objects.create(domain="ALL", action="reject")
    smtpd.refresh()
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        smtpd.send(["bob@elsewhere.test"])


@pytest.mark.parametrize(
    "rcpt",
    [
        b"<@dest.test:evil@elsewhere.test>",
        b"<evil%elsewhere.test@dest.test>",
        b"<elsewhere.test!evil@dest.test>",
        b"<evil@[192.0.2.1]>",
    ],
)
def test_source_routes_percent_hack_and_literals_refused_for_non_relay_clients(smtpd, rcpt):
    RecipientAccessRule.objects.create(domain="dest.test", action="accept")
    not_a_relay_client(smtpd)
    c = smtpd.raw()
    c.reply()
    assert c.cmd(b"EHLO client.test").startswith(b"250")
    assert c.cmd(b"MAIL FROM:<a@sender.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:" + rcpt).startswith(b"550 5.7.1")
    assert c.cmd(b"RCPT TO:<ok@dest.test>").startswith(b"250")
    c.close()


def test_auth_user_may_relay_only_after_starttls(smtpd):
    SmtpUser.objects.create(username="app", password=make_password("s3cret-password"))
    not_a_relay_client(smtpd)
    c = smtpd.raw()
    c.reply()
    ehlo = c.cmd(b"EHLO client.test")
    assert b"STARTTLS" in ehlo and b"AUTH" not in ehlo and b"PIPELINING" in ehlo and b"SIZE 10485760" in ehlo
    assert c.cmd(b"AUTH PLAIN AGFwcABzM2NyZXQtcGFzc3dvcmQ=").startswith(b"538")
    c.close()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        smtpd.send(["bob@elsewhere.test"], start_tls=True, login=("app", "wrong"))
    errors, reply = smtpd.send(["bob@elsewhere.test"], start_tls=True, login=("app", "s3cret-password"))
    assert errors == {} and "queued as" in reply
    message = Message.objects.get()
    assert message.auth_user == "app"
    assert b"with ESMTPSA id" in bytes(message.body.data)
    texts = log_texts()
    assert any(re.fullmatch(rf"ICID {message.icid} TLS success protocol TLSv1\.[23] cipher \S+", t) for t in texts)


def test_auth_without_tls_when_allowed(start_listener):
    smtpd = start_listener(auth_without_tls=True)
    SmtpUser.objects.create(username="app", password=make_password("s3cret-password"))
    not_a_relay_client(smtpd)
    errors, _ = smtpd.send(["bob@elsewhere.test"], login=("app", "s3cret-password"))
    assert errors == {}
    SmtpUser.objects.update(is_active=False)
    smtpd.refresh()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        smtpd.send(["bob@elsewhere.test"], login=("app", "s3cret-password"))


# --- limits ----------------------------------------------------------------------------------------------------


def test_message_size_limit(start_listener):
    smtpd = start_listener(max_message_size=2000)
    c = smtpd.raw()
    c.reply()
    assert b"SIZE 2000" in c.cmd(b"EHLO client.test")
    assert c.cmd(b"MAIL FROM:<a@sender.test> SIZE=5000").startswith(b"552")
    assert c.cmd(b"MAIL FROM:<a@sender.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<b@dest.test>").startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")
    assert c.cmd(b"Subject: big\r\n\r\n" + b"x" * 70 + (b"\r\n" + b"x" * 70) * 40 + b"\r\n.").startswith(b"552")
    c.close()
    assert Message.objects.count() == 0


def test_recipient_limit(start_listener):
    smtpd = start_listener(max_recipients=3)
    errors, _ = smtpd.send([f"r{i}@dest.test" for i in range(5)])
    assert sorted(errors) == ["r3@dest.test", "r4@dest.test"]
    assert {code for code, _ in errors.values()} == {452}
    assert Recipient.objects.count() == 3


def test_connections_per_client_limit(start_listener):
    smtpd = start_listener(max_connections_per_client=2)
    first, second = smtpd.raw(), smtpd.raw()
    assert first.reply().startswith(b"220") and second.reply().startswith(b"220")
    third = smtpd.raw()
    assert third.reply().startswith(b"421 4.7.0")
    assert third.closed()
    first.close()
    second.close()
    wait_for(lambda: not smtpd.thread.listener.sessions)
    fourth = smtpd.raw()
    assert fourth.reply().startswith(b"220")
    fourth.close()


def test_command_timeout_drops_a_stalled_client(start_listener):
    smtpd = start_listener(command_timeout=0.3)
    c = smtpd.raw(timeout=5)
    c.reply()
    assert c.closed()
    assert wait_for(lambda: MailLogLine.objects.filter(text__regex=r"^ICID \d+ close$").exists())  # we closed it


def test_a_failed_starttls_handshake_is_logged(smtpd):
    c = smtpd.raw(timeout=5)
    c.reply()
    c.cmd(b"EHLO client.test")
    assert c.cmd(b"STARTTLS").startswith(b"220")
    c.send(b"this is no TLS hello\r\n" * 4)
    assert c.closed()
    assert wait_for(lambda: MailLogLine.objects.filter(text__regex=r"^ICID \d+ TLS failed: .+").exists())


@pytest.mark.slow
def test_data_timeout_drops_a_stalled_client_and_stores_nothing(start_listener):
    smtpd = start_listener(data_timeout=0.3, command_timeout=5)
    c = smtpd.raw(timeout=5)
    c.reply()
    c.cmd(b"EHLO client.test")
    c.cmd(b"MAIL FROM:<a@sender.test>")
    c.cmd(b"RCPT TO:<b@dest.test>")
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: stalled\r\n\r\npart")
    assert c.closed()
    assert Message.objects.count() == 0


def test_too_many_errors_disconnects(start_listener):
    smtpd = start_listener(max_errors=3)
    c = smtpd.raw()
    c.reply()
    c.cmd(b"EHLO client.test")
    assert c.cmd(b"BOGUS").startswith(b"500")
    assert c.cmd(b"MAIL FROM:<a\x01b@sender.test>").startswith(b"553")
    c.send(b"VRFY\r\n")
    assert c.reply().startswith(b"501")
    assert c.reply().startswith(b"421 4.7.0")
    assert c.closed()


# --- malformed input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"MAIL FROM:<a\x00b@sender.test>", b"553"),
        (b"MAIL FROM:<a\x1bb@sender.test>", b"553"),
        (b"MAIL FROM:a@b@c@", b"553"),
        (b"MAIL FROM:<" + b"a" * 300 + b"@sender.test>", b"5"),
        (b"MAIL TO:<a@sender.test>", b"501"),
        (b"HELO", b"501"),
        (b"RCPT TO:<b@dest.test>", b"503"),
        (b"DATA", b"503"),
        (b"\xff\xfe", b"500"),
    ],
)
def test_malformed_commands_get_errors_not_crashes(smtpd, command, code):
    c = smtpd.raw()
    c.reply()
    c.cmd(b"EHLO client.test")
    assert c.cmd(command).startswith(code)
    assert c.cmd(b"NOOP").startswith(b"250")
    c.close()


@pytest.mark.parametrize(
    ("rcpt", "code"),
    [
        (b'<"john doe"@dest.test>', b"250"),
        (b"<j\x00d@dest.test>", b"501"),
        (b"<jd\x0d@dest.test>", b"501"),
        (b"<postmaster>", b"501"),
        (b"<@dest.test>", b"5"),
        (b"<>", b"5"),
    ],
)
def test_malformed_recipients(smtpd, rcpt, code):
    c = smtpd.raw()
    c.reply()
    c.cmd(b"EHLO client.test")
    c.cmd(b"MAIL FROM:<a@sender.test>")
    assert c.cmd(b"RCPT TO:" + rcpt).startswith(code)
    c.close()


def test_bad_helo_name_refused(smtpd):
    c = smtpd.raw()
    c.reply()
    assert c.cmd(b"EHLO bad\x01name").startswith(b"501")
    assert c.cmd(b"MAIL FROM:<a@sender.test>").startswith(b"503")
    c.close()


def test_pipelined_commands_are_answered_in_order(smtpd):
    c = smtpd.raw()
    c.reply()
    c.cmd(b"EHLO client.test")
    c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@dest.test>\r\nRCPT TO:<c@dest.test>\r\nDATA\r\n")
    assert [c.reply()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
    c.send(b"Subject: piped\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<d@dest.test>\r\nDATA\r\n")
    assert c.reply().startswith(b"250 2.0.0 Ok: queued as ")
    assert [c.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    c.send(b"Subject: second\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    assert c.reply().startswith(b"250 2.0.0")
    assert c.reply().startswith(b"221")
    assert Message.objects.count() == 2
    assert bytes(MessageBody.objects.order_by("pk").reverse()[0].data).endswith(b"\r\n\r\n.dot\r\n")


# --- durability ------------------------------------------------------------------------------------------------


def test_client_killed_mid_data_leaves_nothing_behind(smtpd):
    c = smtpd.raw()
    c.reply()
    c.cmd(b"EHLO client.test")
    c.cmd(b"MAIL FROM:<a@sender.test>")
    c.cmd(b"RCPT TO:<b@dest.test>")
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: cut\r\n\r\nhalf a mess")
    c.close()
    # gone without QUIT: the ESA's "lost", not "close"
    assert wait_for(lambda: MailLogLine.objects.filter(text__regex=r"^ICID \d+ lost$").exists())
    assert not MailLogLine.objects.filter(text__regex=r"^ICID \d+ close$").exists()
    assert (Message.objects.count(), MessageBody.objects.count(), Recipient.objects.count()) == (0, 0, 0)
    assert not MailLogLine.objects.filter(mid__isnull=False).exists()


def test_database_failure_answers_451_and_loses_nothing_once_back(smtpd, monkeypatch):
    real = intake.accept_many
    calls = []

    def failing_once(incomings, lines=(), **kw):
        calls.append(incomings)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(incomings, lines, **kw)

    monkeypatch.setattr(intake, "accept_many", failing_once)

    async def scenario():
        smtp = aiosmtplib.SMTP(hostname=smtpd.host, port=smtpd.port, timeout=20, start_tls=False)
        await smtp.connect()
        try:
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await smtp.sendmail(SENDER, ["bob@dest.test"], b"Subject: retry\r\n\r\nx\r\n")
            assert info.value.code == 451
            assert info.value.message.startswith("4.3.0 ")
            return await smtp.sendmail(SENDER, ["bob@dest.test"], b"Subject: retry\r\n\r\nx\r\n")
        finally:
            smtp.close()

    errors, reply = asyncio.run(scenario())
    assert errors == {} and "queued as" in reply
    assert Message.objects.count() == 1 and Recipient.objects.count() == 1
    texts = log_texts()
    assert sum(t.startswith("New SMTP ICID") for t in texts) == 1  # the buffered lines were kept for the retry


@needs_postgres
def test_postgres_backends_killed_answers_451_then_recovers(smtpd):
    smtpd.send(["warm@dest.test"])  # the worker threads now hold connections
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    codes = []
    for _ in range(settings.ESAROUTES_SMTP_DB_THREADS + 2):
        try:
            smtpd.send(["bob@dest.test"])
        except aiosmtplib.SMTPDataError as exc:
            codes.append(exc.code)
            continue
        except aiosmtplib.SMTPResponseException as exc:  # a session refused before its greeting (ICID)
            codes.append(exc.code)
            continue
        codes.append(250)
        break
    assert codes[-1] == 250
    assert set(codes[:-1]) <= {451, 421}
    assert Recipient.objects.filter(address="bob@dest.test").count() == 1


def test_handler_errors_answer_451_and_log_a_traceback(smtpd, monkeypatch, caplog):
    def boom(data, names=()):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(headers, "header_values", boom)
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        smtpd.send(["bob@dest.test"])
    assert info.value.code == 451
    assert "secret" not in info.value.message
    assert any(r.name.startswith("delivery.listener") and r.exc_info for r in caplog.records)
    assert Message.objects.count() == 0


# --- other clients, IPv6, the test-message helper ------------------------------------------------------------


def test_swaks_sends_through_the_listener(smtpd):
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed")
    out = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{smtpd.port}", "--to", "bob@dest.test", "--from", SENDER, "--pipeline"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Ok: queued as" in out.stdout
    assert Message.objects.count() == 1


def test_swaks_starttls_and_auth_login(smtpd):
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed")
    SmtpUser.objects.create(username="app", password=make_password("s3cret-password"))
    not_a_relay_client(smtpd)
    args = [swaks, "--server", f"127.0.0.1:{smtpd.port}", "--to", "bob@elsewhere.test", "--from", SENDER, "--tls"]
    out = subprocess.run(
        [*args, "--auth", "LOGIN", "--auth-user", "app", "--auth-password", "s3cret-password"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert Message.objects.get().auth_user == "app"


def test_smtp_source_many_sessions(smtpd):
    source = shutil.which("smtp-source") or (
        "/usr/sbin/smtp-source" if Path("/usr/sbin/smtp-source").exists() else None
    )
    if source is None:
        pytest.skip("Postfix smtp-source is not installed")
    out = subprocess.run(
        [source, "-s", "5", "-m", "40", "-l", "1024", "-f", SENDER, "-t", "bob@dest.test", f"127.0.0.1:{smtpd.port}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert Message.objects.count() == 40
    assert Recipient.objects.filter(address="bob@dest.test").count() == 40


def test_ipv6_listener(start_listener):
    if not __import__("socket").has_ipv6:
        pytest.skip("no IPv6")
    try:
        smtpd = start_listener(host="::1")
    except RuntimeError:
        pytest.skip("cannot bind ::1 here")
    errors, _ = asyncio.run(send("::1", smtpd.port, ["bob@dest.test"], b"Subject: v6\r\n\r\nx\r\n"))
    assert errors == {}
    message = Message.objects.get()
    assert message.client_address == "::1"
    assert f"ICID {message.icid} RELAY SG RELAYLIST match ::1/128 SBRS not enabled" in log_texts()
    assert b"[IPv6:::1]" in bytes(message.body.data)


def test_send_test_message_goes_through_the_listener(smtpd, settings):
    settings.ESAROUTES_SMTP_LISTEN = ("127.0.0.1", smtpd.port)
    reply = sendtest.send_test_message("bob@dest.test")
    mid = int(reply.rpartition(" ")[2])
    assert Message.objects.get(pk=mid).recipients.get().address == "bob@dest.test"
    not_a_relay_client(smtpd)
    with pytest.raises(RuntimeError, match=r"550 5\.7\.1"):
        sendtest.send_test_message("bob@elsewhere.test")


def test_the_route_testers_send_test_message_comes_from_its_sender(smtpd, settings, client, alice):
    from django.urls import reverse

    settings.ESAROUTES_SMTP_LISTEN = ("127.0.0.1", smtpd.port)
    client.force_login(alice)
    page = client.get(reverse("routes:route-test"), {"address": "bob@dest.test", "sender": "alerts@app.example"})
    assert 'name="sender" value="alerts@app.example"' in page.content.decode()
    url = reverse("routes:route-send-test")
    sent = client.post(url, {"address": "bob@dest.test", "sender": "alerts@app.example"})
    assert sent.status_code == 200 and "Test message queued" in sent.content.decode()
    assert Message.objects.get().sender == "alerts@app.example"
    client.post(url, {"address": "bob@dest.test", "sender": "<>"})
    client.post(url, {"address": "bob@dest.test"})
    senders = list(Message.objects.order_by("pk").values_list("sender", flat=True))
    assert senders == ["alerts@app.example", "", f"postmaster@{settings.ESAROUTES_HOSTNAME}"]
    bad = client.post(url, {"address": "bob@dest.test", "sender": "not-an-address"})
    assert bad.status_code == 422 and "Not sent: the sender:" in bad.content.decode()
    assert Message.objects.count() == 3


def test_sendtest_command(smtpd, settings, capsys):
    from django.core.management import call_command

    settings.ESAROUTES_SMTP_LISTEN = ("127.0.0.1", smtpd.port)
    call_command("sendtest", "--to", "bob@dest.test", "--subject", "hello")
    assert "Ok: queued as" in capsys.readouterr().out
    assert Message.objects.get().subject == "hello"
