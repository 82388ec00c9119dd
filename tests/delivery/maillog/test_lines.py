"""delivery.maillog.lines: the ESA-format lines, pure (no database, no file)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from delivery.maillog import lines

AT = datetime(2014, 7, 2, 9, 15, 7, tzinfo=UTC)


def test_format_line_is_ctime_level_and_text():
    line = lines.queued(42)
    assert lines.format_line(line, AT) == f"{time.ctime(AT.timestamp())} Info: MID 42 queued for delivery"


def test_a_line_with_its_own_time_keeps_it():
    earlier = datetime(2014, 7, 2, 9, 0, 0, tzinfo=UTC)
    line = lines.Line("DCID 1 close", at=earlier)
    assert lines.format_line(line, AT).startswith(time.ctime(earlier.timestamp()))
    assert line == lines.Line("DCID 1 close")  # the time is not part of a line's identity


def test_ctime_pads_the_day_with_a_space_like_the_esa():
    assert lines.ctime(AT)[8:10] in {" 2", " 1", " 3"}  # local time: the day may move by one


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("plain", "'plain'"),
        ("two\r\nlines", "'two\\r\\nlines'"),
        ("it's", '"it\'s"'),
    ],
)
def test_quote_is_repr_so_no_line_break_gets_through(value, expect):
    assert lines.quote(value) == expect


def test_clean_escapes_every_control_character_and_line_separator():
    cleaned = lines.clean("a\rb\nc\x00d\x7fe\u2028f\x85g")
    assert cleaned == "a\\rb\\nc\\x00d\\x7fe\\u2028f\\x85g"
    assert "\n" not in cleaned and "\r" not in cleaned


def test_reply_tuple_is_the_esa_shape_and_000_without_a_reply():
    assert lines.reply_tuple(452, "4.3.1 Insufficient system resources") == (
        "('452', ['4.3.1 Insufficient system resources'])"
    )
    assert lines.reply_tuple(None, "") == "('000', [''])"
    assert lines.reply_tuple(250, "first\nsecond") == "('250', ['first', 'second'])"


def test_inbound_lines():
    assert lines.new_icid(5, "Main", "192.0.2.1", "198.51.100.7", "", False).text == (
        "New SMTP ICID 5 interface Main (192.0.2.1) address 198.51.100.7 reverse dns host unknown verified no"
    )
    assert lines.start_mid(9, 5) == lines.Line("Start MID 9 ICID 5", mid=9, icid=5)
    assert lines.mid_from(9, 5, "a@b.test").text == "MID 9 ICID 5 From: <a@b.test>"
    assert lines.mid_to(9, 5, 0, "c@d.test", "d.test") == lines.Line(
        "MID 9 ICID 5 RID 0 To: <c@d.test>", mid=9, icid=5, domain="d.test"
    )
    assert lines.rejected_by_rat(5, "x@y.test").text == "ICID 5 To: <x@y.test> Rejected by RAT"
    assert lines.subject(9, "hi\nthere").text == "MID 9 Subject 'hi\\nthere'"
    assert lines.ready(9, 120, "").text == "MID 9 ready 120 bytes from <>"
    assert lines.icid_close(5).text == "ICID 5 close"


def test_auth_throttled_is_a_warning():
    line = lines.auth_throttled(5, "192.0.2.1", "bob", "address", 10, 300)
    assert line.level == lines.WARNING
    assert line.text.startswith("SMTP Auth: (ICID 5) address 192.0.2.1 user: bob throttled:")


def test_delivery_lines():
    assert lines.new_dcid(7, "Data 1", "192.0.2.9", 25, domain="d.test", host="mx.d.test") == lines.Line(
        "New SMTP DCID 7 interface Data 1 address 192.0.2.9 port 25", dcid=7, domain="d.test", host="mx.d.test"
    )
    assert lines.delivery_start(7, 9, [0, 1]).text == "Delivery start DCID 7 MID 9 to RID [0, 1]"
    assert lines.message_done(7, 9, [0]).text == "Message done DCID 7 MID 9 to RID [0]"
    assert lines.response(9, [0], "2.0.0 Ok: queued").text == "MID 9 RID [0] Response '2.0.0 Ok: queued'"
    assert lines.message_finished(9).text == "Message finished MID 9 done"
    assert lines.tls_required_failed(7, "192.0.2.9").level == lines.WARNING


def test_skipped_host_says_why_the_mail_went_to_the_next_host():
    assert lines.skipped_host(9, [0, 1], "192.0.2.9", 2525, domain="d.test") == lines.Line(
        "MID 9 RID [0, 1] skipped host 192.0.2.9:2525 for d.test: its first connection has not greeted yet",
        mid=9,
        domain="d.test",
        host="192.0.2.9",
    )


def test_connection_error_cleans_the_details():
    line = lines.connection_error(7, "d.test", "192.0.2.9", 25, "421-bye\r\nnow", "Data 1", "Connection Error")
    assert line.text == (
        "Connection Error: DCID 7 domain: d.test IP: 192.0.2.9 port: 25 details: 421-bye\\r\\nnow "
        "interface: Data 1 reason: Connection Error"
    )
    assert (line.dcid, line.domain, line.host) == (7, "d.test", "192.0.2.9")


@pytest.mark.parametrize("kind", [lines.DELAYED, lines.BOUNCED])
def test_delayed_and_bounced_are_one_shape_carrying_the_reply_tuple(kind):
    line = lines.rcpt_outcome(
        kind,
        7,
        9,
        "a@b.test",
        "c@d.test",
        0,
        "4.3.0",
        "Other mail system problem",
        451,
        "try later",
        domain="d.test",
        host="mx.d.test",
    )
    assert line.text == (
        f"{kind}: DCID 7 MID 9 From: <a@b.test> To: <c@d.test> RID 0 - 4.3.0 - Other mail system problem "
        "('451', ['try later'])"
    )
    assert (line.mid, line.dcid, line.domain, line.host) == (9, 7, "d.test", "mx.d.test")


def test_the_seed_deferral_line_is_the_esas():
    line = lines.rcpt_outcome(
        lines.DELAYED, 1, 1, "s", "r", 0, "4.3.1", "Mail system full", 452, "4.3.1 Insufficient system resources"
    )
    assert line.text == (
        "Delayed: DCID 1 MID 1 From: <s> To: <r> RID 0 - 4.3.1 - Mail system full "
        "('452', ['4.3.1 Insufficient system resources'])"
    )


def test_a_multi_line_reply_keeps_every_line_in_the_tuple():
    line = lines.rcpt_outcome(lines.DELAYED, 1, 1, "s", "r", 0, "4.3.1", "Mail system full", 452, "4.3.1 full\nbye")
    assert line.text.endswith("('452', ['4.3.1 full', 'bye'])")


def test_no_reply_is_000():
    line = lines.rcpt_outcome(lines.DELAYED, 1, 1, "s", "r", 0, "4.4.0", "Other network problem", None, "timeout")
    assert line.text.endswith("- 4.4.0 - Other network problem ('000', ['timeout'])")


def test_only_delayed_and_bounced_are_recipient_outcomes():
    with pytest.raises(ValueError, match="not a recipient outcome"):
        lines.rcpt_outcome("Deferred", 1, 1, "s", "r", 0, "4.0.0", "x", 451, "y")


def test_possible_delivery_and_close_lines():
    assert lines.possible_delivery(7, 9, [0, 1], host="mx.d.test") == lines.Line(
        "Possible Delivery: DCID 7 MID 9 to RID [0, 1]", mid=9, dcid=7, host="mx.d.test"
    )
    assert lines.dcid_close(7).text == "DCID 7 close"
    assert lines.dcid_close(7, "closed by the peer").text == "DCID 7 close (closed by the peer)"


def test_operator_lines():
    assert lines.generated(lines.BOUNCE, 12, 9) == lines.Line("MID 12 was generated for bounce of MID 9", mid=12)
    assert lines.generated(lines.DELAY_WARNING, 13, 9) == lines.Line(
        "MID 13 was generated for delay warning of MID 9", mid=13
    )
    with pytest.raises(ValueError, match="not a generated notice"):
        lines.generated("Bounced", 12, 9)
    assert lines.deleted(9, [0, 2]).text == "Deleted: MID 9 to [0, 2]"
    assert lines.kicking("d.test") == lines.Line("Kicking destination d.test", domain="d.test")
    assert lines.recorded_without_details(9, "DataError").level == lines.WARNING
