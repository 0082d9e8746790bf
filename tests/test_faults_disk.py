"""A disk that fills at the commit after a successful send (issue 12, item 4), on
the real daemon (a subprocess) against the real sandbox: the whole tree on a
small tmpfs that the test fills while the send is in flight, so SQLite cannot
commit ``sent``. The commit is retried promptly once space is back: the job is
filed without waiting for its lease to expire, and never sent twice."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Sandbox, mounted_tmpfs, wait_until
from crash_harness import daemon, db_jobs, soak_config

from daemon.samples import sample_pdf, sample_sidecar


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, separate 4 MB tmpfs (root only), unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "disk", "size=4m,mode=0755") as root:
        yield root


def fill_bytes(path: Path) -> int:
    """Write ``path`` until the filesystem has no byte left; how many it took."""
    written = 0
    with path.open("wb", buffering=0) as fh:
        block = b"\0" * 4096
        while True:
            try:
                written += fh.write(block) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return written


def test_disk_full_at_the_commit_after_send_is_retried_promptly_never_resent(
    small_disk: Path, tmp_path: Path, sandbox: Sandbox
) -> None:
    # A long lease: before the fix, the job waited for it (15 minutes by default).
    config = soak_config(small_disk, sandbox, workers=1, lease_seconds=600)
    db = small_disk / "state" / "chartdrop.sqlite3"
    arrived = threading.Event()
    latency = sandbox.state.latency

    def noting() -> float:
        arrived.set()
        return latency()

    sandbox.state.latency = noting  # type: ignore[method-assign]
    sandbox.state.set_faults(latency_seconds=1.5)  # the disk fills while Redox answers
    filler = small_disk / "filler"
    with daemon(config, tmp_path / "logs") as d:
        d.start()
        assert d.wait_started()
        inbox = small_disk / "consents" / "inbox"
        (inbox / "CANARY full.pdf.json").write_text(json.dumps(sample_sidecar()))
        (inbox / "CANARY full.pdf").write_bytes(sample_pdf("disk full"))
        assert arrived.wait(30), "the send never reached the sandbox"
        assert fill_bytes(filler) > 0
        wait_until(lambda: len(sandbox.state.received()) == 1, timeout=10)
        # the commit after the send has failed (the daemon says so once per job)
        wait_until(lambda: [e for e in d.events() if e["event"] == "job.commit_retry"])
        assert db_jobs(db).get("done") is None  # it could not be recorded, let alone filed
        filler.unlink()
        freed = time.monotonic()
        wait_until(lambda: db_jobs(db).get("done"), timeout=20)
        took = time.monotonic() - freed
        assert d.terminate() == 0
        events = d.events()
    assert took < 15  # promptly, not after the lease (600 s) expired
    documents = [a.document_id for a in sandbox.state.attempts if a.path == "/endpoint"]
    assert len(documents) == 1  # delivered once, never resent
    assert [e["event"] for e in events].count("job.commit_retry") == 1
    assert not [e for e in events if e["event"] == "worker.crashed_job"]
    (done,) = (small_disk / "consents" / "done").rglob("*.pdf")
    assert done.read_bytes() == sample_pdf("disk full")
