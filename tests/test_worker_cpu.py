"""The worker's per-document savings keep the durable order: the target in done/
is committed with ``sent`` (before any rename), the sent job is filed without
reading it again, and a queued job wakes one idle worker, not all of them."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest

from daemon import delivery
from daemon.queue import Job, JobState, Queue
from daemon.wakeup import Wakeup


def test_target_in_done_is_committed_with_sent(
    daemon_factory: Any, pdf: bytes, sidecar: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Job | None] = []
    reads: list[str] = []
    real_get = Queue.get

    def counting_get(self: Queue, job_id: str) -> Job | None:
        reads.append(job_id)
        return real_get(self, job_id)

    monkeypatch.setattr(Queue, "get", counting_get)
    r = daemon_factory()

    def at(name: str) -> None:  # what a crash right after the commit would leave on disk
        if name == "after_commit":
            with Queue.open_readonly(r.settings.database_path) as other:
                (job,) = other.jobs(states=[JobState.SENT])
                seen.append(job)

    statements: list[str] = []
    r.queue._conn.set_trace_callback(statements.append)
    monkeypatch.setattr(delivery, "killpoint", at)
    r.drop("consent.pdf", pdf, sidecar)
    (done,) = r.finished(1)
    target = r.done / datetime.now().astimezone().strftime("%Y-%m-%d") / "consent.pdf"
    (sent,) = seen
    assert sent is not None and sent.final_path == str(target)  # durable before the rename
    assert done.state == JobState.DONE and done.final_path == str(target)
    assert target.read_bytes() == pdf
    assert not [s for s in statements if s.startswith("UPDATE jobs SET final_path")]
    assert reads == []  # filed from the job the commit returned


def waiting(wakeup: Wakeup, n: int) -> tuple[list[threading.Thread], list[bool]]:
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(wakeup.wait(5.0))) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # all of them waiting
    return threads, results


def test_one_queued_job_wakes_one_idle_worker() -> None:
    wakeup = Wakeup()
    threads, results = waiting(wakeup, 4)
    wakeup.set()
    time.sleep(0.3)
    assert results == [True]  # the other three still sleep
    wakeup.wake_all()  # shutdown: every worker looks at the daemon's state
    for t in threads:
        t.join(5)
    assert results == [True] * 4


def test_a_claimed_job_takes_its_announcement() -> None:
    wakeup = Wakeup()
    wakeup.set()
    assert wakeup.is_set()
    wakeup.take()  # a busy worker claimed the job first
    assert not wakeup.is_set()
    started = time.monotonic()
    assert wakeup.wait(0.1) is False  # nobody is woken for a job already taken
    assert time.monotonic() - started >= 0.09
    wakeup.set()
    assert wakeup.wait(0.1) is True
