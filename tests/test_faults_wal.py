"""The ``-wal`` deleted after a crash (issue 12, item 3), on the real daemon (a
subprocess, SIGKILLed) against the real sandbox: the jobs committed since the
last checkpoint are gone, their files sit in the spool. At the next start every
spool file gets a place, and the log says so: a document whose sidecar names its
DocumentID is queued again and sent with that same ID; any other goes to
failed/ with a note."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Sandbox, in_inbox, wait_until
from crash_harness import count_filed, daemon, soak_config

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
        d.start()
        assert d.wait_started()
        wait_until(lambda: count_filed(done) + count_filed(failed) == 3, timeout=30)
        assert d.terminate() == 0
        events = d.events()
    assert not any(spool.iterdir())
    (line,) = [e for e in events if e["event"] == "spool.reconciled"]
    assert (line["requeued"], line["moved_to_failed"]) == (1, 2)
    (received,) = sandbox.state.received()
    assert received.body["Media"]["DocumentID"] == KNOWN_ID  # the same ID as before
    assert count_filed(done) == 1 and count_filed(failed) == 2
    notes = list(failed.glob("*.error.txt"))
    assert len(notes) == 2 and all("lost its record" in n.read_text() for n in notes)
    for doc in failed.glob("recovered-*.pdf"):
        assert (failed / f"{doc.name}.json").is_file()  # its sidecar beside it
    assert "CANARY" not in "".join(json.dumps(e) for e in events)
