"""The ``-wal`` deleted after a crash (issue 12, item 3), on the real daemon (a
subprocess, SIGKILLed) against the real sandbox: the jobs committed since the
last checkpoint are gone, their files sit in the spool. At the next start every
spool file gets a place, and the log says so: a document whose sidecar names its
DocumentID is queued again and sent with that same ID; any other goes to
failed/ with a note."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from conftest import Sandbox, in_inbox, wait_until, write_config
from crash_harness import count_filed, daemon, soak_config

from daemon.config import load_settings
from daemon.queue import Queue
from daemon.reconcile import reconcile_spool
from daemon.samples import sample_pdf, sample_sidecar

KNOWN_ID = "5f2b8e0c-55a3-4a57-9a0e-8b5c3f0e9d11"


def test_spool_files_without_a_job_after_the_wal_is_deleted_are_reconciled(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = soak_config(tmp_path, sandbox, workers=1)
    inbox = tmp_path / "consents" / "inbox"
    done, failed = tmp_path / "consents" / "done", tmp_path / "consents" / "failed"
    state = tmp_path / "state"
    spool, db = state / "spool", state / "chartdrop.sqlite3"
    sandbox.state.set_faults(outage=True)  # they queue, nothing is sent
    with daemon(config, tmp_path / "logs") as d:
        d.start()
        assert d.wait_started()
        for i in range(3):
            side = sample_sidecar(mrn=f"{i:010d}")
            if i == 0:
                side["Media"]["DocumentID"] = KNOWN_ID
            (inbox / f"CANARY wal {i}.pdf.json").write_text(json.dumps(side))
            (inbox / f"CANARY wal {i}.pdf").write_bytes(sample_pdf(f"wal {i}"))
        wait_until(lambda: len(list(spool.glob("*.document"))) == 3 and not in_inbox(inbox))
        d.kill()
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        sandbox.state.set_faults(outage=False)
        # the first start after it dies writing the first orphan's note in failed/
        d.start(killpoint="mid_note")
        assert d.wait(timeout=60) == -signal.SIGKILL, d.log_text()
        d.start()
        assert d.wait_started()
        wait_until(lambda: count_filed(done) + count_filed(failed) == 3, timeout=30)
        assert d.terminate() == 0
        events = d.events()
    assert not any(spool.iterdir())
    (line,) = [e for e in events if e["event"] == "spool.reconciled"]  # the killed start's died
    # all of the failed/ pair at this start; the requeued one, if its token came first,
    # went back to the inbox at the start that was killed
    assert line["moved_to_failed"] == 2 and line["requeued"] in (0, 1)
    (received,) = sandbox.state.received()
    assert received.body["Media"]["DocumentID"] == KNOWN_ID  # the same ID as before
    assert count_filed(done) == 1 and count_filed(failed) == 2
    notes = list(failed.glob("*.error.txt"))
    assert len(notes) == 2 and all("lost its record" in n.read_text() for n in notes)
    for doc in failed.glob("recovered-*.pdf"):
        assert (failed / f"{doc.name}.json").is_file()  # its sidecar beside it
        assert (failed / f"{doc.name}.error.txt").is_file()  # and its note
    assert len(list(failed.iterdir())) == 6  # no temp file, no note without its document
    assert "CANARY" not in "".join(json.dumps(e) for e in events)


def test_an_orphan_whose_note_a_dead_start_wrote_is_filed_under_that_note(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A start died after the orphan's note and before its files moved: the next
    one files it under the note's name (no second name, no note left alone)."""
    settings = load_settings(write_config(tmp_path, sandbox))
    settings.spool_dir.mkdir(parents=True, mode=0o700)
    token = "0123456789abcdef0123456789abcdef"
    pdf = sample_pdf("orphan")
    (settings.spool_dir / f"{token}.document").write_bytes(pdf)
    (settings.spool_dir / f"{token}.sidecar").write_text(json.dumps(sample_sidecar()))
    failed = settings.destination[0].failed
    (failed / f"recovered-{token}.pdf.error.txt").write_text("the dead start's note")
    (failed / "recovered-ffff.pdf").write_bytes(b"staff's own file")  # another name: kept
    with Queue(settings.database_path) as queue:
        result = reconcile_spool(settings, queue)
    assert result.failed == 1
    assert sorted(p.name for p in failed.iterdir()) == sorted(
        [
            "recovered-ffff.pdf",
            f"recovered-{token}.pdf",
            f"recovered-{token}.pdf.error.txt",
            f"recovered-{token}.pdf.json",
        ]
    )
    assert (failed / f"recovered-{token}.pdf.error.txt").read_text() == "the dead start's note"
    assert (failed / f"recovered-{token}.pdf").read_bytes() == pdf
    assert not any(settings.spool_dir.iterdir())
