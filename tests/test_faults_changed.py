"""A file that changes while its send waits (issue 12, item 2), on the real daemon
(a subprocess) against the real sandbox: the scanner keeps the file open after
chartdrop took it and saves a second page while the send is under way. done/
holds exactly the bytes that were sent, never the later version."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from conftest import Sandbox, wait_until
from crash_harness import daemon, db_jobs, received_contents, sha, soak_config

from daemon.errors import ChangedError
from daemon.samples import sample_pdf, sample_sidecar
from daemon.snapshot import snapshot


def test_a_file_changed_while_its_send_waited_is_not_what_done_holds(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = soak_config(tmp_path, sandbox, workers=1)
    db = tmp_path / "state" / "chartdrop.sqlite3"
    inbox = tmp_path / "consents" / "inbox"
    first, second = sample_pdf("page one"), sample_pdf("page one, page two", padding=5_000)
    arrived = threading.Event()
    latency = sandbox.state.latency

    def noting() -> float:
        arrived.set()
        return latency()

    sandbox.state.latency = noting  # type: ignore[method-assign]
    sandbox.state.set_faults(latency_seconds=1.5)  # the send waits; the scanner saves again
    with daemon(config, tmp_path / "logs") as d:
        d.start()
        assert d.wait_started()
        (inbox / "CANARY grows.pdf.json").write_text(json.dumps(sample_sidecar()))
        fd = os.open(inbox / "CANARY grows.pdf", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, first)  # the first save, complete; the scanner keeps it open
            assert arrived.wait(30), "the send never reached the sandbox"
            os.pwrite(fd, second, 0)  # the second save, through the same open file
        finally:
            os.close(fd)
        job = wait_until(lambda: (db_jobs(db).get("done") or [None])[0], timeout=30)
        assert d.terminate() == 0
    ((_, sent),) = received_contents(sandbox.state)
    assert sent == sha(first)
    (filed,) = (tmp_path / "consents" / "done").rglob("*.pdf")
    assert sha(filed.read_bytes()) == sent  # exactly the bytes that were sent
    assert job.sha256 == sent  # type: ignore[attr-defined]
    assert not list((tmp_path / "state" / "spool").iterdir())


def test_the_snapshot_keeps_the_bytes_it_checked_only_when_asked(tmp_path: Path) -> None:
    data = sample_pdf("kept", padding=3_000)
    spool = tmp_path / "job.document"
    spool.write_bytes(data)
    os.utime(spool, (1_000_000, 1_234_567))
    inode = spool.stat().st_ino
    digest = hashlib.sha256(data).hexdigest()
    kept = snapshot(spool, digest, keep_bytes=len(data))
    assert kept is not None and kept.data == data and kept.size == len(data)
    assert kept.mtime == 1_234_567 and spool.stat().st_mtime == 1_234_567
    assert spool.stat().st_ino != inode and spool.read_bytes() == data  # a private copy
    not_kept = snapshot(spool, digest, keep_bytes=len(data) - 1)  # too big to keep
    assert not_kept is not None and not_kept.data is None and not_kept.size == len(data)
    spool.write_bytes(data + b"more")  # changed since the hash: refused, nothing kept
    with pytest.raises(ChangedError):
        snapshot(spool, digest, keep_bytes=10 * len(data))
    assert spool.read_bytes() == data + b"more"
    assert [p.name for p in tmp_path.iterdir()] == ["job.document"]
