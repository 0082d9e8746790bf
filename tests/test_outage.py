"""Outages: the circuit breaker (pure, with an injected clock) and, end to end
against the sandbox, a compressed "afternoon" outage with recovery, Retry-After,
and the unknown outcome of a read timeout."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import Sandbox, destination, running, wait_until, write_config

from daemon.breaker import AUTH, OUTAGE, Breakers
from daemon.config import Destination
from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _dest() -> Destination:
    return destination(
        name="d",
        inbox=Path("/i"),
        done=Path("/o"),
        failed=Path("/f"),
        redox_destination_id="x",
        retry_base_seconds=10,
        retry_cap_seconds=60,
    )


def _breakers(tmp_path: Path) -> tuple[Breakers, Clock, Queue]:
    clock = Clock()
    queue = Queue(tmp_path / "q.sqlite3", clock=lambda: clock.now)
    return Breakers(queue, clock=clock, wall=clock), clock, queue


def test_opens_after_repeated_transient_failures_and_probes_one_at_a_time(
    tmp_path: Path,
) -> None:
    b, clock, queue = _breakers(tmp_path)
    dest = _dest()
    b.failure(dest, OUTAGE, "Redox answered HTTP 503")
    b.failure(dest, OUTAGE, "Redox answered HTTP 503")
    assert b.blocked() == set() and queue.pauses() == []  # two in a row: still closed
    b.failure(dest, OUTAGE, "Redox answered HTTP 503")
    assert b.blocked() == {"d"}
    (pause,) = queue.pauses()
    assert (pause.kind, pause.reason, pause.until) == (OUTAGE, "Redox answered HTTP 503", 1010.0)
    assert not b.admit("d")  # nothing is sent while it waits
    clock.now += 10
    assert b.blocked() == set()
    assert b.admit("d")  # the probe
    assert not b.admit("d")  # only one
    assert b.blocked() == {"d"}
    b.failure(dest, OUTAGE, "Redox answered HTTP 503")  # the probe failed: twice as long
    clock.now += 19
    assert b.blocked() == {"d"}
    clock.now += 1
    assert b.admit("d")
    b.failure(dest, OUTAGE, "x")
    b.failure(dest, OUTAGE, "x")  # a send already under way when it reopened: no new step
    assert queue.pauses()[0].until == clock.now + 40
    for _ in range(5):
        clock.now += 60
        assert b.admit("d")
        b.failure(dest, OUTAGE, "x")
    assert queue.pauses()[0].until == clock.now + 60  # capped at retry_cap_seconds


def test_success_closes_and_makes_the_waiting_jobs_due_in_order(tmp_path: Path) -> None:
    b, clock, queue = _breakers(tmp_path)
    ids = []
    for n in range(3):
        job = queue.begin_intake(
            destination="d", original_name=f"{n}.pdf", sidecar_name=None,
            spool_document=f"/s/{n}", spool_sidecar=None,
        )  # fmt: skip
        queue.complete_intake(job.id, sha256="0" * 64, size=1)
        ids.append(job.id)
        clock.now += 1
    claimed = queue.claim(lease_seconds=60)
    assert claimed is not None and claimed.lease_token is not None
    queue.retry_later(
        claimed.id, claimed.lease_token, delay=3600, error_kind="transient", error="x"
    )
    dest = _dest()
    for _ in range(3):
        b.failure(dest, OUTAGE, "down")
    clock.now += 10
    assert b.admit("d")
    b.success("d")
    assert b.blocked() == set() and queue.pauses() == []
    order = []
    while (job := queue.claim(lease_seconds=60)) is not None:
        order.append(job.id)
    assert order == ids  # the job that had backed off for an hour is first again


def test_refused_credentials_open_at_once(tmp_path: Path) -> None:
    b, clock, queue = _breakers(tmp_path)
    b.failure(_dest(), AUTH, "Redox token endpoint refused the credentials (HTTP 401)", 30)
    assert b.blocked() == {"d"}
    (pause,) = queue.pauses()
    assert pause.kind == AUTH
    assert pause.until == clock.now + 30  # Retry-After beats the shorter backoff


def _drop_all(r: Any, n: int, pdf: bytes) -> list[str]:
    names = [f"doc-{i:03}.pdf" for i in range(n)]
    for i, name in enumerate(names):  # one patient each: not duplicates of each other
        r.drop(name, pdf, sample_sidecar(mrn=f"{i:010d}"))
    return names


def test_an_afternoon_outage_then_everything_drains_in_order(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    config = write_config(
        tmp_path, sandbox, workers=1, retry_base_seconds=0.2, retry_cap_seconds=0.8
    )
    with running(config) as r:
        r.drop(
            "warm-up.pdf", sample_pdf("warm up"), sample_sidecar()
        )  # a token is cached before the outage
        r.finished(1)
        sandbox.state.set_faults(outage=True)
        names = _drop_all(r, 12, pdf)
        wait_until(lambda: any(p.kind == "outage" for p in r.queue.pauses()))
        before = len(sandbox.state.attempts)
        wait_until(lambda: len(r.jobs(JobState.QUEUED)) == 12, timeout=30)
        # The "afternoon": 4 s of outage. Only probes go out, one per backoff step
        # (at most one per 0.2 s), not 12 documents x retries.
        time.sleep(4)  # the outage lasts; nothing to wait for but time
        during = len(sandbox.state.attempts) - before
        assert during <= 4 / 0.2 + 1, during
        assert not any(r.failed.iterdir())
        assert all(j.state == JobState.QUEUED for j in r.jobs(JobState.QUEUED, JobState.FAILED))
        sandbox.state.set_faults(outage=False)
        done = wait_until(
            lambda: (lambda js: js if len(js) == 13 else None)(r.jobs(JobState.DONE)), timeout=30
        )
        assert not r.queue.pauses()
    documents = [j for j in done if j.original_name != "warm-up.pdf"]
    sent = sorted(documents, key=lambda j: j.sent_at or 0)
    assert sorted(j.original_name for j in sent) == names
    # in the order they were queued (intake's order: on a loaded machine a pair
    # dropped later may be ready, and queued, before one dropped earlier); if not,
    # each job's timeline says why
    queued = sorted(documents, key=lambda j: (j.created_at, j.id))
    audit = Queue.open_readonly(r.settings.database_path)
    timelines = {
        j.original_name: [
            (round(e["at"], 3), e["to_state"], e["detail"]) for e in audit.events(j.id)
        ]
        for j in sent
    }
    assert [j.id for j in sent] == [j.id for j in queued], timelines


def test_retry_after_is_honoured(tmp_path: Path, sandbox: Sandbox, pdf: bytes) -> None:
    sandbox.state.set_faults(fail_next=[429], retry_after="1")
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        r.drop("a.pdf", pdf, sample_sidecar())
        (job,) = r.finished(1)
    assert job.state == JobState.DONE
    tries = [a for a in sandbox.state.attempts if a.path == "/endpoint"]
    assert [a.status for a in tries] == [429, 200]
    assert tries[1].at - tries[0].at >= 0.95


def test_read_timeout_is_an_unknown_outcome_resent_with_the_same_document_id(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    pdf = sample_pdf("slow answer")
    config = write_config(tmp_path, sandbox, read_timeout_seconds=0.5)
    with running(config) as r:
        r.drop("warm-up.pdf", sample_pdf("warm up"), sample_sidecar())
        r.finished(1)
        sandbox.state.set_faults(latency_seconds=1.5)  # it answers, but too late
        r.drop("a.pdf", pdf, sample_sidecar())
        wait_until(
            lambda: any(e["error_kind"] == "unknown_outcome" for e in r.queue.events()), timeout=30
        )
        sandbox.state.set_faults(latency_seconds=0)
        jobs = wait_until(lambda: (lambda js: js if len(js) == 2 else None)(r.jobs(JobState.DONE)))
    job = next(j for j in jobs if j.original_name == "a.pdf")
    received = [x.body for x in sandbox.state.received()]
    ids = [b["Media"]["DocumentID"] for b in received if b["Media"]["FileName"] == "a.pdf"]
    # The sandbox drops a request whose client hung up; a real server may process
    # it. Either way the resend carries the same DocumentID, so a duplicate is
    # recognisable, and the unknown outcome is on record.
    assert job.attempts >= 2
    assert ids and set(ids) == {job.document_id}
    unknown = [e for e in Queue.open_readonly(r.settings.database_path).events(job.id)
               if e["error_kind"] == "unknown_outcome"]  # fmt: skip
    assert unknown and "timed out" in unknown[0]["detail"]
    assert json.dumps(unknown).find("a.pdf") == -1


def test_forget_drops_a_removed_destinations_circuit_and_pause(tmp_path: Path) -> None:
    b, _clock, queue = _breakers(tmp_path)
    b.failure(_dest(), AUTH, "refused")
    assert b.blocked() == {"d"} and queue.pauses()
    b.forget("d")
    assert b.blocked() == set() and queue.pauses() == []
