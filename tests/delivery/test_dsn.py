"""delivery.dsn: bounces parsed back with the stdlib email package. Pure: no network, no database."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery import dsn
from delivery.dsn import BouncedRecipient

ARRIVAL = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)
NOW = ARRIVAL + timedelta(hours=2)
ORIGINAL = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Message-ID: <q1@example.test>\r\n"
    b"\r\n"
    b"The figures are attached.\r\n"
)
BOB = BouncedRecipient(
    "bob@example.net", "5.1.1", "550 5.1.1 <bob@example.net>... User unknown", "mx1.example.net", NOW
)
CAROL = BouncedRecipient("carol@nowhere.test", "5.1.2", "5.1.2 Domain nowhere.test does not exist")


def build(original: bytes = ORIGINAL, recipients=(BOB,), **kwargs) -> bytes:
    args = {
        "original": original,
        "sender": "alice@example.test",
        "recipients": list(recipients),
        "reporting_mta": "relay.example.test",
        "arrival": ARRIVAL,
        "now": NOW,
        "mid": 42,
    }
    return dsn.build_dsn(**{**args, **kwargs})


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects, msg.defects
    return msg


def report_blocks(msg: EmailMessage) -> list[Message]:
    status = msg.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    assert all(isinstance(b, Message) for b in blocks)
    return [b for b in blocks if isinstance(b, Message)]


def assert_crlf_only(data: bytes) -> None:
    assert re.search(rb"\r(?!\n)", data) is None, "bare CR"
    assert re.search(rb"(?<!\r)\n", data) is None, "bare LF"


# --- structure -------------------------------------------------------------------------------------------------


def test_top_level_headers() -> None:
    msg = parse(build())
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@relay.example.test>"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@relay.example.test"
    assert msg["To"] == "alice@example.test"
    assert msg["Subject"] == "Delivery Status Notification (Failure)"
    assert msg["Date"].datetime == NOW
    assert re.fullmatch(r"<[^<>@\s]+@relay\.example\.test>", msg["Message-ID"])
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"


def test_every_bounce_has_a_fresh_message_id() -> None:
    assert parse(build())["Message-ID"] != parse(build())["Message-ID"]


def test_three_parts_in_order_with_crlf_line_endings() -> None:
    data = build()
    assert_crlf_only(data)
    parts = parse(data).get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]


def test_the_per_message_fields() -> None:
    per_message = report_blocks(parse(build()))[0]
    assert per_message["Reporting-MTA"] == "dns; relay.example.test"
    assert per_message["X-Esaroutes-MID"] == "42"
    assert per_message["Arrival-Date"] == "Tue, 04 Mar 2025 10:00:00 +0000"


def test_the_per_recipient_fields_of_a_remote_refusal() -> None:
    bob = report_blocks(parse(build()))[1]
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.example.net"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>... User unknown"
    assert bob["Last-Attempt-Date"] == "Tue, 04 Mar 2025 12:00:00 +0000"


def test_a_local_decision_has_no_remote_mta_and_an_x_esaroutes_diagnostic() -> None:
    blocks = report_blocks(parse(build(recipients=[BOB, CAROL])))
    assert len(blocks) == 3
    carol = blocks[2]
    assert carol["Final-Recipient"] == "rfc822; carol@nowhere.test"
    assert carol["Status"] == "5.1.2"
    assert carol["Remote-MTA"] is None
    assert carol["Last-Attempt-Date"] is None
    assert carol["Diagnostic-Code"] == "X-Esaroutes; 5.1.2 Domain nowhere.test does not exist"


def test_an_empty_diagnostic_writes_no_diagnostic_code() -> None:
    blocks = report_blocks(parse(build(recipients=[BouncedRecipient("bob@example.net", "5.4.7", "")])))
    assert blocks[1]["Diagnostic-Code"] is None
    assert blocks[1]["Status"] == "5.4.7"


def test_an_ip_remote_mta_is_written_as_an_address_literal() -> None:
    r = BouncedRecipient("bob@example.net", "5.0.0", "554 no", "192.0.2.7")
    assert report_blocks(parse(build(recipients=[r])))[1]["Remote-MTA"] == "dns; [192.0.2.7]"


@pytest.mark.parametrize("status", ["", "550", "5.1", "9.9.9", "5.1.1 extra", "x.y.z"])
def test_a_malformed_status_is_written_as_5_0_0(status: str) -> None:
    r = BouncedRecipient("bob@example.net", status, "550 nope")
    assert report_blocks(parse(build(recipients=[r])))[1]["Status"] == "5.0.0"


def test_the_human_part_names_each_recipient_and_explains_in_plain_words() -> None:
    text = parse(build(recipients=[BOB, CAROL])).get_payload()[0].get_content()
    assert "could not be delivered to 2 recipients" in text
    assert "bob@example.net" in text
    assert "The address does not exist at the recipient's mail server." in text
    assert "carol@nowhere.test" in text
    assert "domain does not exist" in text
    assert "550 5.1.1 <bob@example.net>... User unknown" in " ".join(text.split())
    assert "relay.example.test" in text


# --- the original ----------------------------------------------------------------------------------------------


def test_by_default_only_the_original_headers_are_returned() -> None:
    third = parse(build()).get_payload()[2]
    assert third.get_content_type() == "text/rfc822-headers"
    content = third.get_payload(decode=True)
    assert b"Subject: Quarterly figures\r\n" in content
    assert b"The figures are attached" not in content


def test_include_body_attaches_the_whole_original_as_message_rfc822() -> None:
    third = parse(build(include_body=True)).get_payload()[2]
    assert third.get_content_type() == "message/rfc822"
    inner = third.get_payload()[0]
    assert inner["Subject"] == "Quarterly figures"
    assert inner.get_content().strip() == "The figures are attached."
    assert "Your original message is attached" in parse(build(include_body=True)).get_payload()[0].get_content()


def test_bare_lf_and_bare_cr_in_the_original_become_crlf() -> None:
    data = build(b"Subject: lf\nX-A: 1\rX-B: 2\n\nbody\rmore\n", include_body=True)
    assert_crlf_only(data)
    inner = parse(data).get_payload()[2].get_payload()[0]
    assert (inner["Subject"], inner["X-A"], inner["X-B"]) == ("lf", "1", "2")


def test_an_original_without_a_blank_line_is_all_headers() -> None:
    third = parse(build(b"Subject: no body\r\nX-Other: yes")).get_payload()[2]
    assert third.get_payload(decode=True) == b"Subject: no body\r\nX-Other: yes\r\n"


def test_garbage_ends_the_header_section() -> None:
    third = parse(build(b"Subject: ok\r\n this continues\r\nthis is not a header\r\nX-Later: no\r\n")).get_payload()[2]
    assert third.get_payload(decode=True) == b"Subject: ok\r\n this continues\r\n"


def test_an_original_of_pure_garbage_gives_empty_headers() -> None:
    data = build(b"\x00\xff\xfe garbage\r\n\r\n\r\n")
    third = parse(data).get_payload()[2]
    assert not third.get_payload(decode=True)


def test_eight_bit_headers_are_declared_8bit() -> None:
    data = build(b"Subject: caf\xc3\xa9\r\nX-Latin1: \xe9t\xe9\r\n\r\nbody\r\n")
    third = parse(data).get_payload()[2]
    assert third["Content-Transfer-Encoding"] == "8bit"
    assert b"Subject: caf\xc3\xa9\r\n" in data


def test_an_original_with_overlong_lines_is_attached_as_headers_only() -> None:
    original = b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n"
    data = build(original, include_body=True)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert parse(data).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_an_overlong_header_line_is_cut_below_998_octets() -> None:
    data = build(b"X-Huge: " + b"y" * 3000 + b"\r\n\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    parse(data)


def test_the_boundary_never_occurs_in_the_content() -> None:
    data = build(b"Subject: --=_esaroutes_dsn_\r\n\r\n--=_esaroutes_dsn_\r\n", include_body=True)
    boundary = parse(data).get_boundary()
    assert data.count(b"--" + boundary.encode()) == 4  # three parts and the closing delimiter


# --- sanitising ------------------------------------------------------------------------------------------------


def test_control_characters_of_a_reply_are_never_reflected() -> None:
    nasty = "550 5.1.1 no\r\nSubject: injected\r\n\r\nX\x00\x1b[31m\x07 such user\tat all"
    data = build(recipients=[BouncedRecipient("bob@example.net", "5.1.1", nasty, "mx\r\nX-Evil: 1")])
    assert_crlf_only(data)
    assert b"\x00" not in data
    assert b"\x1b" not in data
    assert b"\x07" not in data
    msg = parse(data)
    bob = report_blocks(msg)[1]
    assert bob["Diagnostic-Code"].startswith("smtp; 550 5.1.1 no Subject: injected X")
    assert bob["Subject"] is None
    assert bob["X-Evil"] is None
    assert msg["Subject"] == "Delivery Status Notification (Failure)"
    assert "\x1b" not in msg.get_payload()[0].get_content()


def test_a_long_diagnostic_is_folded() -> None:
    reply = "550 5.7.1 " + " ".join(["blocked"] * 100)
    data = build(recipients=[BouncedRecipient("bob@example.net", "5.7.1", reply, "mx")])
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    assert report_blocks(parse(data))[1]["Diagnostic-Code"] == f"smtp; {reply}"


def test_non_ascii_in_a_reply_stays_out_of_the_delivery_status_part() -> None:
    data = build(
        recipients=[BouncedRecipient("bob@example.net", "5.2.2", "552 5.2.2 Postfach voll — über Quota", "mx")]
    )
    status_part = data.split(b"message/delivery-status")[1].split(b"\r\n--=_esaroutes_dsn_")[0]
    assert status_part.isascii()
    assert report_blocks(parse(data))[1]["Diagnostic-Code"] == "smtp; 552 5.2.2 Postfach voll ? ?ber Quota"


def test_a_utf8_recipient_is_written_as_utf8_addr_xtext() -> None:
    r = BouncedRecipient("jürgen+x@bücher.test", "5.1.1", "550 5.1.1 unknown", "mx.xn--bcher-kva.test")
    msg = parse(build(recipients=[r]))
    assert report_blocks(msg)[1]["Final-Recipient"] == "utf-8; j\\x{FC}rgen\\x{2B}x@b\\x{FC}cher.test"
    assert "jürgen+x@bücher.test" in msg.get_payload()[0].get_content()


def test_a_utf8_sender_gets_utf8_headers() -> None:
    data = build(sender="jürgen@bücher.test")
    assert "jürgen@bücher.test".encode() in data.split(b"\r\n\r\n")[0]
    assert parse(data)["To"] == "jürgen@bücher.test"


@pytest.mark.parametrize(
    "sender", ["<alice@example.test>", "not an address", "a@b@c", '"quoted, name"@x.test', "x" * 2000 + "@x.test"]
)
def test_an_odd_sender_never_stops_the_bounce(sender: str) -> None:
    data = build(sender=sender)
    assert_crlf_only(data)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    email.message_from_bytes(data, policy=email.policy.default)


def test_naive_datetimes_are_taken_as_utc() -> None:
    msg = parse(build(arrival=ARRIVAL.replace(tzinfo=None), now=NOW.replace(tzinfo=None)))
    assert msg["Date"].datetime == NOW
    assert report_blocks(msg)[0]["Arrival-Date"] == "Tue, 04 Mar 2025 10:00:00 +0000"


# --- should_bounce ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("", False),
        ("<>", False),
        ("  ", False),
        ("alice@example.test", True),
        ("MAILER-DAEMON@example.test", True),  # only the null sender is exempt (RFC 5321 §4.5.5)
        ("postmaster@example.test", True),
    ],
)
def test_only_the_null_sender_gets_no_bounce(sender: str, expected: bool) -> None:
    assert dsn.should_bounce(sender) is expected


# --- property ------------------------------------------------------------------------------------------------

# Any code point, lone surrogates included (what a surrogateescape decoding of a reply would give).
anything = st.text(alphabet=st.characters(exclude_categories=()))
addresses = st.one_of(
    st.emails(),
    st.builds(lambda local, domain: f"{local}@{domain}", st.text(min_size=1, max_size=20), anything),
)
recipients = st.lists(
    st.builds(
        BouncedRecipient,
        address=addresses,
        status=st.one_of(st.sampled_from(["5.1.1", "5.7.1", "4.4.7", "5.1.10"]), st.text(max_size=8)),
        diagnostic=anything,
        remote_mta=st.one_of(st.just(""), anything),
        last_attempt=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original=st.binary(max_size=3000), rcpts=recipients, sender=anything, include_body=st.booleans())
def test_any_original_and_any_reply_give_a_parseable_report(
    original: bytes, rcpts: list[BouncedRecipient], sender: str, include_body: bool
) -> None:
    data = dsn.build_dsn(
        original=original,
        sender=sender,
        recipients=rcpts,
        reporting_mta="relay.example.test",
        arrival=ARRIVAL,
        now=NOW,
        mid=7,
        include_body=include_body,
    )
    assert_crlf_only(data)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(data, policy=email.policy.default)
    for _, value in msg.items():
        assert "\r" not in value
        assert "\n" not in value
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    blocks = parts[1].get_payload()
    assert len(blocks) == 1 + len(rcpts)
    for block, rcpt in zip(blocks[1:], rcpts, strict=True):
        assert block["Action"] == "failed"
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", block["Status"])
        kind, _, shown = block["Final-Recipient"].partition("; ")
        assert kind in ("rfc822", "utf-8")
        if kind == "rfc822":
            assert shown == " ".join(rcpt.address.strip().strip("<>").split()) or not rcpt.address.isprintable()
        for _, value in block.items():
            assert "\r" not in value
            assert "\n" not in value
    assert "rfc822" in parts[2].get_content_type()


# --- delay warnings ---------------------------------------------------------------------------------------------

UNTIL = ARRIVAL + timedelta(hours=72)
DELAYED_BOB = BouncedRecipient(
    "bob@example.net", "4.3.1", "452 4.3.1 Insufficient system resources", "mx1.example.net", NOW
)


def warning(recipients=(DELAYED_BOB,)) -> EmailMessage:
    return parse(
        dsn.build_dsn(
            original=ORIGINAL,
            sender="alice@example.test",
            recipients=list(recipients),
            reporting_mta="relay.example.test",
            arrival=ARRIVAL,
            now=NOW,
            mid=42,
            will_retry_until=UNTIL,
        )
    )


def test_a_delay_warning_is_an_rfc3464_report_with_action_delayed_and_will_retry_until() -> None:
    msg = warning()
    assert msg["Subject"] == "Delivery Status Notification (Delay)" and msg["To"] == "alice@example.test"
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    per_message, bob = report_blocks(msg)
    assert per_message["X-Esaroutes-MID"] == "42"
    assert bob["Action"] == "delayed" and bob["Status"] == "4.3.1"
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Diagnostic-Code"] == "smtp; 452 4.3.1 Insufficient system resources"
    assert email.utils.parsedate_to_datetime(bob["Will-Retry-Until"]) == UNTIL
    human = " ".join(msg.get_payload()[0].get_content().split())
    assert "has not been delivered" in human and "keeps trying" in human and "You do not need to send it again" in human
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"


@pytest.mark.parametrize(("status", "written"), [("4.4.1", "4.4.1"), ("5.1.1", "4.0.0"), ("junk", "4.0.0")])
def test_a_delay_warnings_status_is_always_temporary(status, written) -> None:
    (_, r) = report_blocks(warning([BouncedRecipient("bob@example.net", status, "")]))
    assert r["Status"] == written and r["Action"] == "delayed"


def test_a_bounce_has_no_will_retry_until() -> None:
    (_, bob) = report_blocks(parse(build()))
    assert bob["Action"] == "failed" and bob["Will-Retry-Until"] is None
