"""Duplicates against the real daemon and sandbox: the same bytes for the same
patient are held (failed/ with a note naming the earlier job) unless the
destination says ``duplicates = "send"``, or the job is allowed through
(the flag ``chartdrop retry --allow-duplicate`` sets); both are audited."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Sandbox, running, wait_until, write_config

from daemon.queue import JobState
from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def retry(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, "retry", "-c", str(config), *args], capture_output=True, text=True, timeout=60
    )


def test_a_duplicate_is_held_then_sent_when_allowed(tmp_path: Path, sandbox: Sandbox) -> None:
    pdf = sample_pdf("duplicate")
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        r.drop("first.pdf", pdf, sample_sidecar())
        (first,) = r.finished(1)
        assert first.state == JobState.DONE, first.last_error
        r.drop("again.pdf", pdf, sample_sidecar())  # same bytes, same patient
        r.drop("other.pdf", pdf, sample_sidecar(mrn="0000000002"))  # another patient
        r.drop("changed.pdf", sample_pdf("changed"), sample_sidecar())  # other bytes
        jobs = {j.original_name: j for j in r.finished(4)}
        held = jobs["again.pdf"]
        assert held.state == JobState.FAILED and held.error_kind == "duplicate"
        assert jobs["other.pdf"].state == JobState.DONE
        assert jobs["changed.pdf"].state == JobState.DONE
        note = (r.failed / "again.pdf.error.txt").read_text()
        assert f"(job {first.id})" in note and "already sent to this destination on" in note
        assert "--allow-duplicate" in note
        rejected = [e for e in r.queue.events(held.id) if e["to_state"] == "rejected"]
        assert rejected[0]["error_kind"] == "duplicate" and first.id in rejected[0]["detail"]
        assert len(sandbox.state.received()) == 3

        # Not without being asked: a plain retry is held again.
        run = retry(config, held.id)
        assert run.returncode == 0, run.stderr
        wait_until(lambda: (j := r.queue.get(held.id)) and j.state == JobState.FAILED and j)
        assert len(sandbox.state.received()) == 3
        run = retry(config, "--allow-duplicate", held.id)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"requeued {held.id}" in run.stdout
        sent = wait_until(
            lambda: (j := r.queue.get(held.id)) and j.state == JobState.DONE and j,
        )
        details = [e["detail"] or "" for e in r.queue.events(held.id)]
    assert sent.document_id == held.document_id  # the same DocumentID as before
    assert len(sandbox.state.received()) == 4
    assert "duplicate allowed by the admin" in details
    assert f"duplicate of job {first.id}, sent as allowed" in details
    bodies = [x.body for x in sandbox.state.received()]
    assert bodies[-1]["Media"]["DocumentID"] == held.document_id


def test_duplicates_send_lets_them_through(tmp_path: Path, sandbox: Sandbox) -> None:
    pdf = sample_pdf("duplicate")
    config = write_config(tmp_path, sandbox, dest={"duplicates": "send"})
    with running(config) as r:
        r.drop("first.pdf", pdf, sample_sidecar())
        r.finished(1)
        r.drop("again.pdf", pdf, sample_sidecar())
        jobs = r.finished(2)
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
    assert len({j.document_id for j in jobs}) == 2
    assert len(sandbox.state.received()) == 2


def test_the_window_ends(tmp_path: Path, sandbox: Sandbox) -> None:
    pdf = sample_pdf("duplicate")
    config = write_config(tmp_path, sandbox, dest={"duplicate_window_days": 1})
    with running(config) as r:
        r.drop("first.pdf", pdf, sample_sidecar())
        (first,) = r.finished(1)
        with r.queue._write() as conn:  # the first was sent two days ago
            conn.execute("UPDATE jobs SET sent_at = sent_at - 2 * 86400 WHERE id = ?", (first.id,))
        r.drop("again.pdf", pdf, sample_sidecar())
        jobs = r.finished(2)
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]


@pytest.mark.parametrize("first_fails", [False, True])
def test_the_same_document_dropped_twice_at_once_is_sent_once(
    tmp_path: Path, sandbox: Sandbox, first_fails: bool
) -> None:
    """Two copies of one document for one patient, dropped together: they are
    handed over in one batch and claimed by two delivery threads at once, each
    before the other's send is recorded. The second waits for the first's
    outcome instead of passing the hold on a race: it is held, not filed twice.
    ``first_fails``: the first send gets a 503 (retried later), so the copy that
    waited goes, and the first, retried, is held as its duplicate."""
    pdf = sample_pdf(f"twice at once {first_fails}")
    faults: dict[str, object] = {"fail_next": [503]} if first_fails else {}
    sandbox.state.set_faults(latency_seconds=0.4, **faults)
    with running(write_config(tmp_path, sandbox, workers=2)) as r:
        r.drop("copy1.pdf", pdf, sample_sidecar())
        r.drop("copy2.pdf", pdf, sample_sidecar())
        jobs = r.finished(2)
        assert sorted(j.state for j in jobs) == [JobState.DONE, JobState.FAILED]
        held = next(j for j in jobs if j.state == JobState.FAILED)
        assert held.error_kind == "duplicate"
        assert held.attempts == (2 if first_fails else 1)  # (the 503, then) held
    assert len(sandbox.state.received()) == 1
