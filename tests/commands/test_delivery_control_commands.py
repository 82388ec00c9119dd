"""suspenddel, resumedel, holdrecipients, releaserecipients: the rows, their output, the mail log and the audit log."""

from __future__ import annotations

import getpass
from datetime import timedelta

import pytest
from django.core.management import CommandError
from django.utils import timezone

from delivery.models import DeliverySuspension, MailLogLine, Message, Recipient
from routes.models import AuditEntry
from tests.support.messages import make_message

pytestmark = pytest.mark.django_db

ACTOR = f"cli:{getpass.getuser()}"


def suspended() -> list[str]:
    return list(DeliverySuspension.objects.values_list("domain", flat=True))


def test_suspenddel_and_resumedel_a_domain(run):
    later = timezone.now() + timedelta(hours=1)
    m = make_message(recipients=("a@dest.test",))
    Recipient.objects.filter(message=m).update(next_attempt_at=later)
    Message.objects.filter(pk=m.pk).update(next_attempt_at=None)
    assert run("suspenddel").out == "Delivery is not suspended for any domain.\n"
    assert run("suspenddel", "DEST.test.", "other.test").out == (
        "Mail delivery suspended: dest.test\nMail delivery suspended: other.test\n"
        "Deliveries are currently suspended for: dest.test, other.test.\n"
    )
    assert run("suspenddel", "dest.test").out.startswith("Mail delivery was already suspended: dest.test\n")
    assert suspended() == ["dest.test", "other.test"]
    assert MailLogLine.objects.filter(text=f"Deliveries suspended [dest.test] by {ACTOR}", domain="dest.test").exists()
    out = run("resumedel", "dest.test", "third.test").out
    assert out == (
        "Mail delivery resumed: dest.test\nNot resumed: third.test: its delivery was not suspended\n"
        "Deliveries are currently suspended for: other.test.\n"
    )
    assert suspended() == ["other.test"]
    # the backlog is due now, not at its retry time
    assert Recipient.objects.get(message=m).next_attempt_at <= timezone.now()
    assert Message.objects.get(pk=m.pk).next_attempt_at <= timezone.now()
    assert MailLogLine.objects.filter(text=f"Deliveries resumed [dest.test] by {ACTOR}").exists()
    assert list(
        AuditEntry.objects.filter(object_type="queue").order_by("id").values_list("actor_name", "object_repr")
    ) == [
        (ACTOR, "Suspend delivery to dest.test, other.test"),
        (ACTOR, "Resume delivery to dest.test"),
    ]


def test_suspenddel_all_and_resumedel_all(run):
    run("suspenddel", "dest.test")
    assert run("suspenddel", "all").out.endswith("Deliveries are currently suspended for ALL domains.\n")
    assert run("resumedel", "dest.test").out == (
        "Mail delivery resumed: dest.test\nDeliveries are currently suspended for ALL domains.\n"
    )
    assert run("resumedel", "other.test").out.startswith(
        "Not resumed: other.test: ALL domains are suspended (resumedel ALL)\n"
    )
    run("suspenddel", "dest.test")
    assert run("resumedel", "ALL").out == "Mail delivery resumed: ALL\nDelivery is not suspended for any domain.\n"
    assert suspended() == []


@pytest.mark.parametrize(
    ("command", "args", "error"),
    [
        ("suspenddel", ("ALL", "dest.test"), "ALL cannot be combined with domains"),
        ("resumedel", ("dest.test", "ALL"), "ALL cannot be combined with domains"),
        ("suspenddel", ("[10.0.0.1]",), "is not a domain name"),
    ],
)
def test_suspend_commands_refuse_bad_input(run, command, args, error):
    with pytest.raises(CommandError, match=error):
        run(command, *args)
    assert suspended() == []


# --- holdrecipients / releaserecipients ----------------------------------------------------------------------


def test_holdrecipients_and_releaserecipients_by_domain_sender_and_mid(run):
    later = timezone.now() + timedelta(hours=1)
    m1 = make_message(recipients=("a@dest.test", "b@dest.test"))
    m2 = make_message(sender="bob@example.org", recipients=("c@other.test",))
    Recipient.objects.update(next_attempt_at=later)
    assert run("holdrecipients", "--domain", "dest.test", "--dry-run").out == "Would hold 2 recipients of 1 message.\n"
    assert run("holdrecipients", "--domain", "dest.test").out == "2 recipients held.\n"
    assert run("holdrecipients", "--domain", "dest.test").out == "No recipients held.\n"
    assert run("holdrecipients", "--sender", "bob@example.org").out == "1 recipient held.\n"
    assert Recipient.objects.filter(held=True).count() == 3
    assert MailLogLine.objects.filter(text=f"Held: MID {m1.pk} to [0, 1] by {ACTOR}").exists()
    assert run("releaserecipients", "--mid", str(m2.pk), "--dry-run").out == "Would release 1 recipient of 1 message.\n"
    assert run("releaserecipients", "--mid", str(m2.pk)).out == "1 recipient released.\n"
    released = Recipient.objects.get(message=m2)
    assert not released.held and released.next_attempt_at <= timezone.now()
    assert MailLogLine.objects.filter(text=f"Released: MID {m2.pk} to [0] by {ACTOR}").exists()
    assert run("releaserecipients", "--all", "--yes").out == "2 recipients released.\n"
    assert run("releaserecipients", "--all", "--yes").out == "No recipients released.\n"
    assert list(
        AuditEntry.objects.filter(object_type="queue").order_by("id").values_list("actor_name", "object_repr")
    ) == [
        (ACTOR, "Hold 2 recipients"),
        (ACTOR, "Hold 1 recipient"),
        (ACTOR, "Release 1 recipient"),
        (ACTOR, "Release 2 recipients"),
    ]


def test_showqueue_says_held_and_suspended(run):
    make_message(recipients=("a@dest.test",))
    make_message(recipients=("c@other.test",))
    run("holdrecipients", "--domain", "dest.test")
    run("suspenddel", "other.test")
    out = run("showqueue").out
    assert "a@dest.test" in out and "held (releaserecipients)" in out
    assert "suspended (resumedel)" in out


@pytest.mark.parametrize("command", ["holdrecipients", "releaserecipients"])
def test_hold_commands_refuse_bad_input(run, command, no_terminal):
    with pytest.raises(CommandError, match="Choose the recipients"):
        run(command)
    with pytest.raises(CommandError, match="MID 999999: no such message"):
        run(command, "--mid", "999999")
    make_message(recipients=("a@dest.test",))
    if command == "releaserecipients":
        run("holdrecipients", "--all", "--yes")
    with pytest.raises(CommandError, match="Not confirmed"):
        run(command, "--all")


# --- redirectrecipients --------------------------------------------------------------------------------------


def test_redirectrecipients_by_domain_and_cancel(run):
    m1 = make_message(recipients=("a@dest.test", "b@dest.test"))
    m2 = make_message(recipients=("c@other.test",))
    Recipient.objects.update(next_attempt_at=timezone.now() + timedelta(hours=1))
    assert run("redirectrecipients", "127.0.0.1:2525", "--domain", "dest.test", "--dry-run").out == (
        "Would redirect 2 recipients of 1 message.\n"
    )
    assert run("redirectrecipients", "127.0.0.1:2525", "--domain", "dest.test").out == (
        "2 recipients redirected to 127.0.0.1:2525.\n"
    )
    assert set(Recipient.objects.filter(message=m1).values_list("redirect_host", "redirect_port")) == {
        ("127.0.0.1", 2525)
    }
    assert Recipient.objects.get(message=m2).redirect_host == ""
    assert run("showqueue").out.count(", redirected to 127.0.0.1:2525") == 2
    assert MailLogLine.objects.filter(text=f"Redirected: MID {m1.pk} to [0, 1] to 127.0.0.1:2525 by {ACTOR}").exists()
    assert run("redirectrecipients", "--cancel", "--all", "--yes").out == "2 recipients given back to their route.\n"
    assert run("redirectrecipients", "--cancel", "--all", "--yes").out == "No redirected recipients.\n"
    assert not Recipient.objects.exclude(redirect_host="").exists()
    assert MailLogLine.objects.filter(text=f"Redirect cancelled: MID {m1.pk} to [0, 1] by {ACTOR}").exists()


def test_redirectrecipients_all_asks_like_the_esa(run, terminal):
    make_message(recipients=("a@dest.test",))
    asked = terminal("n")
    assert run("redirectrecipients", "relay.test", "--all").out == "Nothing was changed.\n"
    assert asked == ["Are you sure you want to redirect all 1 recipient of 1 message in the queue? [N]> "]
    terminal("y")
    assert run("redirectrecipients", "relay.test", "--all").out == "1 recipient redirected to relay.test:25.\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--all",), "Give the host to redirect to"),
        (("relay.test", "--cancel", "--all"), "not both"),
        (("a.test,b.test", "--all"), "give one host"),
        (("/dev/null", "--all"), "is not a host"),
        (("relay.test",), "Choose the recipients"),
    ],
)
def test_redirectrecipients_refuses_bad_input(run, args, error):
    make_message(recipients=("a@dest.test",))
    with pytest.raises(CommandError, match=error):
        run("redirectrecipients", *args)
    assert not Recipient.objects.exclude(redirect_host="").exists()
