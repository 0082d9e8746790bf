"""A 2xx is success only when the body is what the API answers (issue 12, item 1).

A proxy or captive portal answering ``200`` with an HTML page, in front of the
real daemon (a subprocess, or in-process) and the real sandbox: the document is not filed as
delivered on that answer; it is resent with the same DocumentID and reaches the
API, and the odd answer counts against the destination's health."""

from __future__ import annotations

import io
import json
from pathlib import Path

from conftest import Sandbox, events, running, wait_until
from crash_harness import daemon, db_jobs, soak_config

from daemon.samples import sample_pdf, sample_sidecar


def _drop(inbox: Path, name: str = "CANARY portal.pdf", model: str = "Media") -> bytes:
    pdf = sample_pdf("portal")
    (inbox / f"{name}.json").write_text(json.dumps(sample_sidecar(model=model)))
    (inbox / name).write_bytes(pdf)
    return pdf


def _done_job(db: Path) -> object:
    return wait_until(lambda: (db_jobs(db).get("done") or [None])[0], timeout=30)


def test_html_200_from_a_proxy_is_an_unknown_outcome_resent_with_the_same_id(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.state.set_faults(fail_next=["html"])
    config = soak_config(tmp_path, sandbox, workers=1)
    db = tmp_path / "state" / "chartdrop.sqlite3"
    with daemon(config, tmp_path / "logs") as d:
        d.start()
        assert d.wait_started()
        _drop(tmp_path / "consents" / "inbox")
        job = _done_job(db)
        assert d.terminate() == 0
        events = d.events()
    assert sandbox.state.injected() == {"html": 1}
    (received,) = sandbox.state.received()  # it really reached the API, once
    assert received.body["Media"]["DocumentID"] == job.document_id  # type: ignore[attr-defined]
    assert job.remote_id == received.log_id  # type: ignore[attr-defined]
    documents = [a.document_id for a in sandbox.state.attempts if a.path == "/endpoint"]
    assert documents == [job.document_id] * 2  # type: ignore[attr-defined]
    (retry,) = [e for e in events if e["event"] == "job.retry"]
    assert retry["error_kind"] == "unknown_outcome" and retry["http_status"] == 200
    assert "CANARY" not in d.log_text()


def test_html_200s_pause_the_destination_like_an_outage(
    tmp_path: Path, sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    """The daemon in-process: the test above runs it as a subprocess."""
    sandbox.state.set_faults(fail_next=["html"] * 3)
    config = soak_config(
        tmp_path, sandbox, workers=1, retry_base_seconds=0.05, retry_cap_seconds=0.3
    )
    db = tmp_path / "state" / "chartdrop.sqlite3"
    with running(config):
        _drop(tmp_path / "consents" / "inbox")
        _done_job(db)
    assert sandbox.state.injected() == {"html": 3}
    assert len(sandbox.state.received()) == 1
    assert events(log_stream, "destination.paused"), log_stream.getvalue()


def test_fhir_200_without_a_resource_is_an_unknown_outcome(
    tmp_path: Path, sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    """The daemon in-process: the first test runs it as a subprocess."""
    sandbox.state.set_faults(fail_next=["html"])
    config = soak_config(tmp_path, sandbox, workers=1, model="FHIR", fhir=sandbox.fhir_table())
    db = tmp_path / "state" / "chartdrop.sqlite3"
    with running(config):
        _drop(tmp_path / "consents" / "inbox", model="FHIR")
        job = _done_job(db)
    (resource,) = sandbox.state.fhir_resources()
    assert job.remote_id == resource["id"]  # type: ignore[attr-defined]
    (retry,) = events(log_stream, "job.retry")
    assert retry["error_kind"] == "unknown_outcome"
