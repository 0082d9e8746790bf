"""A worker's move and the main loop's pending-move pass never trip over each other.

Both file a sent job: the worker right after the send (``Filer.finish_safely``)
and the main loop every MOVE_RETRY_SECONDS (``Filer.finish_pending``, from a
list it read a moment earlier). Whichever comes second finds the job filed,
which is not an error: no ``job.move_failed``, and the document is in done/
exactly once. Real folders, a real SQLite queue, real threads.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, events, write_config

from daemon.config import Settings, load_settings
from daemon.filing import Filer
from daemon.queue import Job, JobState, Queue


@pytest.fixture
def settings(tmp_path: Path, sandbox: Sandbox) -> Settings:
    s = load_settings(write_config(tmp_path, sandbox))
    s.spool_dir.mkdir(parents=True)
    return s


@pytest.fixture
def queue(settings: Settings) -> Iterator[Queue]:
    with Queue(settings.database_path) as q:
        yield q


def sent_job(q: Queue, settings: Settings, n: int, pdf: bytes) -> Job:
    """A job as a worker leaves it after a successful send: its pair in the spool."""
    doc, side = settings.spool_dir / f"{n}.pdf", settings.spool_dir / f"{n}.json"
    doc.write_bytes(pdf)
    side.write_text("{}")
    job = q.begin_intake(
        destination="consents",
        original_name=f"scan-{n}.pdf",
        sidecar_name=f"scan-{n}.json",
        spool_document=str(doc),
        spool_sidecar=str(side),
    )
    q.complete_intake(job.id, sha256="0" * 64, size=len(pdf))
    claimed = q.claim(lease_seconds=60)
    assert claimed is not None and claimed.lease_token is not None
    assert q.mark_sent(claimed.id, claimed.lease_token, remote_id=None, http_status=200)
    got = q.get(claimed.id)
    assert got is not None and got.state is JobState.SENT
    return got


def done_files(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.destination[0].done.rglob("*") if p.is_file())


class PausingFiler(Filer):
    """A Filer whose first move stops just before its rename, until released:
    the racing order, made deterministic (the other path runs in the gap)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.at_rename = threading.Event()
        self.go_on = threading.Event()
        self._paused = False

    def _share(self, path: Path, job: Job, *, directory: bool = False) -> None:
        super()._share(path, job, directory=directory)
        if not directory and not self._paused:  # the spool document, before its rename
            self._paused = True
            self.at_rename.set()
            assert self.go_on.wait(10)


def test_pending_pass_that_read_the_job_before_the_worker_filed_it(
    settings: Settings, queue: Queue, pdf: bytes, log_stream: io.StringIO
) -> None:
    job = sent_job(queue, settings, 1, pdf)
    filer = Filer(settings, queue)
    stale = queue.jobs(states=(JobState.SENT, JobState.REJECTED))  # the main loop's list
    assert filer.finish_safely(job)  # the worker files it
    assert [filer.finish_safely(j) for j in stale] == [False]  # then the main loop's pass
    assert events(log_stream, "job.move_failed") == []
    assert len(events(log_stream, "job.done")) == 1
    assert done_files(settings) == ["scan-1.json", "scan-1.pdf"]
    final = queue.get(job.id)
    assert final is not None and final.state is JobState.DONE
    assert Path(final.final_path or "").read_bytes() == pdf


@pytest.mark.parametrize("first", ["main loop", "worker"])
def test_the_other_path_moving_in_the_middle_of_a_move(
    settings: Settings, queue: Queue, pdf: bytes, log_stream: io.StringIO, first: str
) -> None:
    job = sent_job(queue, settings, 1, pdf)
    filer = PausingFiler(settings, queue)
    if first == "main loop":
        one = threading.Thread(target=filer.finish_pending)
    else:
        one = threading.Thread(target=filer.finish_safely, args=(job,))
    one.start()
    assert filer.at_rename.wait(10)  # the first path checked the spool, about to rename
    second = filer.finish_safely(job) if first == "main loop" else bool(filer.finish_pending())
    filer.go_on.set()
    one.join(10)
    assert not one.is_alive()
    assert second is False  # the second path left the move to the first
    assert events(log_stream, "job.move_failed") == []
    assert len(events(log_stream, "job.done")) == 1
    assert done_files(settings) == ["scan-1.json", "scan-1.pdf"]
    assert list(settings.spool_dir.iterdir()) == []
    final = queue.get(job.id)
    assert final is not None and final.state is JobState.DONE
    assert Path(final.final_path or "").read_bytes() == pdf


def test_workers_and_pending_passes_running_together(
    settings: Settings, queue: Queue, pdf: bytes, log_stream: io.StringIO
) -> None:
    jobs = [sent_job(queue, settings, n, pdf) for n in range(60)]
    filer = Filer(settings, queue)
    stop = threading.Event()

    def main_loop() -> None:
        while not stop.is_set():
            filer.finish_pending()

    def worker(mine: list[Job]) -> None:
        for job in mine:
            filer.finish_safely(job)

    passes = [threading.Thread(target=main_loop) for _ in range(2)]
    workers = [threading.Thread(target=worker, args=(jobs[i::3],)) for i in range(3)]
    for t in passes + workers:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    for t in passes:
        t.join(60)
    assert events(log_stream, "job.move_failed") == []
    assert len(events(log_stream, "job.done")) == len(jobs)
    names = done_files(settings)
    assert names == sorted(f"scan-{n}.{ext}" for n in range(60) for ext in ("json", "pdf"))
    assert {j.state for j in queue.jobs(limit=1000)} == {JobState.DONE}
    assert list(settings.spool_dir.iterdir()) == []
