"""End to end: real folders, a real SQLite file, the real daemon, the real sandbox
over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
from conftest import DEST_ID, in_inbox, load_schema, wait_until

from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar

MEDIA_SCHEMA = load_schema("media/new.json")


def today(root: Path) -> Path:
    return root / datetime.now().astimezone().strftime("%Y-%m-%d")


def test_small_file_is_embedded_and_filed_in_done(
    daemon_factory: Any, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    r = daemon_factory()
    r.drop("consent.pdf", pdf, sidecar)
    (job,) = r.finished(1)
    assert job.state == JobState.DONE
    (rec,) = sandbox.state.received()
    jsonschema.Draft4Validator(MEDIA_SCHEMA).validate(rec.body)
    media = rec.body["Media"]
    assert base64.b64decode(media["FileContents"]) == pdf
    assert media["FileType"] == "PDF"
    assert media["FileName"] == "consent.pdf"
    assert media["DocumentID"] == job.document_id
    assert media["Availability"] == "Available"  # from the destination's defaults
    assert media["DocumentType"] == "Consent Form"  # from the sidecar
    assert rec.body["Meta"]["DataModel"] == "Media"
    assert rec.body["Meta"]["EventType"] == "New"
    assert rec.body["Meta"]["Test"] is True
    assert rec.body["Meta"]["Destinations"] == [{"ID": DEST_ID}]
    assert rec.body["Meta"]["Source"] == {"ID": "test-source"}
    assert rec.headers.get("redox-source-id") == "test-source"
    assert rec.body["Patient"]["Identifiers"] == [{"ID": "0000000001", "IDType": "MR"}]
    assert job.remote_id == rec.log_id
    folder = today(r.done)
    assert (folder / "consent.pdf").read_bytes() == pdf
    assert json.loads((folder / "consent.pdf.json").read_text()) == sidecar
    assert in_inbox(r.inbox) == []
    assert sorted(os.listdir(r.settings.spool_dir)) == []
    assert job.sha256 == hashlib.sha256(pdf).hexdigest()


def test_large_file_is_uploaded_and_referenced_by_uri(
    daemon_factory: Any, sandbox: Any, sidecar: dict[str, Any]
) -> None:
    big = sample_pdf("Large", padding=300_000)
    assert len(big) > 200_000
    r = daemon_factory()
    r.drop("big.pdf", big, sidecar)
    (job,) = r.finished(1)
    assert job.state == JobState.DONE
    (rec,) = sandbox.state.received()
    jsonschema.Draft4Validator(MEDIA_SCHEMA).validate(rec.body)
    uri = rec.body["Media"]["FileContents"]
    assert uri.startswith(sandbox.url + "/blob/")
    assert sandbox.state.blob_bytes(uri) == big
    assert job.blob_uri == uri
    assert (today(r.done) / "big.pdf").read_bytes() == big


def test_file_over_upload_limit_fails_without_network_call(
    daemon_factory: Any, sandbox: Any, sidecar: dict[str, Any]
) -> None:
    big = sample_pdf("Too large", padding=5_000)
    r = daemon_factory(upload_max_bytes=2_000, embed_max_bytes=1_000)
    r.drop("huge.pdf", big, sidecar)
    (job,) = r.finished(1)
    assert job.state == JobState.FAILED
    assert job.error_kind == "too_large"
    assert sandbox.state.attempts == []
    note = (r.failed / "huge.pdf.error.txt").read_text()
    assert "limit is 2,000 bytes" in note
    assert job.id in note
    assert (r.failed / "huge.pdf").read_bytes() == big
    assert (r.failed / "huge.pdf.json").exists()


def test_invalid_sidecar_fails_with_readable_note(
    daemon_factory: Any, sandbox: Any, pdf: bytes
) -> None:
    bad = sample_sidecar()
    del bad["Patient"]["Identifiers"]
    bad["Media"]["DocumentTyp"] = "Consent"
    r = daemon_factory()
    r.drop("scan.pdf", pdf, bad)
    (job,) = r.finished(1)
    assert job.state == JobState.FAILED
    assert job.error_kind == "invalid_sidecar"
    note = (r.failed / "scan.pdf.error.txt").read_text()
    assert (
        "Patient.Identifiers (the patient's ID numbers, e.g. the MRN) is required but missing"
        in note
    )
    assert "Media.DocumentTyp is not a field Redox knows" in note
    assert "How to fix it" in note and "move the document" in note
    assert "Bixby" not in note and "Timothy" not in note  # field names, never values
    assert sandbox.state.attempts == []


def test_unparsable_sidecar_fails(daemon_factory: Any, sandbox: Any, pdf: bytes) -> None:
    r = daemon_factory()
    (r.inbox / "scan.json").write_text('{"Patient": ')
    r.drop("scan.pdf", pdf)
    (job,) = r.finished(1)
    assert job.error_kind == "invalid_sidecar"
    assert "not valid JSON" in (r.failed / "scan.pdf.error.txt").read_text()
    assert (r.failed / "scan.json").exists()


def test_transient_503s_are_retried_with_the_same_document_id(
    daemon_factory: Any, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    sandbox.state.set_faults(fail_next=[503, 503], retry_after="0")
    r = daemon_factory()
    r.drop("retry.pdf", pdf, sidecar)
    (job,) = r.finished(1)
    assert job.state == JobState.DONE
    attempts = [a for a in sandbox.state.attempts if a.path == "/endpoint"]
    assert [a.status for a in attempts] == [503, 503, 200]
    assert {a.document_id for a in attempts} == {job.document_id}
    assert job.attempts == 3  # every send attempt counts, the successful one too
    kinds = [e["to_state"] for e in r.queue.events(job.id)]
    assert kinds.count("queued") >= 3  # queued once, then re-queued after each 503


def test_400_fails_without_retry(
    daemon_factory: Any, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    sandbox.state.set_faults(fail_next=[400])
    r = daemon_factory()
    r.drop("refused.pdf", pdf, sidecar)
    (job,) = r.finished(1)
    assert job.state == JobState.FAILED
    assert job.error_kind == "remote_rejected"
    assert job.http_status == 400
    assert [a.status for a in sandbox.state.attempts] == [400]
    assert "HTTP 400" in (r.failed / "refused.pdf.error.txt").read_text()


def test_name_collision_in_done_gets_a_suffix(
    daemon_factory: Any, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    r = daemon_factory()
    folder = today(r.done)
    folder.mkdir(parents=True)
    (folder / "scan.pdf").write_bytes(b"an older document")
    r.drop("scan.pdf", pdf, sidecar)
    r.finished(1)
    assert (folder / "scan.pdf").read_bytes() == b"an older document"
    assert (folder / "scan (1).pdf").read_bytes() == pdf
    assert (folder / "scan (1).pdf.json").exists()
    other = sample_pdf("another scan")  # the same bytes again would be held as a duplicate
    r.drop("scan.pdf", other, sidecar)
    r.finished(2)
    assert (folder / "scan (2).pdf").read_bytes() == other


def test_symlink_in_inbox_is_never_read(
    daemon_factory: Any, sandbox: Any, tmp_path: Path, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    secret = tmp_path / "outside.pdf"
    secret.write_bytes(pdf)
    r = daemon_factory()
    (r.inbox / "link.pdf.json").write_text(json.dumps(sidecar))
    (r.inbox / "link.pdf").symlink_to(secret)
    (job,) = r.finished(1)
    assert job.state == JobState.FAILED
    assert job.error_kind == "not_a_regular_file"
    assert sandbox.state.attempts == []
    assert (r.failed / "link.pdf").is_symlink()  # the link itself moved, its target untouched
    assert secret.read_bytes() == pdf
    assert "link" in (r.failed / "link.pdf.error.txt").read_text()


def test_growing_file_is_not_sent_until_complete(
    daemon_factory: Any, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    import io

    import structlog

    from daemon import logs

    stream = io.StringIO()
    logs.configure(fmt="json", stream=stream)
    try:
        r = daemon_factory(settle_seconds=0.3)
        (r.inbox / "slow.pdf.json").write_text(json.dumps(sidecar))
        half = len(pdf) // 2
        with (r.inbox / "slow.pdf").open("wb") as fh:
            fh.write(pdf[:half])
            fh.flush()
            # the daemon has seen it settle and judged it incomplete (no %%EOF)
            wait_until(lambda: "intake.incomplete" in stream.getvalue())
            assert sandbox.state.attempts == []
            assert (r.inbox / "slow.pdf").exists()
            assert r.jobs() == []
            fh.write(pdf[half:])
        (job,) = r.finished(1)
    finally:
        structlog.reset_defaults()
    assert job.state == JobState.DONE
    (rec,) = sandbox.state.received()
    assert base64.b64decode(rec.body["Media"]["FileContents"]) == pdf


def test_document_without_sidecar_fails_after_timeout(
    daemon_factory: Any, sandbox: Any, pdf: bytes
) -> None:
    r = daemon_factory(sidecar_timeout_seconds=1)
    r.drop("alone.pdf", pdf)
    (job,) = r.finished(1)
    assert job.error_kind == "missing_sidecar"
    assert "sidecar" in (r.failed / "alone.pdf.error.txt").read_text()
    assert sandbox.state.attempts == []


def test_junk_names_are_ignored(daemon_factory: Any, sandbox: Any, pdf: bytes) -> None:
    r = daemon_factory()
    for name in ("scan.pdf.tmp", "~$scan.pdf", ".hidden.pdf", "Thumbs.db", "x.part"):
        (r.inbox / name).write_bytes(pdf)
    r.drop("real.pdf", pdf, sample_sidecar())
    r.finished(1)
    assert in_inbox(r.inbox) == sorted(
        ["scan.pdf.tmp", "~$scan.pdf", ".hidden.pdf", "Thumbs.db", "x.part"]
    )


def test_stem_style_sidecar_pairs(daemon_factory: Any, sandbox: Any, pdf: bytes) -> None:
    r = daemon_factory()
    (r.inbox / "fax0001.json").write_text(json.dumps(sample_sidecar()))
    r.drop("fax0001.pdf", pdf)
    (job,) = r.finished(1)
    assert job.state == JobState.DONE
    assert (today(r.done) / "fax0001.json").exists()


def test_token_is_cached_across_documents(daemon_factory: Any, sandbox: Any, pdf: bytes) -> None:
    r = daemon_factory()
    for i in range(5):
        r.drop(f"doc{i}.pdf", pdf, sample_sidecar(mrn=f"{i:010d}"))
    jobs = r.finished(5)
    assert all(j.state == JobState.DONE for j in jobs)
    assert sandbox.state.token_requests == 1


def test_expired_token_is_renewed_once(
    daemon_factory: Any, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    r = daemon_factory()
    r.drop("one.pdf", pdf, sidecar)
    r.finished(1)
    sandbox.state.revoke_tokens()  # the server forgets the token: the next send gets a 401
    r.drop("two.pdf", sample_pdf("two"), sidecar)
    jobs = r.finished(2)
    assert all(j.state == JobState.DONE for j in jobs)
    assert sandbox.state.token_requests == 2
    statuses = [a.status for a in sandbox.state.attempts if a.path == "/endpoint"]
    assert statuses == [200, 401, 200]


def test_sigterm_style_stop_exits_zero_and_restart_resumes(
    tmp_path: Path, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    from conftest import running, start_daemon, write_config

    config = write_config(tmp_path, sandbox)
    sandbox.state.set_faults(outage=True)
    r = start_daemon(config)
    r.drop("waiting.pdf", pdf, sidecar)
    # The token endpoint is down too: the destination pauses, the job waits unburnt.
    wait_until(lambda: r.service.queue is not None and r.service.queue.pauses())
    r.stop()
    assert r.results == [0]
    after = Queue(r.settings.database_path)
    assert [(j.state, j.attempts) for j in after.jobs()] == [(JobState.QUEUED, 0)]  # not failed
    after.close()
    sandbox.state.set_faults(outage=False)
    with running(config) as r2:
        (job,) = r2.finished(1)
        assert job.state == JobState.DONE


def test_no_phi_in_logs_events_or_notes(daemon_factory: Any, sandbox: Any, pdf: bytes) -> None:
    """Canary names and patient values pass through success, retry, refusal and
    validation failure; none of them may reach the logs, the audit trail or a note."""
    import io
    import sqlite3

    import structlog

    from daemon import logs

    stream = io.StringIO()
    logs.configure(fmt="json", stream=stream)
    try:
        canary = sample_sidecar(mrn="CANARYMRN123", first="CANARYFIRST", last="CANARYLAST")
        sandbox.state.set_faults(fail_next=[503, 400], retry_after="0")
        r = daemon_factory()
        r.drop("CANARY_Bixby_ok.pdf", pdf, canary)
        r.drop("CANARY_Bixby_refused.pdf", pdf, canary)
        bad = json.loads(json.dumps(canary))
        bad["Patient"]["Demographics"]["DOB"] = 20080106  # wrong type: its value must not be echoed
        r.drop("CANARY_Bixby_bad.pdf", pdf, bad)
        (r.inbox / "CANARY_Bixby_link.pdf").symlink_to(r.root / "nowhere")
        jobs = r.finished(4)
        assert {j.state for j in jobs} == {JobState.DONE, JobState.FAILED}
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "job.sent" in text and "job.failed" in text and "job.retry" in text
    db = sqlite3.connect(r.settings.database_path)
    events = repr(db.execute("SELECT * FROM events").fetchall())
    notes = "".join(p.read_text() for p in r.failed.glob("*.error.txt"))
    assert 'DOB (the date of birth, as text: "YYYY-MM-DD") must be text' in notes
    for haystack in (text, events, notes):
        for value in ("CANARY", "Bixby", "20080106", "Timothy"):
            assert value not in haystack


def test_undecodable_file_name_fails_clearly_and_others_still_flow(
    daemon_factory: Any, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    r = daemon_factory()
    bad = os.fsdecode(b"scan\xff.pdf")
    (r.inbox / bad).write_bytes(pdf)
    (r.inbox / (bad + ".json")).write_text(json.dumps(sidecar))
    r.drop("good.pdf", pdf, sidecar)
    jobs = r.finished(3)  # the bad name, its sidecar, and the good pair
    by_state = sorted((j.state, j.error_kind) for j in jobs)
    assert (JobState.DONE, None) in by_state
    assert by_state.count((JobState.FAILED, "bad_content")) == 2
    notes = "".join(p.read_text() for p in r.failed.glob("*.error.txt"))
    assert "not valid text (UTF-8)" in notes
    assert in_inbox(r.inbox) == []


def test_fifo_named_like_a_document_is_never_opened(
    daemon_factory: Any, sandbox: Any, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    r = daemon_factory()
    (r.inbox / "pipe.pdf.json").write_text(json.dumps(sidecar))
    os.mkfifo(r.inbox / "pipe.pdf")
    r.drop("after.pdf", pdf, sidecar)
    jobs = r.finished(2)
    states = {j.original_name: (j.state, j.error_kind) for j in jobs}
    assert states["pipe.pdf"] == (JobState.FAILED, "not_a_regular_file")
    assert states["after.pdf"] == (JobState.DONE, None)
