"""Rate limits against the real sandbox over HTTP on 127.0.0.1, with the real daemon.

A 429 with Retry-After pauses the whole destination (not only the job that got
it): no other job of it is sent before the Retry-After has elapsed. And a run
of several workers never sends more than ``max_requests_per_minute`` allows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, running, wait_until, write_config

from daemon.breaker import RATE_LIMITED
from daemon.queue import JobState
from daemon.samples import sample_pdf, sample_sidecar
from daemon.sandbox.fhir import MEDIA_PATH

RETRY_AFTER = 2.0


def _config(tmp_path: Path, sandbox: Sandbox, model: str, **kw: Any) -> Path:
    if model == "FHIR":
        kw["fhir"] = sandbox.fhir_table()
    return write_config(tmp_path, sandbox, model=model, **kw)


@pytest.mark.parametrize(("model", "path"), [("Media", "/endpoint"), ("FHIR", MEDIA_PATH)])
def test_a_429_pauses_the_whole_destination_for_its_retry_after(
    tmp_path: Path, sandbox: Sandbox, model: str, path: str
) -> None:
    sandbox.state.set_faults(fail_next=[429], retry_after=str(int(RETRY_AFTER)))
    with running(_config(tmp_path, sandbox, model, workers=4)) as r:
        r.drop("first.pdf", sample_pdf("first"), sample_sidecar(model=model))
        # the daemon has the 429 and has paused the destination
        wait_until(lambda: any(p.kind == RATE_LIMITED for p in r.queue.pauses()))
        (told,) = [a for a in sandbox.state.attempts if a.status == 429]
        for n in range(4):  # more documents for the same destination, at once
            r.drop(f"more-{n}.pdf", sample_pdf(f"more {n}"), sample_sidecar(model=model))
        jobs = r.finished(5)
    assert {j.state for j in jobs} == {JobState.DONE}
    sends = [a for a in sandbox.state.attempts if a.path == path]
    assert [a.status for a in sends].count(429) == 1 and len(sends) == 6
    later = [a for a in sends if a.at > told.at]
    assert len(later) == 5
    # the daemon read the 429 after the sandbox answered it: nothing may follow sooner
    assert min(a.at for a in later) >= told.at + RETRY_AFTER


def most_in_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        while ordered[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_four_workers_keep_within_max_requests_per_minute(tmp_path: Path, sandbox: Sandbox) -> None:
    per_minute = 240  # 4 a second, a burst of 4
    config = write_config(
        tmp_path,
        sandbox,
        workers=4,
        embed_max_bytes=100,  # every document is uploaded, then sent: both routes count
        redox={"max_requests_per_minute": per_minute},
    )
    with running(config) as r:
        for n in range(8):
            r.drop(f"doc-{n}.pdf", sample_pdf(f"document {n}"), sample_sidecar())
        jobs = r.finished(8)
    assert {j.state for j in jobs} == {JobState.DONE}
    sends = [a.at for a in sandbox.state.attempts if a.path in ("/endpoint", "/upload")]
    assert len(sends) == 16
    # the budget: at most burst + rate x window in any window (less 0.1 s for the
    # time between the daemon's request and the sandbox's record of it)
    for window in (1.0, 2.0):
        assert most_in_window(sends, window - 0.1) <= 4 + 4 * window, sends


def test_the_budget_is_shared_by_redox_destinations(tmp_path: Path, sandbox: Sandbox) -> None:
    (tmp_path / "letters" / "inbox").mkdir(parents=True)
    (tmp_path / "letters" / "done").mkdir()
    (tmp_path / "letters" / "failed").mkdir()
    letters = (
        '[[destination]]\nname = "letters"\ninbox = "letters/inbox"\n'
        'done = "letters/done"\nfailed = "letters/failed"\nmodel = "Media"\n'
        'redox_destination_id = "af394f14-b34a-464f-8d24-895f370af4c9"\n'
        '[destination.defaults]\nMedia = { Availability = "Available" }\n'
    )
    config = write_config(
        tmp_path, sandbox, workers=4, redox={"max_requests_per_minute": 120}, tables=letters
    )
    with running(config) as r:
        for n in range(4):
            r.drop(f"c-{n}.pdf", sample_pdf(f"c {n}"), sample_sidecar())
            other = tmp_path / "letters" / "inbox"
            (other / f"l-{n}.pdf.json").write_text(json.dumps(sample_sidecar()))
            (other / f".l-{n}.part").write_bytes(sample_pdf(f"l {n}"))
            (other / f".l-{n}.part").rename(other / f"l-{n}.pdf")
        jobs = r.finished(8)
    assert {j.destination for j in jobs} == {"consents", "letters"}
    sends = [a.at for a in sandbox.state.attempts if a.path == "/endpoint"]
    assert len(sends) == 8
    assert most_in_window(sends, 1.9) <= 2 + 2 * 2  # 2 a second for both together


def test_a_job_that_would_wait_long_for_the_quota_goes_back_unburnt(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """One request a minute: the second document would wait a minute for its
    token, longer than a worker holds a lease for it (5 s). It is put back
    without an attempt counted, and the destination is held from claims."""
    config = write_config(tmp_path, sandbox, workers=2, redox={"max_requests_per_minute": 1})
    with running(config) as r:
        r.drop("one.pdf", sample_pdf("one"), sample_sidecar())
        r.finished(1)
        r.drop("two.pdf", sample_pdf("two"), sample_sidecar())
        (pause,) = wait_until(lambda: [p for p in r.queue.pauses() if p.kind == RATE_LIMITED])
        (waiting,) = wait_until(lambda: r.jobs(JobState.QUEUED))
        assert waiting.attempts == 0 and waiting.last_error is None
        assert pause.destination == "consents" and pause.until is not None
        assert pause.until - pause.since > 30  # about a minute: the token's wait
        events = r.queue.events(waiting.id)
        assert [e["to_state"] for e in events][-2:] == ["leased", "queued"]
        assert events[-1]["detail"] == "released"
    assert [a.status for a in sandbox.state.attempts] == [200]  # the second never went out
