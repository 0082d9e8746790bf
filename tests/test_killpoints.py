"""One deterministic crash per dangerous moment: the real daemon (a subprocess)
kills itself with SIGKILL at a named kill point (daemon/killpoints.py), is
restarted without it, and must finish the document exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Sandbox, in_inbox, wait_until
from crash_harness import (
    daemon,
    db_jobs,
    filed,
    has_sidecar,
    received_contents,
    sha,
    soak_config,
    unfinished,
)

from daemon.killpoints import POINTS
from daemon.samples import sample_pdf, sample_sidecar

EMBED_MAX = 20_000
# (kill point, document size class, deliveries the sandbox sees in all)
CASES = [
    ("intake_after_row", "small", 1),
    ("intake_mid_rename", "small", 1),
    ("mid_upload", "large", 1),
    # the 2xx was lost with the process: resent with the same DocumentID, referencing
    # the blob uploaded before the crash (no second upload)
    ("after_send", "large", 2),
    ("after_commit", "small", 1),
    ("mid_move", "small", 1),
]


def test_every_kill_point_has_a_case() -> None:
    # mid_note: test_crash_while_writing_a_failed_note_leaves_no_temp_file
    assert {point for point, _, _ in CASES} | {"mid_note"} == POINTS


@pytest.mark.parametrize(("point", "size", "deliveries"), CASES)
def test_crash_at_kill_point_finishes_exactly_once(
    tmp_path: Path, sandbox: Sandbox, point: str, size: str, deliveries: int
) -> None:
    config = soak_config(tmp_path, sandbox, embed_max_bytes=EMBED_MAX)
    inbox, done, failed = (tmp_path / "consents" / sub for sub in ("inbox", "done", "failed"))
    spool, db = tmp_path / "state" / "spool", tmp_path / "state" / "chartdrop.sqlite3"
    # large: over embed_max_bytes and over httpx's 64 KiB chunk, so mid_upload has a first chunk
    pdf = sample_pdf("kill point", padding=200_000 if size == "large" else 0)
    assert (len(pdf) > EMBED_MAX) == (size == "large")

    with daemon(config, tmp_path / "logs") as d:
        d.start(killpoint=point)
        (inbox / "CANARY scan.pdf.json").write_text(json.dumps(sample_sidecar()))
        (inbox / "CANARY scan.pdf").write_bytes(pdf)
        assert d.wait(timeout=60) == -signal.SIGKILL, d.log_text()

        d.start()
        wait_until(
            lambda: unfinished(db) == 0 and filed(done) and not any(spool.iterdir()), timeout=30
        )
        assert d.terminate() == 0
        log = d.log_text()

    # exactly one copy, in done/, with its sidecar; nothing anywhere else
    (copies,) = filed(done).values()
    assert len(copies) == 1 and copies[0].name == "CANARY scan.pdf"
    assert copies[0].read_bytes() == pdf
    assert has_sidecar(copies[0])
    assert in_inbox(inbox) == [] and list(spool.iterdir()) == []
    assert list(failed.iterdir()) == []
    # delivered with one DocumentID, carrying the original bytes
    received = received_contents(sandbox.state)
    assert len(received) == deliveries
    assert {digest for _, digest in received} == {sha(pdf)}
    ids = {document_id for document_id, _ in received}
    assert len(ids) == 1
    (document_id,) = ids
    (job,) = db_jobs(db)["done"]
    assert job.document_id == document_id
    assert job.remote_id == sandbox.state.received()[-1].log_id
    if point == "intake_after_row":
        assert len(db_jobs(db)["abandoned"]) == 1  # the interrupted hand-over
    if point == "after_send":
        assert len(sandbox.state.uploads()) == 1  # the stored blob URI was reused
    if size == "large":
        assert received and all(
            r.body["Media"]["FileContents"].startswith(sandbox.url)
            for r in sandbox.state.received()
        )
    assert "CANARY" not in log and "Traceback" not in log


def test_killpoint_does_nothing_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from daemon import killpoints

    monkeypatch.delenv(killpoints.ENV, raising=False)
    killpoints.killpoint("after_send")  # still alive
    fh = io.BytesIO(b"x")
    assert killpoints.reading(fh, "mid_upload") is fh
    monkeypatch.setenv(killpoints.ENV, "after_commit")
    killpoints.killpoint("after_send")  # another point's name: still alive
    assert killpoints.reading(fh, "mid_upload") is fh


@pytest.mark.parametrize("read_twice", [False, True])
def test_killpoint_kills_its_own_process_with_sigkill(read_twice: bool) -> None:
    code = (
        "import io, sys\n"
        "from daemon.killpoints import killpoint, reading\n"
        "f = reading(io.BytesIO(b'a' * 10), 'mid_upload')\n"
        "f.read(4)\n"
        "print('first chunk read', flush=True)\n"
        + ("f.read(4)\n" if read_twice else "killpoint('after_send')\n")
        + "print('survived', flush=True)\n"
    )
    env = {**os.environ, "CHARTDROP_TEST_KILLPOINT": "mid_upload" if read_twice else "after_send"}
    if not read_twice:
        code = code.replace("'mid_upload')", "'not armed')")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == "first chunk read\n"


def test_crash_while_writing_a_failed_note_leaves_no_temp_file(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Killed between the note's temp file and its rename: the restarted daemon
    writes the note and removes the half-done temp file (hidden, but in the
    admin's failed/ folder), and nothing else there."""
    config = soak_config(tmp_path, sandbox, embed_max_bytes=EMBED_MAX)
    inbox, failed = tmp_path / "consents" / "inbox", tmp_path / "consents" / "failed"
    db = tmp_path / "state" / "chartdrop.sqlite3"
    failed.mkdir(parents=True, exist_ok=True)
    # not ours (another name pattern, or not a regular file): left alone
    (failed / ".chartdrop-notes.tmp").write_text("an admin's file")
    (failed / f".chartdrop-{'b' * 16}.tmp").mkdir()
    pdf = sample_pdf("kill point")
    with daemon(config, tmp_path / "logs") as d:
        d.start(killpoint="mid_note")
        (inbox / "CANARY scan.pdf.json").write_text("{not json")
        (inbox / "CANARY scan.pdf").write_bytes(pdf)
        assert d.wait(timeout=60) == -signal.SIGKILL, d.log_text()
        temps = [p.name for p in failed.iterdir() if len(p.name) == len(".chartdrop-") + 20]
        assert len(temps) == 2  # the half-done note and the directory

        d.start()
        wait_until(lambda: unfinished(db) == 0 and (failed / "CANARY scan.pdf.error.txt").exists())
        assert d.terminate() == 0
        log = d.log_text()

    assert sorted(p.name for p in failed.iterdir()) == sorted(
        [
            ".chartdrop-notes.tmp",
            f".chartdrop-{'b' * 16}.tmp",
            "CANARY scan.pdf",
            "CANARY scan.pdf.error.txt",
            "CANARY scan.pdf.json",
        ]
    )
    assert (failed / "CANARY scan.pdf").read_bytes() == pdf
    assert "sidecar" in (failed / "CANARY scan.pdf.error.txt").read_text()
    assert '"temp_files_removed": 1' in log
    assert "CANARY" not in log and "Traceback" not in log
