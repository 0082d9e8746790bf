"""The queue's invariants under any sequence of operations (hypothesis stateful):
every job exists once, in exactly the state a simple model predicts; a claim
never hands out a job whose lease is live; no job is ever lost; a lease that
was taken away (expired, released, finished) refuses its old token."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from conftest import counts_by_state
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from daemon.queue import Job, JobState, Queue

DESTINATIONS = ("consents", "labs", "referrals")
WORKER_CALLS = ("sent", "retry", "reject", "release", "upload")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Expected:
    """The model's view of one job."""

    destination: str
    document_id: str
    created_at: float
    state: JobState = JobState.QUEUED
    attempts: int = 0
    due: float = 0.0
    token: str | None = None
    lease_expires_at: float | None = None
    stale_tokens: list[str] = field(default_factory=list)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # A RAM-backed directory when there is one: the machine runs hundreds of commits.
        shm = Path("/dev/shm")
        self.dir = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None))
        self.clock = Clock()
        self.queue = Queue(self.dir / "chartdrop.db", clock=self.clock)
        self.model: dict[str, Expected] = {}

    def teardown(self) -> None:
        self.queue.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------

    def _in(self, state: JobState) -> list[str]:
        # In creation order: ids are random, and hypothesis must replay the same picks.
        return [job_id for job_id, exp in self.model.items() if exp.state is state]

    def _leased(self) -> list[str]:
        return self._in(JobState.LEASED)

    def _lease_lost(self, job_id: str) -> None:
        exp = self.model[job_id]
        assert exp.token is not None
        exp.stale_tokens.append(exp.token)
        exp.token = exp.lease_expires_at = None

    def _pick(self, data: st.DataObject, state: JobState) -> tuple[str, Expected]:
        job_id = data.draw(st.sampled_from(self._in(state)))
        return job_id, self.model[job_id]

    # -- rules ------------------------------------------------------------------

    @rule(destination=st.sampled_from(DESTINATIONS), fixed_id=st.booleans())
    def enqueue(self, destination: str, fixed_id: bool) -> None:
        self.clock.now += 0.001  # distinct ages, so the claim order never falls back on random ids
        document_id = f"doc-{len(self.model)}" if fixed_id else None
        job = self.queue.begin_intake(
            destination=destination,
            original_name="scan.pdf",
            sidecar_name="scan.json",
            spool_document="/spool/x",
            spool_sidecar="/spool/x.json",
            document_id=document_id,
        )
        job = self.queue.complete_intake(job.id, sha256="00", size=1)
        assert job.id not in self.model
        assert document_id is None or job.document_id == document_id
        self.model[job.id] = Expected(
            destination, job.document_id, job.created_at, due=self.clock.now
        )

    @rule(
        lease=st.floats(min_value=1, max_value=100),
        exclude=st.frozensets(st.sampled_from(DESTINATIONS), max_size=2),
    )
    def claim(self, lease: float, exclude: frozenset[str]) -> None:
        now = self.clock.now
        candidates = [
            (exp.due, exp.created_at, job_id)
            for job_id, exp in self.model.items()
            if exp.state is JobState.QUEUED and exp.due <= now and exp.destination not in exclude
        ]
        job = self.queue.claim(lease_seconds=lease, exclude_destinations=exclude)
        if not candidates:
            assert job is None
            return
        assert job is not None
        assert job.id == min(candidates)[2]
        exp = self.model[job.id]
        assert exp.token is None  # never a job whose lease is live
        assert job.lease_token is not None and job.lease_token not in exp.stale_tokens
        exp.state, exp.token, exp.lease_expires_at = JobState.LEASED, job.lease_token, now + lease

    @precondition(lambda self: self._leased())
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        job_id, exp = self._pick(data, JobState.LEASED)
        assert exp.token is not None
        assert self.queue.mark_sent(job_id, exp.token, remote_id="r", http_status=200)
        assert self.queue.mark_done(job_id, "/done/x")
        self._lease_lost(job_id)
        exp.state, exp.attempts = JobState.DONE, exp.attempts + 1

    @precondition(lambda self: self._leased())
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        job_id, exp = self._pick(data, JobState.LEASED)
        assert exp.token is not None
        assert self.queue.reject(job_id, exp.token, error_kind="http_400", error="HTTP 400")
        assert self.queue.mark_failed(job_id, "/failed/x")
        self._lease_lost(job_id)
        exp.state, exp.attempts = JobState.FAILED, exp.attempts + 1

    @precondition(lambda self: self._leased())
    @rule(data=st.data(), delay=st.floats(min_value=0, max_value=300))
    def retry_later(self, data: st.DataObject, delay: float) -> None:
        job_id, exp = self._pick(data, JobState.LEASED)
        assert exp.token is not None
        assert self.queue.retry_later(job_id, exp.token, delay=delay, error_kind="k", error="e")
        self._lease_lost(job_id)
        exp.state, exp.attempts, exp.due = JobState.QUEUED, exp.attempts + 1, self.clock.now + delay

    @precondition(lambda self: self._leased())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        job_id, exp = self._pick(data, JobState.LEASED)
        assert exp.token is not None
        assert self.queue.release(job_id, exp.token)
        self._lease_lost(job_id)
        exp.state = JobState.QUEUED

    @rule(seconds=st.floats(min_value=0, max_value=200))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def expire_leases(self) -> None:
        now = self.clock.now
        expired = [
            job_id
            for job_id in self._leased()
            if (expires := self.model[job_id].lease_expires_at) is not None and expires < now
        ]
        assert self.queue.expire_leases() == len(expired)
        for job_id in expired:
            self._lease_lost(job_id)
            self.model[job_id].state = JobState.QUEUED

    @precondition(lambda self: self._in(JobState.FAILED))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        job_id, exp = self._pick(data, JobState.FAILED)
        assert self.queue.requeue(
            job_id, spool_document="/spool/y", spool_sidecar=None, sidecar_name=None
        )
        exp.state, exp.attempts, exp.due = JobState.QUEUED, 0, self.clock.now

    def _stale(self, *, re_leased: bool) -> list[str]:
        return [
            job_id
            for job_id, exp in self.model.items()
            if exp.stale_tokens and (not re_leased or exp.state is JobState.LEASED)
        ]

    def _refuse_stale(self, data: st.DataObject, job_id: str, call: str) -> None:
        stale = data.draw(st.sampled_from(self.model[job_id].stale_tokens))
        before = self.queue.get(job_id)
        events_before = len(self.queue.events(job_id))
        q = self.queue
        refused = {
            "sent": lambda: q.mark_sent(job_id, stale, remote_id="r", http_status=200),
            "retry": lambda: q.retry_later(job_id, stale, delay=1, error_kind="k", error="e"),
            "reject": lambda: q.reject(job_id, stale, error_kind="k", error="e"),
            "release": lambda: q.release(job_id, stale),
            "upload": lambda: q.record_upload(job_id, stale, "https://blob.example/x"),
        }[call]()
        assert refused is False
        assert self.queue.get(job_id) == before
        assert len(self.queue.events(job_id)) == events_before

    @precondition(lambda self: self._stale(re_leased=False))
    @rule(data=st.data(), call=st.sampled_from(WORKER_CALLS))
    def stale_token_is_refused(self, data: st.DataObject, call: str) -> None:
        self._refuse_stale(data, data.draw(st.sampled_from(self._stale(re_leased=False))), call)

    @precondition(lambda self: self._stale(re_leased=True))
    @rule(data=st.data(), call=st.sampled_from(WORKER_CALLS))
    def stale_token_is_refused_while_someone_else_holds_it(
        self, data: st.DataObject, call: str
    ) -> None:
        # The job is leased again: only the token tells the old holder from the new one.
        self._refuse_stale(data, data.draw(st.sampled_from(self._stale(re_leased=True))), call)

    # -- invariants -------------------------------------------------------------

    @invariant()
    def every_job_once_in_its_modelled_state(self) -> None:
        jobs: list[Job] = self.queue.jobs(limit=10_000)
        assert len(jobs) == len(self.model)  # none lost, none invented
        assert {job.id for job in jobs} == set(self.model)
        for job in jobs:
            exp = self.model[job.id]
            assert job.state is exp.state
            assert job.attempts == exp.attempts
            assert job.document_id == exp.document_id
            assert job.lease_token == exp.token
            assert (job.state is JobState.LEASED) == (job.lease_token is not None)
            if job.state is JobState.QUEUED:
                assert job.next_attempt_at == exp.due

    @invariant()
    def counts_add_up(self) -> None:
        counts = counts_by_state(self.queue.path)
        assert sum(counts.values()) == len(self.model)
        for state in JobState:
            assert counts[state] == len(self._in(state))

    @invariant()
    def last_event_of_each_job_is_its_state(self) -> None:
        last: dict[str, str] = {}
        for event in self.queue.events():
            last[event["job_id"]] = event["to_state"]
        assert last == {job_id: str(exp.state) for job_id, exp in self.model.items()}


QueueMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestQueueMachine = QueueMachine.TestCase
