"""delivernow, bouncerecipients, deleterecipients, showqueue: real queue rows, the queue API, the audit log."""

from __future__ import annotations

import getpass
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import CommandError
from django.utils import timezone

from delivery.models import MailLogLine, Message, Recipient
from routes.models import AuditEntry
from tests.support.messages import attempt, make_message

pytestmark = pytest.mark.django_db

ACTOR = f"cli:{getpass.getuser()}"


@pytest.fixture
def queued():
    """Three queued messages: two to dest.test (one delayed after a 451), one to other.test from bob."""
    later = timezone.now() + timedelta(hours=1)
    m1 = make_message(recipients=("a@dest.test", "b@dest.test"), at=timezone.now() - timedelta(minutes=10))
    attempt(m1, host="mx1.dest.test", code=451, reply="4.3.0 busy", outcome="delayed", rids=(0,))
    Recipient.objects.filter(message=m1).update(next_attempt_at=later)
    m2 = make_message(recipients=("c@dest.test",), at=timezone.now() - timedelta(minutes=5))
    Recipient.objects.filter(message=m2).update(next_attempt_at=later)
    m3 = make_message(sender="bob@example.org", recipients=("d@other.test",))
    Recipient.objects.filter(message=m3).update(next_attempt_at=later)
    return m1, m2, m3


def active(**filters):
    """Active recipients of the fixture's messages (not of the DSNs a bounce generates)."""
    return Recipient.objects.filter(state__in=Recipient.ACTIVE, message__bounce_of__isnull=True, **filters).count()


def audits():
    return list(
        AuditEntry.objects.filter(object_type="queue").order_by("id").values_list("actor_name", "object_repr", "after")
    )


# --- delivernow -----------------------------------------------------------------------------------------------


def test_delivernow_domain_makes_its_recipients_due_and_logs_kicking(run, queued):
    m1, m2, m3 = queued
    result = run("delivernow", "DEST.test.")
    assert result.out.strip() == "Rescheduled 2 messages for dest.test for immediate delivery."
    now = timezone.now()
    assert all(r.next_attempt_at <= now for r in Recipient.objects.filter(domain="dest.test"))
    assert Recipient.objects.get(message=m3).next_attempt_at > now
    assert MailLogLine.objects.filter(text="Kicking destination dest.test").exists()
    assert audits() == [(ACTOR, "Deliver now dest.test", {"messages": 2, "mids": [m1.pk, m2.pk]})]


def test_delivernow_one_message(run, queued):
    _m1, m2, m3 = queued
    assert run("delivernow", "--mid", str(m2.pk)).out.strip() == f"MID {m2.pk} rescheduled for immediate delivery."
    assert Recipient.objects.get(message=m2).next_attempt_at <= timezone.now()
    assert Recipient.objects.get(message=m3).next_attempt_at > timezone.now()
    assert audits() == [(ACTOR, f"Deliver now MID {m2.pk}", {"messages": 1, "mids": [m2.pk]})]


def test_delivernow_all_asks_first(run, queued, terminal):
    asked = terminal("n")
    assert run("delivernow", "--all").out.strip() == "Nothing was changed."
    assert asked == ["Are you sure you want to deliver all queued mail now (4 recipients)? [N]> "]
    assert audits() == []
    terminal("y")
    assert run("delivernow", "--all").out.strip() == "Rescheduled 3 messages for immediate delivery."
    mids = sorted(m.pk for m in queued)
    assert audits() == [(ACTOR, "Deliver now all domains", {"messages": 3, "mids": mids})]


def test_delivernow_all_without_a_terminal_needs_yes(run, queued, no_terminal):
    with pytest.raises(CommandError, match="add --yes"):
        run("delivernow", "--all")
    assert audits() == []
    assert "Rescheduled 3 messages" in run("delivernow", "--all", "--yes").out


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "exactly one of"),
        (("dest.test", "--all"), "exactly one of"),
        (("dest.test", "--mid", "5"), "exactly one of"),
        (("--mid", "999999"), "MID 999999: no such message"),
        (("--mid", "zero"), "is not a MID"),
        (("--mid", "0"), "is not a MID"),
        (("bad..domain",), "is not a domain name"),
    ],
)
def test_delivernow_refuses_bad_input(run, queued, args, error):
    with pytest.raises(CommandError, match=error):
        run("delivernow", *args)
    assert audits() == []


def test_delivernow_with_nothing_queued_says_so(run, queued):
    done = make_message(recipients=("x@done.test",))
    attempt(done, host="mx.done.test")
    assert run("delivernow", "nothing.test").out.strip() == "Nothing queued for nothing.test."
    assert "has no queued recipient" in run("delivernow", "--mid", str(done.pk)).out
    assert audits() == []


def test_commands_exit_non_zero_with_the_reason_on_stderr():
    """As a shell sees them: usage errors exit 2 (argparse), refusals exit 1, both explained on stderr."""
    manage = [sys.executable, "manage.py"]
    bad = subprocess.run([*manage, "delivernow", "--mid", "x"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and '"x" is not a MID' in bad.stderr
    none = subprocess.run([*manage, "bouncerecipients"], capture_output=True, text=True, check=False)
    assert none.returncode == 1 and "Choose the recipients" in none.stderr
    helped = subprocess.run([*manage, "bouncerecipients", "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "--sender" in helped.stdout and "--all" in helped.stdout


# --- bouncerecipients / deleterecipients ----------------------------------------------------------------------


def test_bounce_by_domain_bounces_with_a_dsn_and_logs(run, queued):
    m1, m2, _m3 = queued
    assert run("bouncerecipients", "--domain", "dest.test").out.strip() == "3 recipients bounced."
    assert active(domain="dest.test") == 0 and active(domain="other.test") == 1
    bounced = Recipient.objects.filter(domain="dest.test")
    assert {r.state for r in bounced} == {Recipient.State.BOUNCED}
    assert MailLogLine.objects.filter(
        text__startswith=f"Bounced: DCID 0 MID {m1.pk} From: <alice@example.test> To: <a@dest.test> RID 0 - 5.0.0"
    ).exists()
    assert Message.objects.filter(bounce_of=m1).count() == 1 and Message.objects.filter(bounce_of=m2).count() == 1
    assert audits() == [(ACTOR, "Bounce 3 recipients", {"recipients": 3, "mids": [m1.pk, m2.pk]})]


def test_bounce_by_mid_and_by_sender(run, queued):
    m1, m2, _m3 = queued
    assert run("bouncerecipients", "--mid", str(m1.pk), "--mid", str(m2.pk)).out.strip() == "3 recipients bounced."
    assert run("bouncerecipients", "--sender", "<bob@example.org>").out.strip() == "1 recipient bounced."
    assert active() == 0


def test_bounce_filters_combine(run, queued):
    assert run("bouncerecipients", "--domain", "other.test", "--sender", "alice@example.test").out.strip() == (
        "No messages bounced."
    )
    assert active() == 4 and audits() == []


def test_bounce_dry_run_changes_nothing(run, queued):
    assert run("bouncerecipients", "--domain", "dest.test", "--dry-run").out.strip() == (
        "Would bounce 3 recipients of 2 messages."
    )
    assert active() == 4 and audits() == []


def test_bounce_all_asks_and_refuses_without_a_terminal(run, queued, terminal, monkeypatch):
    asked = terminal("")
    assert run("bouncerecipients", "--all").out.strip() == "Nothing was changed."
    assert asked == ["Are you sure you want to bounce all 4 recipients of 3 messages in the queue? [N]> "]
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(CommandError, match="add --yes"):
        run("bouncerecipients", "--all")
    assert active() == 4
    assert run("bouncerecipients", "--all", "--yes").out.strip() == "4 recipients bounced."
    assert active() == 0


@pytest.mark.parametrize("command", ["bouncerecipients", "deleterecipients"])
@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "Choose the recipients"),
        (("--all", "--domain", "dest.test"), "cannot be combined"),
        (("--mid", "424242"), "MID 424242: no such message"),
        (("--mid", "-3"), "is not a MID"),
        (("--domain", "[10.0.0.1]"), "is not a domain name"),
    ],
)
def test_selection_commands_refuse_bad_input(run, queued, command, args, error):
    with pytest.raises(CommandError, match=error):
        run(command, *args)
    assert active() == 4 and audits() == []


def test_delete_by_domain_is_silent_and_logged(run, queued):
    m1, m2, _m3 = queued
    assert run("deleterecipients", "--domain", "dest.test").out.strip() == "3 recipients deleted."
    assert {r.state for r in Recipient.objects.filter(domain="dest.test")} == {Recipient.State.DELETED}
    assert not Message.objects.filter(bounce_of__isnull=False).exists()  # no DSN
    assert MailLogLine.objects.filter(text=f"Deleted: MID {m1.pk} to [0, 1]").exists()
    assert MailLogLine.objects.filter(text=f"Message finished MID {m2.pk} done").exists()
    assert Message.objects.get(pk=m1.pk).state == Message.State.DONE
    assert audits() == [(ACTOR, "Delete 3 recipients", {"recipients": 3, "mids": [m1.pk, m2.pk]})]


def test_delete_nothing_says_so(run, queued):
    assert run("deleterecipients", "--domain", "nowhere.test").out.strip() == "No recipients deleted."


def test_delete_all_with_yes(run, queued):
    assert run("deleterecipients", "--all", "--yes").out.strip() == "4 recipients deleted."
    assert active() == 0


# --- showqueue ------------------------------------------------------------------------------------------------


def test_showqueue_lists_by_domain_oldest_first_with_next_attempt_and_last_reply(run, queued):
    m1, m2, _m3 = queued
    out = run("showqueue").out
    assert "Active recipients: 4" in out
    assert out.index("Destination: dest.test") < out.index("Destination: other.test")
    assert out.index(f"\n{m1.pk} ") < out.index(f"\n{m2.pk} ")
    assert "a@dest.test" in out and "delayed, next " in out
    assert "last reply: 451 4.3.0 busy (mx1.dest.test)" in out
    assert "MID/      Bytes/    Sender/" in out and "[RID]     [Atmps]   Recipient" in out


def test_showqueue_filters_and_limits(run, queued):
    out = run("showqueue", "--domain", "other.test").out
    assert "d@other.test" in out and "dest.test" not in out
    out = run("showqueue", "--sender", "bob@example.org").out
    assert "d@other.test" in out and "a@dest.test" not in out
    out = run("showqueue", "--limit", "1").out
    assert "a@dest.test" in out and "b@dest.test" not in out and "3 more recipients not shown (use --limit)." in out
    assert run("showqueue", "--domain", "empty.test").out.strip().endswith("Nothing queued for empty.test.")


def test_showqueue_on_an_empty_queue(run):
    assert run("showqueue").out.strip().endswith("The queue is empty.")


def test_bounce_warns_when_the_chosen_recipients_domain_is_suspended(run, queued):
    run("suspenddel", "dest.test")
    result = run("bouncerecipients", "--domain", "dest.test", "--dry-run")
    assert "Warning: deliveries to dest.test are suspended (suspenddel)" in result.err
    assert result.out.strip() == "Would bounce 3 recipients of 2 messages."
    assert run("bouncerecipients", "--domain", "other.test").err == ""  # not suspended: no warning
    run("suspenddel", "ALL")
    result = run("bouncerecipients", "--all", "--yes")
    assert result.err.startswith("Warning: deliveries to dest.test, example.org are suspended")  # ALL: every one
    assert result.out.strip().endswith("recipients bounced.")  # dest.test's and the DSNs just queued
