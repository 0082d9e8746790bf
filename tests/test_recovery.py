"""Start-up recovery: every state a crash can leave behind ends in exactly one place.

Each test builds the on-disk state a crash at one moment would leave (a job row
plus files where they were at that moment), then starts the real daemon."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from conftest import Sandbox, in_inbox, running, wait_until, write_config

from daemon.config import load_settings
from daemon.errors import SidecarError
from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar


def _setup(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, Any, Queue]:
    config = write_config(tmp_path, sandbox)
    settings = load_settings(config)
    settings.spool_dir.mkdir(parents=True, mode=0o700)
    return config, settings, Queue(settings.database_path)


def _intake_row(queue: Queue, settings: Any, name: str) -> Any:
    return queue.begin_intake(
        destination="consents",
        original_name=name,
        sidecar_name=name + ".json",
        spool_document=str(settings.spool_dir / "t.document"),
        spool_sidecar=str(settings.spool_dir / "t.sidecar"),
    )


def _sent_job(queue: Queue, settings: Any, name: str, pdf: bytes, *, in_spool: bool) -> Any:
    """A job the remote accepted (state sent) whose files are still in the spool."""
    job = _intake_row(queue, settings, name)
    if in_spool:
        (settings.spool_dir / "t.document").write_bytes(pdf)
    (settings.spool_dir / "t.sidecar").write_text(json.dumps(sample_sidecar()))
    queue.complete_intake(job.id, sha256="x", size=len(pdf))
    leased = queue.claim(lease_seconds=60)
    assert leased is not None and leased.lease_token is not None
    queue.mark_sent(job.id, leased.lease_token, remote_id=f"log-{name}", http_status=200)
    return job


def test_crash_after_document_moved_before_sidecar(tmp_path: Path, sandbox: Sandbox) -> None:
    config, settings, queue = _setup(tmp_path, sandbox)
    pdf = sample_pdf("a")
    job = _intake_row(queue, settings, "a.pdf")
    (settings.spool_dir / "t.document").write_bytes(pdf)
    inbox = settings.destination[0].inbox
    (inbox / "a.pdf.json").write_text(json.dumps(sample_sidecar()))
    queue.close()
    with running(config) as r:
        (done,) = r.finished(1)
        assert done.id == job.id and done.state == JobState.DONE
        assert in_inbox(inbox) == []
        assert len(sandbox.state.received()) == 1


def test_crash_before_the_move_abandons_and_the_rescan_queues_it_again(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config, settings, queue = _setup(tmp_path, sandbox)
    job = _intake_row(queue, settings, "b.pdf")
    inbox = settings.destination[0].inbox
    (inbox / "b.pdf.json").write_text(json.dumps(sample_sidecar()))
    (inbox / "b.pdf").write_bytes(sample_pdf("b"))
    queue.close()
    with running(config) as r:
        (done,) = r.finished(1)
        assert done.id != job.id
        assert r.queue.get(job.id).state == JobState.ABANDONED  # type: ignore[union-attr]
        assert len(sandbox.state.received()) == 1


def test_crash_after_send_before_move_files_without_resending(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config, settings, queue = _setup(tmp_path, sandbox)
    pdf = sample_pdf("c")
    _sent_job(queue, settings, "c.pdf", pdf, in_spool=True)
    queue.close()
    with running(config) as r:
        (done,) = r.finished(1)
        assert done.state == JobState.DONE and done.remote_id == "log-c.pdf"
        assert sandbox.state.attempts == []  # never sent again
        assert Path(done.final_path or "").read_bytes() == pdf


def test_crash_mid_move_finishes_the_move_to_the_chosen_name(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config, settings, queue = _setup(tmp_path, sandbox)
    pdf = sample_pdf("d")
    job = _sent_job(queue, settings, "d.pdf", pdf, in_spool=False)
    target = settings.destination[0].done / "2020-01-01" / "d.pdf"
    target.parent.mkdir(parents=True)
    queue.set_final_path(job.id, str(target))
    target.write_bytes(pdf)  # the document had moved; the sidecar had not
    queue.close()
    with running(config) as r:
        (done,) = r.finished(1)
        assert done.final_path == str(target)
        assert (target.parent / "d.pdf.json").exists()
        assert list(settings.spool_dir.iterdir()) == []
        assert sandbox.state.attempts == []


def test_crash_mid_send_resends_with_the_same_document_id(tmp_path: Path, sandbox: Sandbox) -> None:
    config, settings, queue = _setup(tmp_path, sandbox)
    job = _intake_row(queue, settings, "e.pdf")
    pdf = sample_pdf("e")
    (settings.spool_dir / "t.document").write_bytes(pdf)
    (settings.spool_dir / "t.sidecar").write_text(json.dumps(sample_sidecar()))
    digest = hashlib.sha256(pdf).hexdigest()  # checked again before the resend
    queue.complete_intake(job.id, sha256=digest, size=len(pdf))
    assert queue.claim(lease_seconds=3600) is not None  # the worker that held it died
    queue.close()
    with running(config) as r:
        (done,) = r.finished(1)
        assert done.state == JobState.DONE
        (rec,) = sandbox.state.received()
        assert rec.body["Media"]["DocumentID"] == job.document_id


def test_rejected_but_not_moved_goes_to_failed_with_its_note(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config, settings, queue = _setup(tmp_path, sandbox)
    job = _intake_row(queue, settings, "f.pdf")
    (settings.spool_dir / "t.document").write_bytes(sample_pdf("f"))
    (settings.spool_dir / "t.sidecar").write_text("{}")
    queue.complete_intake(
        job.id, sha256="x", size=1, rejection=SidecarError("Patient is required but missing")
    )
    queue.close()
    with running(config) as r:
        (failed,) = r.finished(1)
        assert failed.state == JobState.FAILED
        failed_dir = settings.destination[0].failed
        wait_until((failed_dir / "f.pdf.error.txt").exists)
        assert "Patient is required" in (failed_dir / "f.pdf.error.txt").read_text()
