"""The intake loop with a fake clock (no sleeping): a real inbox folder, a real
SQLite queue, and the watcher's calls made by hand (``Intake.notify``) where
the tests need an event. The one settle window of a pair, a held file judged
once per change, a blank pre-allocated file held, and a big inbox taken in
bounded slices, oldest first."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, write_config
from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileOpenedEvent,
)

from daemon.config import Destination, load_settings
from daemon.content import BLANK
from daemon.intake import TICK_BUDGET_SECONDS, InboxEvents, Intake
from daemon.queue import Job, JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Loop:
    def __init__(self, intake: Intake, queue: Queue, clock: FakeClock) -> None:
        self.intake, self.queue, self.clock = intake, queue, clock
        self.dest: Destination = intake.settings.destination[0]

    @property
    def inbox(self) -> Path:
        return self.dest.inbox

    def write(self, name: str, data: bytes | str) -> None:
        """Write a file and tell intake, as the watcher would."""
        path = self.inbox / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        self.intake.notify(self.dest.name, str(path))

    def at(self, t: float) -> float:
        """Tick at ``t`` seconds after the start; returns the tick's next-due answer."""
        self.clock.now = 1000.0 + t
        return self.intake.tick()

    def jobs(self) -> list[Job]:
        return self.queue.jobs(limit=100_000)


@pytest.fixture
def make_loop(tmp_path: Path, sandbox: Sandbox) -> Iterator[Callable[..., Loop]]:
    queues: list[Queue] = []

    def make(**top: Any) -> Loop:
        values = {"settle_seconds": 5, "rescan_seconds": 3600} | top
        settings = load_settings(write_config(tmp_path, sandbox, **values))
        settings.spool_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        queue = Queue(settings.database_path)
        queues.append(queue)
        clock = FakeClock()
        return Loop(Intake(settings, queue, clock=clock), queue, clock)

    yield make
    for queue in queues:
        queue.close()


SIDECAR = json.dumps(sample_sidecar())
PDF = sample_pdf("Loop")


# -- one settle window per pair ---------------------------------------------------
def test_pair_dropped_together_is_taken_after_one_settle_window(
    make_loop: Callable[..., Loop],
) -> None:
    loop = make_loop()
    loop.write("scan.pdf", PDF)
    loop.write("scan.pdf.json", SIDECAR)
    assert loop.at(0) == pytest.approx(5.0)  # asleep until the window ends
    assert loop.at(4.9) == pytest.approx(0.1)
    assert loop.jobs() == []
    loop.at(5.0)  # not 2 x settle: the sidecar was watched from the start too
    (job,) = loop.jobs()
    assert job.state == JobState.QUEUED
    assert os.listdir(loop.inbox) == []


def test_a_pdf_growing_for_20_seconds_is_taken_once_its_last_page_settled(
    make_loop: Callable[..., Loop],
) -> None:
    """A scanner adds a page every half second for 20 s (fake time); every prefix
    ends in %%EOF, so only the settle window holds it. tests/test_writers.py has
    the real-time smoke test of the same writer (5 s)."""
    from test_writers import incremental_pdf

    loop = make_loop(settle_seconds=1.5)
    loop.write("scan.pdf.json", SIDECAR)
    data = b""
    for i, part in enumerate(incremental_pdf(40)):
        data += part
        loop.write("scan.pdf", data)
        loop.at(i * 0.5)
        assert loop.jobs() == []  # complete-looking at every step, but still growing
    last = 40 * 0.5
    loop.at(last + 1.4)
    assert loop.jobs() == []
    loop.at(last + 1.5)
    (job,) = loop.jobs()
    assert (job.state, job.size) == (JobState.QUEUED, len(data))


def test_sidecar_that_comes_later_is_taken_a_window_after_it(
    make_loop: Callable[..., Loop],
) -> None:
    loop = make_loop()
    loop.write("scan.pdf", PDF)
    loop.at(0)
    loop.clock.now = 1003.0
    loop.write("scan.json", SIDECAR)
    assert loop.at(3) == pytest.approx(2.0)  # the document's window ends at 5 ...
    assert loop.at(5) == pytest.approx(3.0)  # ... the pair's at 8 (sidecar at 3 + 5)
    assert loop.jobs() == []
    loop.at(8)
    assert [j.original_name for j in loop.jobs()] == ["scan.pdf"]
    assert loop.jobs()[0].sidecar_name == "scan.json"


def test_a_rewritten_sidecar_restarts_the_pair_window(make_loop: Callable[..., Loop]) -> None:
    loop = make_loop()
    loop.write("scan.pdf", PDF)
    loop.write("scan.pdf.json", "{")
    loop.at(0)
    loop.clock.now = 1004.0
    loop.write("scan.pdf.json", SIDECAR)  # finished writing at 4
    loop.at(4)
    loop.at(5)
    assert loop.jobs() == []
    loop.at(9)
    (job,) = loop.jobs()
    assert job.state == JobState.QUEUED  # the whole sidecar, not the "{" of t=0


# -- a held file costs nothing until it changes -------------------------------------
def test_an_incomplete_file_is_judged_once_per_change(make_loop: Callable[..., Loop]) -> None:
    loop = make_loop(rescan_seconds=20)
    cut = PDF[: PDF.rindex(b"%%EOF")]
    loop.write("scan.pdf", cut)
    loop.write("scan.pdf.json", SIDECAR)
    loop.at(0)
    loop.at(5)
    assert loop.intake.looks == 1
    assert loop.intake.report._last == {
        "consents": {"incomplete": 1, "incomplete_since": pytest.approx(time.time(), abs=60),
                     "errors": 0},
    }  # fmt: skip
    for t in range(6, 19):  # ticks and events (its own opens) do not read it again
        assert loop.at(t) == pytest.approx(20 - t)  # asleep until the next rescan
        loop.intake.notify("consents", str(loop.inbox / "scan.pdf"))
    assert loop.intake.looks == 1
    loop.at(20)  # a rescan reads a held file once more (lstat cannot see every change)
    assert loop.intake.looks == 2
    loop.at(21)
    assert loop.intake.looks == 2
    assert loop.jobs() == []
    with (loop.inbox / "scan.pdf").open("ab") as fh:
        fh.write(PDF[len(cut) :])  # the writer finishes
    loop.intake.notify("consents", str(loop.inbox / "scan.pdf"))
    loop.at(22)
    loop.at(27)
    (job,) = loop.jobs()
    assert job.state == JobState.QUEUED
    assert loop.intake.looks == 3


def test_open_and_close_without_writing_are_not_events(tmp_path: Path) -> None:
    """Judging a file opens it: inotify reports that, and it must not wake intake."""
    seen: list[str] = []
    handler = InboxEvents("consents", lambda dest, path: seen.append(path))
    path = str(tmp_path / "scan.pdf")
    handler.dispatch(FileOpenedEvent(path))
    handler.dispatch(FileClosedNoWriteEvent(path))
    assert seen == []
    handler.dispatch(FileModifiedEvent(path))
    handler.dispatch(FileClosedEvent(path))
    handler.dispatch(FileCreatedEvent(path))
    assert seen == [path] * 3


def test_a_blank_preallocated_file_is_held_not_failed(make_loop: Callable[..., Loop]) -> None:
    """A Windows copy makes the file at full size, zeros, before any data."""
    loop = make_loop(sidecar_timeout_seconds=30)
    loop.write("scan.pdf.json", SIDECAR)
    loop.write("scan.pdf", bytes(len(PDF)))
    loop.at(0)
    loop.at(5)
    loop.at(100)  # long past sidecar_timeout_seconds: still held, not failed
    assert loop.jobs() == []
    assert sorted(os.listdir(loop.inbox)) == ["scan.pdf", "scan.pdf.json"]
    assert loop.intake.report._last is not None
    assert loop.intake.report._last["consents"]["incomplete"] == 1
    loop.clock.now = 1101.0
    loop.write("scan.pdf", PDF)  # the copy fills it in
    loop.at(101)
    loop.at(106)
    (job,) = loop.jobs()
    assert job.state == JobState.QUEUED


def test_blank_reason_is_plain() -> None:
    assert "zero" in BLANK
    assert "scan" not in BLANK


# -- a big inbox -------------------------------------------------------------------
def test_a_big_inbox_is_taken_in_bounded_slices_oldest_first(
    make_loop: Callable[..., Loop], monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 pairs (20,000 names) waiting at start: one listing of the folder (not
    one per sidecar), each tick bounded, the oldest documents (by mtime) first."""
    loop = make_loop(settle_seconds=3)
    n = 10_000
    base = 1_700_000_000 * 10**9
    for i in range(n):
        doc = loop.inbox / f"{i:05d}.pdf"
        doc.write_bytes(PDF)
        (loop.inbox / f"{i:05d}.pdf.json").write_text(SIDECAR)
        mtime = base + (n - i) * 10**6  # the last written is the oldest
        os.utime(doc, ns=(mtime, mtime))
    listings = 0
    real_scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        nonlocal listings
        listings += 1
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    slack = 3.0  # a shared, busy test machine: the bound is generous, the counts exact
    for _ in range(200):  # the rescan, in slices
        started = time.monotonic()
        due = loop.at(0)
        assert time.monotonic() - started < TICK_BUDGET_SECONDS + slack
        if due > 0:
            break
    assert due == pytest.approx(3.0)  # listed: nothing is due before the window ends
    assert len(loop.intake._inboxes["consents"].index) == 2 * n
    assert loop.intake.looks == 0
    taken: list[str] = []
    for _ in range(3):
        started = time.monotonic()
        assert loop.at(3) == 0.0  # more is ready: the next slice comes at once
        assert time.monotonic() - started < TICK_BUDGET_SECONDS + slack
        now = sorted(j.original_name for j in loop.jobs())
        assert len(now) > len(taken)
        taken = now
    assert listings == 1
    assert loop.intake.looks == len(taken) < n
    oldest = sorted((f"{i:05d}.pdf" for i in range(n)), reverse=True)[: len(taken)]
    assert taken == sorted(oldest)
    assert all(j.state == JobState.QUEUED for j in loop.jobs())


def _held_by_daemon() -> int:
    """Bytes allocated by chartdrop's code (and namedtuples' ``<string>`` constructors)
    that are still alive; not the interpreter's own tables (pathlib interns every
    name it joins, in a table that never shrinks)."""
    ours = [tracemalloc.Filter(True, "*/daemon/*"), tracemalloc.Filter(True, "<string>")]
    traces = tracemalloc.take_snapshot().filter_traces(ours)
    return sum(stat.size for stat in traces.statistics("filename"))


def test_a_backlog_costs_a_few_hundred_bytes_a_name(make_loop: Callable[..., Loop]) -> None:
    """What intake keeps per waiting name (pairing index, lstat, settle window, due
    time) is what a 20,000-pair backlog costs in RSS: it was 1,350 bytes a name
    (≈55 MB for 40,000 names), and the daemon's target is 100 MB in all. Once the
    names are gone, so is what was kept for them."""
    loop = make_loop()
    n = 5_000
    for i in range(n):
        (loop.inbox / f"scan {i:05d}.pdf").write_bytes(PDF)
        (loop.inbox / f"scan {i:05d}.pdf.json").write_text(SIDECAR)
    tracemalloc.start()
    try:
        before = _held_by_daemon()
        for _ in range(100):  # the rescan, in slices, as the daemon does it
            if loop.at(0) > 0:
                break
        assert loop.at(0) == pytest.approx(5.0)  # all listed, none due before the window ends
        assert len(loop.intake._inboxes["consents"].index) == 2 * n
        per_name = (_held_by_daemon() - before) / (2 * n)
        for path in loop.inbox.iterdir():
            path.unlink()
        assert loop.intake.rescan(loop.dest) == 0
        left = (_held_by_daemon() - before) / (2 * n)
    finally:
        tracemalloc.stop()
    assert 100 < per_name < 700, per_name
    assert left < 150, left  # the tables' own slots, which dicts never give back


def test_events_for_a_missing_inbox_do_not_spin_the_loop(make_loop: Callable[..., Loop]) -> None:
    loop = make_loop()
    loop.at(0)
    loop.inbox.rename(loop.inbox.with_name("moved-away"))
    for t in range(1, 4):
        loop.intake.notify("consents", str(loop.inbox / "scan.pdf"))
        assert loop.at(t) > 0.5  # paused: asleep until the next rescan, not at once
    assert loop.jobs() == []
