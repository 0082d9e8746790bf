"""Durability settings: a damaged database is refused, SQLite commits with
synchronous=FULL, and every rename or new folder is followed by an fsync of the
folders it changed.

A power cut cannot be pulled here. The closest real thing: the daemon runs for
real (files, SQLite, the sandbox over HTTP) while the test watches the system
calls that make a rename durable, and checks none is missing."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, running, write_config

from daemon import fsutil
from daemon.config import load_settings
from daemon.queue import JobState, Queue
from daemon.queue_schema import file_intact
from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))
PAGE = 4096


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _real_database(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, Path]:
    """A database file written through the queue: 30 jobs delivered and filed."""
    config = write_config(tmp_path, sandbox)
    settings = load_settings(config)
    settings.state_dir.mkdir(mode=0o700)
    db = settings.database_path
    with Queue(db) as queue:
        for i in range(30):
            job = queue.begin_intake(
                destination="consents", original_name=f"doc{i}.pdf", sidecar_name=None,
                spool_document=f"/spool/{i}", spool_sidecar=None,
            )  # fmt: skip
            queue.complete_intake(job.id, sha256="0" * 64, size=1000 + i)
            leased = queue.claim(lease_seconds=60)
            assert leased is not None and leased.lease_token is not None
            queue.mark_sent(leased.id, leased.lease_token, remote_id=f"log-{i}", http_status=200)
            queue.mark_done(leased.id, f"/done/{i}")
    assert not db.with_name(db.name + "-wal").exists()  # checkpointed on close
    return config, db


def _scramble(db: Path, start: int, end: int) -> None:
    """XOR the bytes in [start, end) with garbage, as a failing disk might."""
    data = bytearray(db.read_bytes())
    assert len(data) >= end, "the database is smaller than expected"
    for offset in range(start, end):
        data[offset] ^= 0x5A
    db.write_bytes(bytes(data))


def _last_table_page(db: Path) -> int:
    """The last page (0-based): job or event rows, not the schema."""
    conn = sqlite3.connect(db)
    try:
        (count,) = conn.execute("PRAGMA page_count").fetchone()
    finally:
        conn.close()
    return int(count) - 1


@pytest.mark.parametrize("where", ["header", "schema", "rows"])
def test_run_refuses_a_damaged_database(tmp_path: Path, sandbox: Sandbox, where: str) -> None:
    config, db = _real_database(tmp_path, sandbox)
    if where == "header":  # "file is not a database"
        _scramble(db, 0, 100)
    elif where == "schema":  # the first page's table list: the file no longer opens
        _scramble(db, 108, PAGE)
    else:  # a page of job rows: the file opens, only the integrity check sees it
        last = _last_table_page(db)
        _scramble(db, last * PAGE + 8, (last + 1) * PAGE)
    damaged = db.read_bytes()
    assert not file_intact(db)

    result = _run(config, "run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("chartdrop: the database ")
    assert "failed its integrity check" in result.stderr
    assert "restore it from backup" in result.stderr
    assert db.read_bytes() == damaged  # refused before anything wrote to it
    if where == "header":  # the read-only commands say it in one sentence too
        status = _run(config, "status")
        assert status.returncode == 2 and "Traceback" not in status.stderr
        assert status.stderr.count("\n") == 1 and "database" in status.stderr


def test_an_intact_database_passes_the_check(tmp_path: Path, sandbox: Sandbox) -> None:
    _config, db = _real_database(tmp_path, sandbox)
    assert file_intact(db)
    assert not file_intact(tmp_path / "consents" / "done")  # not a database at all


def test_sqlite_commits_with_synchronous_full_in_wal_mode(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.sqlite3") as queue:
        conn = queue._conn
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class SyscallSpy:
    """Records, per thread and in order, the renames, new folders and directory
    fsyncs under ``root`` and the queue's commits."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = os.path.realpath(root)
        self.calls: list[tuple[str, str, int]] = []
        rename, fsync, mkdir = fsutil._renameat2, os.fsync, os.mkdir
        write = Queue._write
        assert rename is not None, "renameat2 is missing: the fallback path is not watched"

        def spy_rename(src: bytes, dst: bytes) -> int:
            err = rename(src, dst)
            if err == 0:
                self._add("rename", os.path.dirname(os.fsdecode(src)))
                self._add("rename", os.path.dirname(os.fsdecode(dst)))
            return err

        def spy_fsync(fd: int) -> None:
            fsync(fd)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                self._add("fsync", os.readlink(f"/proc/self/fd/{fd}"))

        def spy_mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
            mkdir(path, mode, dir_fd=dir_fd)
            self._add("mkdir", os.path.dirname(os.path.abspath(os.fsdecode(path))))

        @contextmanager
        def spy_write(queue: Queue, **kwargs: Any) -> Iterator[Any]:
            with write(queue, **kwargs) as conn:
                yield conn
            self.calls.append(("commit", "", threading.get_ident()))

        monkeypatch.setattr(fsutil, "_renameat2", spy_rename)
        monkeypatch.setattr(os, "fsync", spy_fsync)
        monkeypatch.setattr(os, "mkdir", spy_mkdir)
        monkeypatch.setattr(Queue, "_write", spy_write)

    def _add(self, kind: str, folder: str) -> None:
        folder = os.path.realpath(folder)
        if folder.startswith(self.root):
            self.calls.append((kind, folder, threading.get_ident()))

    def unsynced(self) -> list[tuple[str, str]]:
        """Renames and new folders whose folder the same thread did not fsync
        after them and before its next commit to the queue."""
        missing = []
        for i, (kind, folder, thread) in enumerate(self.calls):
            if kind not in ("rename", "mkdir"):
                continue
            later = [(k, f) for k, f, t in self.calls[i + 1 :] if t == thread]
            until_commit = (
                later[: later.index(("commit", ""))] if ("commit", "") in later else later
            )
            if ("fsync", folder) not in until_commit:
                missing.append((kind, os.path.relpath(folder, self.root)))
        return missing


def test_every_rename_and_new_folder_is_followed_by_a_directory_fsync(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, sandbox)
    settings = load_settings(config)
    settings.spool_dir.mkdir(parents=True, mode=0o700)
    inbox, done = settings.destination[0].inbox, settings.destination[0].done
    # Two hand-overs a crash interrupted, to watch recovery's renames too:
    # (1) the document reached the spool, its sidecar is still in the inbox;
    # (2) sent, the document already in done/, its sidecar still in the spool.
    with Queue(settings.database_path) as queue:
        first = queue.begin_intake(
            destination="consents", original_name="r1.pdf", sidecar_name="r1.pdf.json",
            spool_document=str(settings.spool_dir / "r1.document"),
            spool_sidecar=str(settings.spool_dir / "r1.sidecar"),
        )  # fmt: skip
        (settings.spool_dir / "r1.document").write_bytes(sample_pdf("r1"))
        (inbox / "r1.pdf.json").write_text(json.dumps(sample_sidecar()))
        second = queue.begin_intake(
            destination="consents", original_name="r2.pdf", sidecar_name="r2.pdf.json",
            spool_document=str(settings.spool_dir / "r2.document"),
            spool_sidecar=str(settings.spool_dir / "r2.sidecar"),
        )  # fmt: skip
        (settings.spool_dir / "r2.sidecar").write_text(json.dumps(sample_sidecar()))
        queue.complete_intake(second.id, sha256="x", size=1)
        leased = queue.claim(lease_seconds=60)
        assert leased is not None and leased.id == second.id and leased.lease_token
        queue.mark_sent(second.id, leased.lease_token, remote_id="log-r2", http_status=200)
        target = done / "2020-01-01" / "r2.pdf"
        target.parent.mkdir(parents=True)
        queue.set_final_path(second.id, str(target))
        target.write_bytes(sample_pdf("r2"))

    spy = SyscallSpy(tmp_path, monkeypatch)
    with running(config) as r:
        r.drop("good.pdf", sample_pdf("good"), sample_sidecar())
        bad = sample_sidecar()
        del bad["Patient"]
        r.drop("bad.pdf", sample_pdf("bad"), bad)
        jobs = r.finished(4)
    states = sorted(j.state for j in jobs)
    assert states == [JobState.DONE, JobState.DONE, JobState.DONE, JobState.FAILED]
    assert first.id in {j.id for j in jobs}
    kinds = {call[0] for call in spy.calls}
    assert kinds == {"rename", "mkdir", "fsync", "commit"}, "the spy watches the wrong calls"
    assert spy.unsynced() == []


def test_fsync_spy_catches_a_missing_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a bare rename without the folder fsync is reported."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    spy = SyscallSpy(tmp_path, monkeypatch)
    fsutil.rename_noreplace(tmp_path / "a" / "f", tmp_path / "b" / "f")
    fsutil.fsync_dir(tmp_path / "b")
    assert spy.unsynced() == [("rename", "a")]
