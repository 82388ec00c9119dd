"""delivery.maillog.writer: database rows in the caller's transaction, mail.current after commit, rollover, and the
background writer (one thread appending committed batches in commit order)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.utils import timezone

from delivery import maillog
from delivery.models import MailLogLine


def _file_lines(directory: Path) -> list[str]:
    text = (directory / "mail.current").read_text()
    return [line.split(" Info: ", 1)[1] for line in text.splitlines() if " Info: " in line]


@pytest.mark.django_db
def test_write_stores_the_rows_now_and_appends_to_the_file_on_commit(
    settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MAIL_LOG_DIR = tmp_path
    at = timezone.now()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        maillog.writer.write([maillog.lines.queued(7), maillog.lines.dcid_close(3)], at=at)
        rows = list(MailLogLine.objects.order_by("id").values_list("text", "mid", "dcid"))
        assert rows == [("MID 7 queued for delivery", 7, None), ("DCID 3 close", None, 3)]
        assert not (tmp_path / "mail.current").exists()
    assert len(callbacks) == 1
    assert _file_lines(tmp_path)[-2:] == ["MID 7 queued for delivery", "DCID 3 close"]


@pytest.mark.django_db
def test_write_of_nothing_writes_nothing(settings, tmp_path, django_capture_on_commit_callbacks):
    settings.MAIL_LOG_DIR = tmp_path
    with django_capture_on_commit_callbacks() as callbacks:
        maillog.writer.write([], at=timezone.now())
    assert callbacks == []
    assert not MailLogLine.objects.exists()


def test_a_new_file_starts_with_the_esa_header_and_rolls_over_by_size_keeping_the_newest(tmp_path):
    log = maillog.writer.MailLogFile(tmp_path, max_bytes=300, max_age=3600, keep=2)
    for i in range(12):
        log.append([f"Wed Jul  2 09:15:07 2014 Info: MID {i} queued for delivery"])
    saved = log.saved_files()
    assert 1 <= len(saved) <= 2
    for path in [*saved, log.path]:
        assert path.read_text().splitlines()[0].endswith("Info: Begin Logfile")
    assert all(p.read_text().endswith("Info: Logfile rolled over\n") for p in saved)
    assert "MID 11 queued for delivery" in log.path.read_text()


def test_background_writer_appends_every_line_in_order_and_flushes_at_stop(settings, tmp_path):
    settings.MAIL_LOG_DIR = tmp_path
    at = timezone.now()
    maillog.writer.start_background_writer()
    try:

        def producer(base: int) -> None:
            for i in range(200):
                maillog.writer._append([maillog.lines.format_line(maillog.lines.queued(base + i), at)])

        producer(0)
        threads = [threading.Thread(target=producer, args=(1000 * k,)) for k in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        maillog.writer.stop_background_writer()
    lines = [x for x in _file_lines(tmp_path) if x.startswith("MID ")]
    assert lines[:200] == [f"MID {i} queued for delivery" for i in range(200)]
    assert len(lines) == 600
    numbers = [int(x.split()[1]) for x in lines]
    for k in (1, 2):  # each producer's lines in its own order
        assert [f"MID {n} queued for delivery" for n in numbers if n // 1000 == k] == [
            f"MID {1000 * k + i} queued for delivery" for i in range(200)
        ]
    maillog.writer._append(["after stop"])  # no writer any more: appended at once
    assert (tmp_path / "mail.current").read_text().endswith("after stop\n")


def test_rollover_takes_the_lines_committed_before_it(settings, tmp_path):
    settings.MAIL_LOG_DIR = tmp_path
    at = timezone.now()
    maillog.writer.start_background_writer()
    try:
        maillog.writer._append([maillog.lines.format_line(maillog.lines.queued(1), at)])
        saved = maillog.writer.log_file().rollover()
        maillog.writer._append([maillog.lines.format_line(maillog.lines.queued(2), at)])
        assert maillog.writer.flush(10)
    finally:
        maillog.writer.stop_background_writer()
    assert saved is not None and "MID 1 queued" in saved.read_text()
    assert "MID 2 queued" in (tmp_path / "mail.current").read_text()
