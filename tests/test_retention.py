"""Retention of done/: real folders and a real SQLite file, an injected clock.

Jobs are filed by the real Filer into the dated folder of their (fake) filing
day; Retention then runs at chosen moments."""

from __future__ import annotations

import io
import json
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from conftest import running, wait_until, write_config

from daemon import logs
from daemon.config import Settings, load_settings
from daemon.filing import Filer
from daemon.queue import SCRUBBED_NAME, Job, JobState, Queue
from daemon.retention import DAY_SECONDS, Retention
from daemon.samples import sample_pdf, sample_sidecar

T0 = datetime(2024, 3, 1, 12, 0).timestamp()  # local noon, far from any midnight
PHI_COLUMNS = ("original_name", "sidecar_name", "spool_document", "spool_sidecar", "final_path")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def day_of(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%Y-%m-%d")


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    fake = SimpleNamespace(url="http://127.0.0.1:9", private_key=tmp_path / "key.pem")
    settings = load_settings(write_config(tmp_path, fake, keep_done_days=30))  # type: ignore[arg-type]
    settings.spool_dir.mkdir(parents=True, mode=0o700)
    clock = Clock()
    queue = Queue(settings.database_path, clock=clock)
    yield settings, queue, clock
    queue.close()


def file_done(settings: Settings, queue: Queue, name: str, *, blob: bool = False) -> Job:
    """A job delivered and filed into done/<today by the clock>/ by the real Filer."""
    pdf = sample_pdf(name)
    doc, side = settings.spool_dir / f"{name}.document", settings.spool_dir / f"{name}.sidecar"
    doc.write_bytes(pdf)
    side.write_text(json.dumps(sample_sidecar()))
    job = queue.begin_intake(
        destination="consents",
        original_name=name,
        sidecar_name=name + ".json",
        spool_document=str(doc),
        spool_sidecar=str(side),
    )
    queue.complete_intake(job.id, sha256="ab" * 32, size=len(pdf))
    leased = queue.claim(lease_seconds=60)
    assert leased is not None and leased.lease_token is not None
    if blob:
        queue.record_upload(job.id, leased.lease_token, "https://blob.example/abc")
    queue.mark_sent(job.id, leased.lease_token, remote_id=f"log-{len(name)}", http_status=200)
    folder = settings.destination[0].done / day_of(queue._clock())
    folder.mkdir(exist_ok=True)
    queue.set_final_path(job.id, str(folder / name))
    Filer(settings, queue).finish(queue.get(job.id))  # type: ignore[arg-type]
    done = queue.get(job.id)
    assert done is not None and done.state == JobState.DONE
    assert Path(done.final_path or "").read_bytes() == pdf
    return done


def test_only_what_is_old_enough_is_deleted_and_rows_are_scrubbed(setup: Any) -> None:
    settings, queue, clock = setup
    old = file_done(settings, queue, "Bixby_Timothy_old.pdf", blob=True)
    clock.now += 10 * DAY_SECONDS
    young = file_done(settings, queue, "Bixby_Timothy_young.pdf")
    old_path, young_path = Path(old.final_path), Path(young.final_path)

    clock.now = T0 + 30 * DAY_SECONDS - 60  # the old one is a minute short of 30 days
    retention = Retention(settings, queue, clock=clock)
    report = retention.maybe_run()
    assert report is not None and report.files_deleted == 0
    assert old_path.exists()

    clock.now = T0 + 30 * DAY_SECONDS + 60
    assert retention.maybe_run() is None  # daily: not again within the day
    report = Retention(settings, queue, clock=clock).maybe_run()
    assert report is not None
    assert (report.files_deleted, report.rows_scrubbed, report.files_unknown) == (2, 1, 0)
    assert not old_path.exists() and not old_path.with_name(old_path.name + ".json").exists()
    assert not old_path.parent.exists()  # the emptied dated folder went too
    assert young_path.exists() and young_path.with_name(young_path.name + ".json").exists()

    scrubbed = queue.get(old.id)
    assert scrubbed is not None and scrubbed.state == JobState.DONE
    assert scrubbed.original_name == SCRUBBED_NAME
    assert all(getattr(scrubbed, c) in (None, SCRUBBED_NAME) for c in PHI_COLUMNS)
    assert scrubbed.blob_uri is None
    # the non-PHI facts stay: enough to answer "was it sent, when, what did Redox say"
    kept = ("document_id", "sha256", "size", "remote_id", "http_status", "sent_at", "finished_at")
    assert all(getattr(scrubbed, c) == getattr(old, c) for c in kept)
    assert queue.get(young.id) == young  # untouched

    events = queue.events(old.id)
    assert [e["to_state"] for e in events][-3:] == ["sent", "done", "done"]
    assert events[-1]["detail"] == "retention: document deleted"
    assert events[-1]["sha256"] == old.sha256 and events[-1]["size"] == old.size

    clock.now = T0 + 40 * DAY_SECONDS + 60
    report = Retention(settings, queue, clock=clock).maybe_run()
    assert report is not None and report.files_deleted == 2
    assert not young_path.exists()
    assert queue.done_before(clock.now) == []  # nothing left to do
    report = Retention(settings, queue, clock=clock).maybe_run()
    assert report is not None and report.rows_scrubbed == 0


def test_failed_and_unknown_files_are_never_deleted(setup: Any) -> None:
    settings, queue, clock = setup
    dest = settings.destination[0]
    failed_doc = dest.failed / "Bixby_refused.pdf"
    failed_doc.write_bytes(sample_pdf("f"))
    os.utime(failed_doc, (0, 0))
    stray_dir = dest.done / "2001-01-01"
    stray_dir.mkdir()
    (stray_dir / "put_here_by_hand.pdf").write_bytes(b"x")
    job = file_done(settings, queue, "gone.pdf")
    Path(job.final_path or "").unlink()  # staff moved it away already

    clock.now = T0 + 365 * DAY_SECONDS
    report = Retention(settings, queue, clock=clock).maybe_run()
    assert report is not None
    assert (report.files_missing, report.files_unknown, report.rows_scrubbed) == (1, 1, 1)
    assert failed_doc.exists() and (stray_dir / "put_here_by_hand.pdf").exists()
    assert queue.events(job.id)[-1]["detail"] == "retention: document already gone"


def test_symlinks_in_done_are_never_followed(setup: Any, tmp_path: Path) -> None:
    settings, queue, clock = setup
    outside = tmp_path / "outside"
    outside.mkdir()
    a = file_done(settings, queue, "a.pdf")
    clock.now += DAY_SECONDS  # b in the next day's folder
    b = file_done(settings, queue, "b.pdf")
    # a's document is replaced by a link to a file elsewhere with the same size
    a_path = Path(a.final_path or "")
    target = outside / "a.pdf"
    target.write_bytes(a_path.read_bytes())
    a_path.unlink()
    a_path.symlink_to(target)
    # b's dated folder is replaced by a link to a folder elsewhere holding b's names
    b_path = Path(b.final_path or "")
    day = b_path.parent
    (outside / "day").mkdir()
    (outside / "day" / "b.pdf").write_bytes(b_path.read_bytes())
    (outside / "day" / "b.pdf.json").write_text("{}")
    day.rename(tmp_path / "moved-day")
    day.symlink_to(outside / "day")

    clock.now = T0 + 32 * DAY_SECONDS
    report = Retention(settings, queue, clock=clock).maybe_run()
    assert report is not None and report.files_kept == 2 and report.files_deleted == 0
    assert report.files_unknown == 2  # a's link and sidecar; b's folder is a link: not entered
    assert target.exists() and a_path.is_symlink() and a_path.with_suffix(".pdf.json").exists()
    assert day.is_symlink()
    assert sorted(p.name for p in (outside / "day").iterdir()) == ["b.pdf", "b.pdf.json"]
    details = {queue.events(j.id)[-1]["detail"] for j in (a, b)}
    assert details == {
        "retention: files kept (not a regular file)",
        "retention: files kept (the dated folder is a link)",
    }
    for job in (a, b):  # the rows are scrubbed all the same: PHI does not stay in the database
        scrubbed = queue.get(job.id)
        assert scrubbed is not None and scrubbed.final_path is None


def test_a_changed_document_is_left_in_place(setup: Any) -> None:
    settings, queue, clock = setup
    job = file_done(settings, queue, "annotated.pdf")
    path = Path(job.final_path or "")
    path.write_bytes(path.read_bytes() + b"% staff annotation\n")
    clock.now = T0 + 31 * DAY_SECONDS
    report = Retention(settings, queue, clock=clock).maybe_run()
    assert report is not None and report.files_kept == 1 and path.exists()


def test_the_daemon_runs_retention_at_start_and_logs_counts(tmp_path: Path, sandbox: Any) -> None:
    """A done job from long ago is cleaned when the real daemon starts."""
    config = write_config(tmp_path, sandbox, keep_done_days=1)
    settings = load_settings(config)
    settings.spool_dir.mkdir(parents=True, mode=0o700)
    clock = Clock()  # 2024: long before today
    queue = Queue(settings.database_path, clock=clock)
    job = file_done(settings, queue, "Bixby_long_ago.pdf")
    queue.close()
    stream = io.StringIO()
    logs.configure(fmt="json", stream=stream)
    try:
        with running(config) as r:
            wait_until(lambda: r.queue.get(job.id).original_name == SCRUBBED_NAME)  # type: ignore[union-attr]
    finally:
        structlog.reset_defaults()
    assert not Path(job.final_path or "").exists()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [entry for entry in lines if entry["event"] == "retention.done"]
    assert line["files_deleted"] == 2 and line["rows_scrubbed"] == 1
    assert "Bixby" not in json.dumps(lines)


# -- failed rows and the audit trail ------------------------------------------------


def fail_one(settings: Settings, queue: Queue, name: str) -> Job:
    """A job rejected and filed into failed/ by the real Filer."""
    pdf = sample_pdf(name)
    doc, side = settings.spool_dir / f"{name}.document", settings.spool_dir / f"{name}.sidecar"
    doc.write_bytes(pdf)
    side.write_text(json.dumps(sample_sidecar()))
    job = queue.begin_intake(
        destination="consents",
        original_name=name,
        sidecar_name=name + ".json",
        spool_document=str(doc),
        spool_sidecar=str(side),
    )
    queue.complete_intake(job.id, sha256="cd" * 32, size=len(pdf))
    leased = queue.claim(lease_seconds=60)
    assert leased is not None and leased.lease_token is not None
    queue.reject(job.id, leased.lease_token, error_kind="invalid_sidecar", error="Media bad")
    Filer(settings, queue).finish(queue.get(job.id))  # type: ignore[arg-type]
    failed = queue.get(job.id)
    assert failed is not None and failed.state == JobState.FAILED and failed.final_path
    return failed


def test_failed_and_abandoned_rows_lose_their_names_after_keep_failed_days(setup: Any) -> None:
    settings, queue, clock = setup
    retention = Retention(settings, queue, clock=clock)
    old = fail_one(settings, queue, "old-failed.pdf")
    abandoned = queue.begin_intake(
        destination="consents", original_name="gone.pdf", sidecar_name=None,
        spool_document=None, spool_sidecar=None,
    )  # fmt: skip
    queue.abandon_intake(abandoned.id, "the files never arrived")
    clock.now += 60 * DAY_SECONDS
    young = fail_one(settings, queue, "young-failed.pdf")
    clock.now += 31 * DAY_SECONDS  # old ones: 91 days; young: 31 days (keep_failed_days 90)
    report = retention.run(clock.now)
    assert report.failed_rows_scrubbed == 2
    for job_id in (old.id, abandoned.id):
        row = queue.get(job_id)
        assert row is not None and row.original_name == SCRUBBED_NAME
        assert all(getattr(row, c) in (None, SCRUBBED_NAME) for c in PHI_COLUMNS)
        assert row.last_error  # the PHI-free reason stays for `chartdrop show`
    kept = queue.get(young.id)
    assert kept is not None and kept.original_name == "young-failed.pdf"
    # the files in failed/ are never touched
    assert Path(old.final_path or "").is_file() and Path(young.final_path or "").is_file()
    assert [
        e["detail"] for e in queue.events(old.id) if (e["detail"] or "").startswith("retention")
    ] == ["retention: file names removed"]
    assert retention.run(clock.now).failed_rows_scrubbed == 0  # once only


def test_events_are_kept_keep_events_days_then_pruned(setup: Any) -> None:
    settings, queue, clock = setup
    retention = Retention(settings, queue, clock=clock)
    old = fail_one(settings, queue, "old.pdf")
    clock.now += 1000 * DAY_SECONDS
    young = fail_one(settings, queue, "young.pdf")
    old_count, young_count = len(queue.events(old.id)), len(queue.events(young.id))
    assert old_count > 0 and young_count > 0
    clock.now += 1200 * DAY_SECONDS  # old: 2200 days (> 2190), young: 1200 days
    report = retention.run(clock.now)
    assert report.events_pruned == old_count
    # only this run's own scrub row is left of the old job's history
    assert [e["detail"] for e in queue.events(old.id)] == ["retention: file names removed"]
    # the young job's events, plus retention's own scrub row, are all still there
    assert len(queue.events(young.id)) == young_count + 1
    # the append-only guard still holds for rows inside the window
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), queue._write() as conn:
        conn.execute("DELETE FROM events WHERE job_id = ?", (young.id,))
