"""Wall-clock jumps, with injected clocks: a clock set back never stalls the
queue, and a clock set forward never fails documents early. (Settle and rescan
timers run on the monotonic clock: see test_readiness.py.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, write_config

from daemon.config import Settings, load_settings
from daemon.decide import decide, gap_cap
from daemon.delivery import Deliverer
from daemon.errors import TransientDeliveryError
from daemon.fhir import FhirClient
from daemon.filing import Filer
from daemon.http import make_http_client
from daemon.outgoing import Sender
from daemon.queue import CLOCK_SLACK_SECONDS, Job, JobState, Queue
from daemon.redox import RedoxClient
from daemon.samples import sample_pdf, sample_sidecar

DAY = 86_400.0
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> Any:
    with Queue(tmp_path / "q.sqlite3", clock=clock) as q:
        yield q


def queued_job(queue: Queue) -> Job:
    job = queue.begin_intake(
        destination="consents",
        original_name="a.pdf",
        sidecar_name=None,
        spool_document="/nonexistent",
        spool_sidecar=None,
    )
    return queue.complete_intake(job.id, sha256="", size=1)


def fail_once(queue: Queue, delay: float) -> Job:
    job = queue.claim(lease_seconds=60)
    assert job is not None and job.lease_token is not None
    assert queue.retry_later(
        job.id, job.lease_token, delay=delay, error_kind="transient", error="x"
    )
    again = queue.get(job.id)
    assert again is not None
    return again


def test_clock_set_back_by_days_does_not_stall_a_waiting_job(queue: Queue, clock: Clock) -> None:
    queued_job(queue)
    fail_once(queue, delay=600)
    clock.now = T0 + 300
    assert queue.claim(lease_seconds=60) is None  # not due yet: backoff is kept
    clock.now = T0 - 3 * DAY  # NTP corrects a clock that ran three days ahead
    job = queue.claim(lease_seconds=60)
    assert job is not None  # due now, not in three days


def test_small_step_back_only_delays_by_the_slack(queue: Queue, clock: Clock) -> None:
    queued_job(queue)
    fail_once(queue, delay=10)
    clock.now = T0 - 30  # an ordinary correction: the schedule stands
    assert queue.claim(lease_seconds=60) is None
    clock.now = T0 - CLOCK_SLACK_SECONDS - 1  # beyond the slack: due
    assert queue.claim(lease_seconds=60) is not None


def _settings(tmp_path: Path, sandbox: Sandbox, **top: Any) -> Settings:
    return load_settings(write_config(tmp_path, sandbox, **top))


def test_clock_set_forward_does_not_give_up(
    tmp_path: Path, sandbox: Sandbox, queue: Queue, clock: Clock
) -> None:
    dest = _settings(tmp_path, sandbox).destination[0]  # give_up_after_hours = 72
    queued_job(queue)
    for _ in range(3):
        job = fail_once(queue, delay=60)
        clock.now += 60
    clock.now += 30 * DAY  # the clock jumps a month ahead
    job = queue.claim(lease_seconds=60) or job
    exc = TransientDeliveryError("HTTP 503", status=503)
    # the wall clock alone says it has waited a month: it would give up
    assert decide(exc, job, dest, now=clock.now).action == "reject"
    waited = queue.waited_seconds(job.id, now=clock.now, gap_cap=gap_cap(dest))
    assert waited <= 3 * 60 + gap_cap(dest)
    assert decide(exc, job, dest, now=clock.now, waited=waited).action == "retry"


def test_a_real_outage_longer_than_give_up_still_gives_up(
    tmp_path: Path, sandbox: Sandbox, queue: Queue, clock: Clock
) -> None:
    dest = _settings(tmp_path, sandbox, retry_cap_seconds=3600).destination[0]
    queued_job(queue)
    exc = TransientDeliveryError("HTTP 503", status=503)
    for hour in range(80):
        clock.now = T0 + hour * 3600
        job = queue.claim(lease_seconds=60)
        assert job is not None and job.lease_token is not None
        waited = queue.waited_seconds(job.id, now=clock.now, gap_cap=gap_cap(dest))
        decision = decide(exc, job, dest, now=clock.now, waited=waited)
        if decision.action == "reject":
            break
        queue.retry_later(job.id, job.lease_token, delay=3500, error_kind="transient", error="x")
    assert decision.action == "reject" and decision.error_kind == "gave_up"
    assert hour == 72


def test_waited_counts_from_the_latest_requeue(queue: Queue, clock: Clock) -> None:
    job = queued_job(queue)
    clock.now += 100
    assert queue.waited_seconds(job.id, now=clock.now, gap_cap=3600) == pytest.approx(100)
    clock.now -= 500  # set back: nothing is subtracted, nothing added
    assert queue.waited_seconds(job.id, now=clock.now, gap_cap=3600) == 0


def test_deliverer_keeps_retrying_across_a_forward_jump(
    tmp_path: Path, sandbox: Sandbox, clock: Clock
) -> None:
    """The worker path itself: the real client against the sandbox in an outage,
    the queue and the deliverer on one injected clock that jumps ten days."""
    settings = _settings(tmp_path, sandbox)
    settings.spool_dir.mkdir(parents=True)
    pdf = sample_pdf("Clock")
    (settings.spool_dir / "d").write_bytes(pdf)
    (settings.spool_dir / "s").write_text(json.dumps(sample_sidecar()))
    sandbox.state.set_faults(outage=True)
    with Queue(settings.database_path, clock=clock) as queue:
        job = queue.begin_intake(
            destination="consents",
            original_name="clock.pdf",
            sidecar_name="clock.pdf.json",
            spool_document=str(settings.spool_dir / "d"),
            spool_sidecar=str(settings.spool_dir / "s"),
        )
        queue.complete_intake(job.id, sha256=hashlib.sha256(pdf).hexdigest(), size=len(pdf))
        http = make_http_client(settings)
        try:
            sender = Sender(
                settings, RedoxClient(settings.redox, http), FhirClient(settings.fhir, http)
            )
            deliverer = Deliverer(settings, queue, sender, Filer(settings, queue), clock=clock)
            for jump in (0.0, 10 * DAY):
                clock.now += jump
                leased = queue.claim(lease_seconds=60)
                assert leased is not None
                assert deliverer.process(leased) == "queued"
                clock.now += 1000  # past any backoff
            sandbox.state.set_faults(outage=False)
            leased = queue.claim(lease_seconds=60)
            assert leased is not None
            assert deliverer.process(leased) == "sent"
        finally:
            http.close()
        final = queue.get(job.id)
        assert final is not None and final.state == JobState.DONE
