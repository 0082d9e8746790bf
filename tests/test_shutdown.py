"""SIGTERM to the real daemon (a subprocess) while a document is being uploaded:
the upload finishes within shutdown_grace_seconds or is abandoned when the grace
runs out; either way the state is committed, the exit code is 0, and the next
start delivers the document once, with the same DocumentID."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import Sandbox, wait_until
from crash_harness import daemon, db_jobs, filed, received_contents, sha, soak_config, unfinished

from daemon.samples import sample_pdf, sample_sidecar

EMBED_MAX = 20_000


def _watch_arrivals(sandbox: Sandbox) -> threading.Event:
    """Set once a request reaches /upload or /endpoint (the sandbox asks for its
    latency as soon as a request arrives, before it reads the body)."""
    arrived = threading.Event()
    latency = sandbox.state.latency

    def noting() -> float:
        arrived.set()
        return latency()

    sandbox.state.latency = noting  # type: ignore[method-assign]
    return arrived


def _drop_large(inbox: Path) -> bytes:
    pdf = sample_pdf("shutdown", padding=200_000)
    assert len(pdf) > EMBED_MAX
    (inbox / "CANARY big.pdf.json").write_text(json.dumps(sample_sidecar()))
    (inbox / "CANARY big.pdf").write_bytes(pdf)
    return pdf


@dataclass
class Midway:
    """A daemon that got SIGTERM while a large document's upload was under way."""

    daemon: Any
    pdf: bytes
    took: float  # seconds from the SIGTERM to the exit
    done: Path
    db: Path


@contextmanager
def _sigterm_mid_upload(
    tmp_path: Path, sandbox: Sandbox, *, grace: float, latency: float
) -> Iterator[Midway]:
    config = soak_config(
        tmp_path, sandbox, embed_max_bytes=EMBED_MAX, shutdown_grace_seconds=grace, workers=1
    )
    sandbox.state.set_faults(latency_seconds=latency)  # on the upload and on the send
    arrived = _watch_arrivals(sandbox)
    with daemon(config, tmp_path / "logs") as d:
        d.start()
        assert d.wait_started()
        pdf = _drop_large(tmp_path / "consents" / "inbox")
        assert arrived.wait(30), "the upload never reached the sandbox"
        sigterm = time.monotonic()
        assert d.terminate(timeout=30) == 0
        took = time.monotonic() - sigterm
        yield Midway(
            d, pdf, took, tmp_path / "consents" / "done", tmp_path / "state" / "chartdrop.sqlite3"
        )


def test_sigterm_mid_upload_abandons_it_within_the_grace_and_resumes_next_start(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    grace, latency = 1.0, 6.0
    with _sigterm_mid_upload(tmp_path, sandbox, grace=grace, latency=latency) as m:
        assert m.took < grace + 3.0 < latency  # bounded by the grace, not by the upload
        events = [e["event"] for e in m.daemon.events()]
        assert "daemon.stopped_with_inflight" in events and "daemon.stopped" in events
        (job,) = db_jobs(m.db)["leased"]  # committed as it was: in flight, nothing half-done
        assert job.blob_uri is None and job.attempts == 0
        assert sandbox.state.received() == []

        sandbox.state.set_faults(latency_seconds=0.0)
        m.daemon.start()
        wait_until(lambda: unfinished(m.db) == 0 and filed(m.done), timeout=30)
        assert m.daemon.terminate() == 0
        log = m.daemon.log_text()
    (delivery,) = received_contents(sandbox.state)
    assert delivery == (job.document_id, sha(m.pdf))
    (finished,) = db_jobs(m.db)["done"]
    assert finished.id == job.id
    assert "CANARY" not in log


def test_sigterm_mid_upload_lets_it_finish_within_the_grace(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    grace, latency = 15.0, 1.0
    with _sigterm_mid_upload(tmp_path, sandbox, grace=grace, latency=latency) as m:
        events = [e["event"] for e in m.daemon.events()]
    assert 2 * latency <= m.took < grace  # it waited for the upload and the send, not longer
    assert "daemon.stopped_with_inflight" not in events
    assert "job.done" in events
    (job,) = db_jobs(m.db)["done"]
    (copy,) = filed(m.done).values()
    assert copy[0].read_bytes() == m.pdf
    assert received_contents(sandbox.state) == [(job.document_id, sha(m.pdf))]


def test_sigterm_during_start_up_exits_zero(tmp_path: Path, sandbox: Sandbox) -> None:
    """The handler is in place before start-up recovery begins: the lock file is
    taken during start-up, and a SIGTERM right then is a clean stop, not a kill."""
    config = soak_config(tmp_path, sandbox)
    lock = tmp_path / "state" / "chartdrop.lock"
    with daemon(config, tmp_path / "logs") as d:
        d.start()
        wait_until(lock.exists, timeout=30, interval=0.005)
        assert d.terminate(timeout=30) == 0, d.log_text()
