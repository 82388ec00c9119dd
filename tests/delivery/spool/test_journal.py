"""The delivery journal: a delivery answered 250 is recorded even when its process dies (or its database goes
away) before the group commit, and is never sent again. Real processes for "dead", real SMTP peers."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError

from delivery import maillog, worker
from delivery.models import DeliveryAttempt, MailLogLine, Message, Recipient
from delivery.outcome import Attempt, Final, Report
from delivery.spool import journal, record
from tests.delivery.conftest import queue_message
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]

ROOT = Path(__file__).resolve().parents[3]


def delivered_report(mid: int, dcid: int = 77) -> Report:
    return Report(
        finals=[Final(mid, 0, "delivered", 250, "2.0.0 Ok: queued as X", "127.0.0.1")],
        attempts=[Attempt(mid, 0, dcid, "127.0.0.1", "127.0.0.1", 2525, 250, "2.0.0 Ok", "delivered")],
        lines=[maillog.lines.message_done(dcid, mid, [0])],
    )


def states(mid: int) -> list[str]:
    return list(Recipient.objects.filter(message_id=mid).order_by("rid").values_list("state", flat=True))


def journal_in_dead_process(mids: list[int], *, how: str = "kill") -> None:
    """Another process journals deliveries of MIDS, then dies without recording them (SIGKILL, or a torn write)."""
    code = textwrap.dedent(
        f"""
        import os, signal, django
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "esaroutes.settings")
        django.setup()
        from django.conf import settings
        settings.JOURNAL_DIR = {str(settings.JOURNAL_DIR)!r}
        from delivery.spool import journal
        from tests.delivery.spool.test_journal import delivered_report
        j = journal.get()
        for mid in {mids!r}:
            j.note(delivered_report(mid))
        if {how!r} == "torn":
            path = sorted(j.where.glob("*.jnl"))[-1]
            with open(path, "ab") as f:
                f.write(b"\\x00\\x00\\x10\\x00partial")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=os.environ.copy(), check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL


def test_a_dead_processs_journaled_delivery_is_recorded_by_recover():
    make_route("dest.test", "127.0.0.1:2525")
    mid = queue_message("a@dest.test")
    journal_in_dead_process([mid])
    assert len(list(Path(settings.JOURNAL_DIR).glob("*.jnl"))) == 1

    assert journal.recover(record.record_safely) == 1
    assert states(mid) == ["delivered"]
    assert Message.objects.get(pk=mid).state == "done"
    assert list(DeliveryAttempt.objects.filter(message_id=mid).values_list("outcome", "code")) == [("delivered", 250)]
    texts = list(MailLogLine.objects.filter(mid=mid).values_list("text", flat=True))
    assert f"Message done DCID 77 MID {mid} to RID [0]" in texts and f"Message finished MID {mid} done" in texts
    assert list(Path(settings.JOURNAL_DIR).glob("*.jnl")) == []  # gone once recorded
    assert journal.recover(record.record_safely) == 0  # and never recorded twice


def test_a_journal_written_before_the_types_moved_is_still_recorded(monkeypatch):
    """A process killed just before an upgrade left a journal that names the types where they lived then
    (delivery.runner, delivery.maillog): recover() reads it, so those deliveries are recorded, not sent again."""
    make_route("dest.test", "127.0.0.1:2525")
    mid = queue_message("a@dest.test")
    report = delivered_report(mid)
    with monkeypatch.context() as m:  # pickle the types under their old module names, as the old code did
        for cls, old_module in ((Report, "delivery.runner"), (Final, "delivery.runner"), (Attempt, "delivery.runner")):
            m.setattr(cls, "__module__", old_module)
        m.setattr(maillog.lines.Line, "__module__", "delivery.maillog")
        m.setitem(sys.modules, "delivery.runner", types.SimpleNamespace(Report=Report, Final=Final, Attempt=Attempt))
        m.setattr(maillog, "Line", maillog.lines.Line, raising=False)
        data = pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"delivery.runner" in data and b"delivery.outcome" not in data
    where = Path(settings.JOURNAL_DIR)
    where.mkdir(parents=True, exist_ok=True)
    (where / "4194000-0000abcd-1.jnl").write_bytes(struct.pack(">I", len(data)) + data)

    assert journal.recover(record.record_safely) == 1
    assert states(mid) == ["delivered"]
    assert list(where.glob("*.jnl")) == []


def test_recover_skips_what_was_already_recorded_and_a_torn_last_entry():
    make_route("dest.test", "127.0.0.1:2525")
    first, second = queue_message("a@dest.test"), queue_message("b@dest.test")
    record.record([delivered_report(first)])  # the group commit made it for this one before the kill
    journal_in_dead_process([first, second], how="torn")

    assert journal.recover(record.record_safely) == 1
    assert states(first) == states(second) == ["delivered"]
    assert DeliveryAttempt.objects.filter(message_id=first).count() == 1  # nothing written twice


def test_a_live_processs_journal_is_left_alone():
    mid = queue_message("a@dest.test")
    live = journal.get()
    live.note(delivered_report(mid))
    assert journal.recover(record.record_safely) == 0  # its owner holds the lock: it records it itself
    assert states(mid) == ["queued"]
    assert len(list(Path(settings.JOURNAL_DIR).glob("*.jnl"))) == 1


def test_only_deliveries_are_journaled_and_a_recorded_file_goes_on_rotation(monkeypatch):
    monkeypatch.setattr(journal, "ROTATE_ENTRIES", 2)
    mid = queue_message("a@dest.test")
    live = journal.get()
    delayed = Report(finals=[Final(mid, 0, "delayed", 451, "4.3.0 try later", "127.0.0.1")])
    live.note(delayed)
    assert delayed.journal == 0 and list(Path(settings.JOURNAL_DIR).glob("*.jnl")) == []
    reports = [delivered_report(mid) for _ in range(3)]
    for report in reports:
        live.note(report)
    assert [r.journal for r in reports] == [1, 1, 2]
    live.recorded(reports)
    [current] = Path(settings.JOURNAL_DIR).glob("*.jnl")
    assert current.name.startswith(f"{os.getpid()}-") and current.name.endswith("-2.jnl")  # the one being written


def test_a_new_process_with_a_dead_ones_pid_never_replaces_its_journal():
    mid = queue_message("a@dest.test")
    first = journal.Journal(Path(settings.JOURNAL_DIR))
    first.note(delivered_report(mid))
    first.close()  # as if it died: its file stays, outstanding
    second = journal.Journal(Path(settings.JOURNAL_DIR))  # same PID, as after PID reuse
    second.note(delivered_report(mid))
    assert len(list(Path(settings.JOURNAL_DIR).glob("*.jnl"))) == 2


def test_a_delivery_whose_recording_failed_is_recorded_later_and_never_sent_again(peers, monkeypatch):
    good = peers.start()
    make_route("dest.test", f"{good.host}:{good.port}")
    mid = queue_message("a@dest.test")
    real_record = record.record

    def database_gone(reports: Any, **kwargs: Any) -> list[int]:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(record, "record", database_gone)
    with pytest.raises(OperationalError):
        worker.deliver_batch([mid])
    assert len(good.wait_for_messages(1)) == 1 and states(mid) == ["queued"]

    monkeypatch.setattr(record, "record", real_record)
    Message.objects.filter(pk=mid).update(leased_by="", leased_until=None)  # as if the lease ran out
    worker.deliver_batch([mid])  # the next batch recovers the journal first: the message is done, not re-sent
    assert states(mid) == ["delivered"]
    assert len(good.messages) == 1
    assert list(Path(settings.JOURNAL_DIR).glob("*.jnl")) == []


def hostile_report(mid: int) -> Report:
    """A delivery to RID 0 and a 451 to RID 1 whose text neither database takes (bytes not UTF-8, NUL), as a
    peer's reply was journaled before the SMTP edge made replies safe."""
    text = "4.3.0 first\n\udcff\udcfe\udcc3( nul\x00"
    report = delivered_report(mid)
    report.finals.append(Final(mid, 1, "delayed", 451, text, "127.0.0.1", "4.3.0"))
    report.attempts.append(Attempt(mid, 1, 77, "127.0.0.1", "127.0.0.1", 2525, 451, text, "next_host"))
    return report


def journal_of_dead_process(*reports: Report) -> None:
    """Journal REPORTS in a file whose owner is gone (its lock released, the file left), as after a kill."""
    dead = journal.Journal(Path(settings.JOURNAL_DIR))
    for report in reports:
        dead.note(report)
    dead.close()


def test_a_journaled_delivery_with_a_reply_no_database_takes_is_recorded_at_the_first_recover():
    make_route("dest.test", "127.0.0.1:2525")
    mid = queue_message("a@dest.test", "b@dest.test")
    journal_of_dead_process(hostile_report(mid))
    assert journal.recover(record.record_safely) == 1
    assert states(mid) == ["delivered", "delayed"]
    assert Recipient.objects.get(message_id=mid, rid=1).last_response == "4.3.0 first\n\\xff\\xfe\\xc3( nul\\x00"
    assert list(Path(settings.JOURNAL_DIR).glob("*.jnl")) == []


def test_a_journal_entry_that_can_never_be_recorded_is_set_aside_not_retried_forever(monkeypatch, caplog):
    make_route("dest.test", "127.0.0.1:2525")
    good, bad = queue_message("a@dest.test"), queue_message("b@dest.test")
    real_record = record.record
    calls: list[int] = []

    def flaky_record(reports: Any, **kwargs: Any) -> list[int]:
        calls.append(len(reports))
        if any(f.mid == bad for r in reports for f in r.finals):
            raise TypeError("a bug on this report's path, whatever its texts")
        return real_record(reports, **kwargs)

    monkeypatch.setattr(record, "record", flaky_record)
    journal_of_dead_process(delivered_report(good), delivered_report(bad))
    journal.recover(record.record_safely)
    assert states(good) == ["delivered"] and states(bad) == ["queued"]
    assert list(Path(settings.JOURNAL_DIR).glob("*.jnl")) == []
    [aside] = Path(settings.JOURNAL_DIR).glob("*.bad")
    assert [r.finals[0].mid for r in journal.read(aside)] == [bad]
    assert any(r.levelname == "ERROR" and "set aside" in r.getMessage() for r in caplog.records)
    before = len(calls)
    assert journal.recover(record.record_safely) == 0 and len(calls) == before  # never tried again


def test_a_journal_file_the_database_keeps_refusing_while_it_answers_is_set_aside(monkeypatch):
    mid = queue_message("a@dest.test")

    def refused(reports: Any, **kwargs: Any) -> list[int]:
        raise OperationalError("value too long for this database")  # not "the database is gone", though it says so

    monkeypatch.setattr(record, "record", refused)
    journal_of_dead_process(delivered_report(mid))
    for _ in range(journal.QUARANTINE_AFTER - 1):
        assert journal.recover(record.record_safely) == 0
        assert len(list(Path(settings.JOURNAL_DIR).glob("*.jnl"))) == 1  # a database error: tried again
    assert journal.recover(record.record_safely) == 0
    assert list(Path(settings.JOURNAL_DIR).glob("*.jnl")) == []
    assert len(list(Path(settings.JOURNAL_DIR).glob("*.bad"))) == 1


def test_a_recorded_report_with_a_delayed_recipient_is_not_recorded_again():
    make_route("dest.test", "127.0.0.1:2525")
    mid = queue_message("a@dest.test", "b@dest.test")
    report = hostile_report(mid)
    journal_of_dead_process(report)
    record.record_safely([report])  # the group commit made it; the process died before the journal knew
    assert states(mid) == ["delivered", "delayed"]
    assert journal.recover(record.record_safely) == 0
    assert DeliveryAttempt.objects.filter(message_id=mid).count() == 2  # not four
