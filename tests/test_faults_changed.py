"""A file that changes while its send waits (issue 12, item 2), on the real daemon
(a subprocess) against the real sandbox: the scanner keeps the file open after
chartdrop took it and saves a second page while the send is under way. done/
holds exactly the bytes that were sent, never the later version."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from conftest import Sandbox, wait_until
from crash_harness import daemon, db_jobs, received_contents, sha, soak_config

from daemon.samples import sample_pdf, sample_sidecar


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
