"""The job queue against real SQLite files: transitions, leases, the audit trail,
and claims from several connections and processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import counts_by_state

from daemon.errors import ConfigError, ContentError, MissingSidecarError
from daemon.queue import DestinationStatus, Job, JobState, Queue
from daemon.queue_schema import file_intact

T0 = 1_700_000_000.0
CANARY = "CANARY_Bixby_Timothy"


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "chartdrop.db"


@pytest.fixture
def queue(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    db_path.parent.mkdir()
    q = Queue(db_path, clock=clock)
    yield q
    q.close()


def enqueue(q: Queue, destination: str = "consents", name: str = "scan.pdf", **kw: Any) -> Job:
    job = q.begin_intake(
        destination=destination,
        original_name=name,
        sidecar_name=name + ".json",
        spool_document=f"/spool/{name}",
        spool_sidecar=f"/spool/{name}.json",
        **kw,
    )
    return q.complete_intake(job.id, sha256="ab" * 32, size=1234)


def claim(q: Queue, lease: float = 60.0, **kw: Any) -> Job:
    job = q.claim(lease_seconds=lease, **kw)
    assert job is not None
    assert job.lease_token is not None
    return job


def token(job: Job) -> str:
    assert job.lease_token is not None
    return job.lease_token


def transitions(q: Queue, job_id: str) -> list[tuple[str | None, str]]:
    return [(e["from_state"], e["to_state"]) for e in q.events(job_id)]


def raw(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(db_path, isolation_level=None)


# -- the file -----------------------------------------------------------------


def test_database_file_is_private_wal_and_sound(queue: Queue, db_path: Path) -> None:
    enqueue(queue)
    for path in db_path.parent.iterdir():  # the db and its -wal / -shm
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    conn = raw(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    assert file_intact(db_path)


def test_reopening_applies_each_migration_once(queue: Queue, db_path: Path) -> None:
    enqueue(queue)
    queue.close()
    with Queue(db_path) as again:
        assert len(again.jobs()) == 1
    conn = raw(db_path)
    rows = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    conn.close()
    assert rows == [
        ("chartdrop", "m001_create_jobs_and_events"),
        ("chartdrop", "m002_create_pauses"),
        ("chartdrop", "m003_indexes_for_a_big_queue"),
        ("chartdrop", "m004_duplicates"),
        ("chartdrop", "m005_events_retention"),
        ("chartdrop", "m006_failed_by_document_id"),
    ]


def test_concurrent_first_opens_create_the_schema_once(db_path: Path) -> None:
    db_path.parent.mkdir()
    start = threading.Barrier(6)

    def open_it() -> None:
        start.wait(30)
        Queue(db_path).close()

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(open_it) for _ in range(6)]:
            future.result(60)  # re-raises what the thread raised
    conn = raw(db_path)
    assert conn.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone() == (6,)
    conn.close()


def test_readonly_never_creates_and_refuses_foreign_or_writes(queue: Queue, db_path: Path) -> None:
    missing = db_path.parent / "missing.db"
    with pytest.raises(FileNotFoundError):
        Queue.open_readonly(missing)
    assert not missing.exists()

    foreign = db_path.parent / "foreign.db"
    conn = raw(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(ConfigError):
        Queue.open_readonly(foreign)

    job = enqueue(queue)
    with Queue.open_readonly(db_path) as ro:
        assert ro.get(job.id) == job
        assert counts_by_state(ro.path)["queued"] == 1
        with pytest.raises(sqlite3.OperationalError):
            ro.claim(lease_seconds=10)
    assert queue.get(job.id) == job


# -- transitions --------------------------------------------------------------


def test_intake_then_queued(queue: Queue, clock: FakeClock) -> None:
    job = queue.begin_intake(
        destination="consents",
        original_name="scan.pdf",
        sidecar_name=None,
        spool_document="/spool/a",
        spool_sidecar=None,
    )
    assert job.state is JobState.INTAKE
    assert job.attempts == 0 and job.queued_at is None
    assert queue.claim(lease_seconds=10) is None  # an intake is not claimable

    clock.advance(2)
    queued = queue.complete_intake(job.id, sha256="ff", size=9)
    assert queued.state is JobState.QUEUED
    assert (queued.sha256, queued.size) == ("ff", 9)
    assert queued.queued_at == queued.next_attempt_at == T0 + 2
    assert queued.document_id == job.document_id
    assert transitions(queue, job.id) == [(None, "intake"), ("intake", "queued")]
    with pytest.raises(ValueError, match="not in intake"):
        queue.complete_intake(job.id, sha256="ff", size=9)


def test_hand_overs_batched_commit_together_and_all_or_none(queue: Queue) -> None:
    """A tick's pairs: all rows in one transaction, all outcomes in one; a bad one
    rolls the whole batch of outcomes back (nothing half-recorded)."""
    rows = [
        {
            "destination": "consents",
            "original_name": f"scan{i}.pdf",
            "sidecar_name": None,
            "spool_document": f"/spool/{i}",
            "spool_sidecar": None,
        }
        for i in range(3)
    ]
    jobs = queue.begin_intake_many(rows)
    assert [j.state for j in jobs] == [JobState.INTAKE] * 3
    assert len({j.document_id for j in jobs}) == 3
    bad = [(jobs[0].id, "aa", 1, None), ("no-such-job", "bb", 2, None)]
    with pytest.raises(ValueError, match="not in intake"):
        queue.complete_intake_many(bad)
    assert queue.get(jobs[0].id).state is JobState.INTAKE  # type: ignore[union-attr]
    rejection = MissingSidecarError("no sidecar")
    done = queue.complete_intake_many(
        [(jobs[0].id, "aa", 1, None), (jobs[1].id, "bb", 2, None), (jobs[2].id, "", 3, rejection)]
    )
    assert [j.state for j in done] == [JobState.QUEUED, JobState.QUEUED, JobState.REJECTED]
    assert transitions(queue, jobs[2].id) == [(None, "intake"), ("intake", "rejected")]
    assert not queue._conn.in_transaction


def test_redoable_commits_leave_the_connection_at_synchronous_full(queue: Queue) -> None:
    """complete_intake and mark_done commit without their own fsync (NORMAL), and
    every other commit is FULL again after them."""
    seen: list[int] = []
    real = queue._write

    @contextmanager
    def spy(**kwargs: Any) -> Iterator[sqlite3.Connection]:
        with real(**kwargs) as conn:
            seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
            yield conn

    queue._write = spy  # type: ignore[method-assign]
    job = claim(queue) if enqueue(queue) else None
    assert job is not None
    queue.record_sent(job.id, token(job), remote_id="r", http_status=200, final_path="/d/x")
    queue.mark_done(job.id, "/d/x")
    # intake row FULL, queued NORMAL, claim FULL, sent FULL, done NORMAL
    assert seen == [2, 1, 2, 2, 1]
    assert queue._conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_intake_rejected_then_failed(queue: Queue) -> None:
    job = queue.begin_intake(
        destination="consents",
        original_name="scan.pdf",
        sidecar_name=None,
        spool_document="/spool/a",
        spool_sidecar=None,
    )
    rejected = queue.complete_intake(
        job.id, sha256="ff", size=9, rejection=MissingSidecarError("no sidecar was found")
    )
    assert rejected.state is JobState.REJECTED
    assert (rejected.error_kind, rejected.last_error) == ("missing_sidecar", "no sidecar was found")
    assert queue.claim(lease_seconds=10) is None
    assert queue.mark_done(job.id, "/done/x") is False  # rejected is never done
    assert queue.mark_failed(job.id, "/failed/scan.pdf")
    failed = queue.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.final_path == "/failed/scan.pdf" and failed.finished_at is not None
    assert queue.events(job.id)[1]["error_kind"] == "missing_sidecar"


def test_abandon_intake(queue: Queue) -> None:
    job = queue.begin_intake(
        destination="consents",
        original_name="scan.pdf",
        sidecar_name=None,
        spool_document=None,
        spool_sidecar=None,
    )
    queue.abandon_intake(job.id, "hand-over interrupted")
    abandoned = queue.get(job.id)
    assert abandoned is not None and abandoned.state is JobState.ABANDONED
    assert queue.events(job.id)[-1]["detail"] == "hand-over interrupted"
    with pytest.raises(ValueError, match="not in intake"):
        queue.abandon_intake(job.id, "again")
    with pytest.raises(ValueError, match="not in intake"):
        queue.abandon_intake(enqueue(queue).id, "queued is not intake")


def test_delivered_through_a_blob_then_done(queue: Queue, clock: FakeClock) -> None:
    job = enqueue(queue)
    clock.advance(1)
    leased = claim(queue, lease=30)
    assert leased.id == job.id and leased.state is JobState.LEASED
    assert leased.lease_expires_at == clock.now + 30
    assert queue.record_upload(job.id, token(leased), "https://blob.example/abc")
    uploaded = queue.get(job.id)
    assert uploaded is not None and uploaded.state is JobState.LEASED
    assert (uploaded.blob_uri, uploaded.lease_token) == (
        "https://blob.example/abc",
        leased.lease_token,
    )

    clock.advance(1)
    assert queue.mark_sent(job.id, token(leased), remote_id="log-1", http_status=200)
    sent = queue.get(job.id)
    assert sent is not None and sent.state is JobState.SENT
    assert (sent.remote_id, sent.http_status, sent.sent_at) == ("log-1", 200, clock.now)
    assert sent.attempts == 1 and sent.lease_token is None and sent.lease_expires_at is None

    assert queue.set_final_path(job.id, "/done/2024-01-01/scan.pdf")
    assert queue.mark_done(job.id, "/done/2024-01-01/scan.pdf")
    done = queue.get(job.id)
    assert done is not None and done.state is JobState.DONE
    assert done.final_path == "/done/2024-01-01/scan.pdf" and done.finished_at == clock.now
    assert queue.set_final_path(job.id, "/elsewhere") is False  # the move is over
    assert transitions(queue, job.id) == [
        (None, "intake"),
        ("intake", "queued"),
        ("queued", "leased"),
        ("leased", "leased"),
        ("leased", "sent"),
        ("sent", "done"),
    ]


def test_retry_later_counts_and_delays(queue: Queue, clock: FakeClock) -> None:
    job = enqueue(queue)
    leased = claim(queue)
    assert queue.retry_later(
        job.id, token(leased), delay=30, error_kind="http_503", error="HTTP 503", http_status=503
    )
    retried = queue.get(job.id)
    assert retried is not None and retried.state is JobState.QUEUED
    assert retried.attempts == 1 and retried.lease_token is None
    assert retried.next_attempt_at == T0 + 30
    assert (retried.error_kind, retried.last_error, retried.http_status) == (
        "http_503",
        "HTTP 503",
        503,
    )

    clock.advance(29.9)
    assert queue.claim(lease_seconds=10) is None  # not due yet
    clock.advance(0.1)
    again = claim(queue)
    assert again.id == job.id and again.lease_token != leased.lease_token
    event = queue.events(job.id)[3]
    assert (event["to_state"], event["attempt"], event["http_status"]) == ("queued", 1, 503)


def test_release_does_not_count_an_attempt(queue: Queue) -> None:
    job = enqueue(queue)
    leased = claim(queue)
    assert queue.release(job.id, token(leased))
    released = queue.get(job.id)
    assert released is not None and released.state is JobState.QUEUED
    assert released.attempts == 0 and released.lease_token is None
    assert claim(queue).id == job.id  # claimable again at once


def test_reject_failed_requeue_keeps_document_id(queue: Queue, clock: FakeClock) -> None:
    job = enqueue(queue, document_id="doc-fixed-1")
    assert job.document_id == "doc-fixed-1"
    leased = claim(queue)
    assert queue.retry_later(
        job.id, token(leased), delay=5, error_kind="timeout", error="timed out"
    )
    clock.advance(5)
    leased = claim(queue)
    assert queue.record_upload(job.id, token(leased), "https://blob.example/1")
    assert queue.reject(
        job.id, token(leased), error_kind="http_400", error="HTTP 400: Patient.ID", http_status=400
    )
    rejected = queue.get(job.id)
    assert rejected is not None and rejected.state is JobState.REJECTED and rejected.attempts == 2
    assert (
        queue.requeue(job.id, spool_document="/s/x", spool_sidecar=None, sidecar_name=None) is False
    )  # not failed yet
    assert queue.mark_failed(job.id, "/failed/scan.pdf")

    clock.advance(100)
    assert queue.requeue(
        job.id, spool_document="/spool/new.doc", spool_sidecar="/spool/new.json", sidecar_name=None
    )
    requeued = queue.get(job.id)
    assert requeued is not None and requeued.state is JobState.QUEUED
    assert requeued.document_id == "doc-fixed-1"
    assert requeued.attempts == 0
    assert (requeued.spool_document, requeued.spool_sidecar) == (
        "/spool/new.doc",
        "/spool/new.json",
    )
    assert requeued.queued_at == requeued.next_attempt_at == clock.now
    cleared = (requeued.last_error, requeued.error_kind, requeued.http_status, requeued.blob_uri)
    assert cleared == (None, None, None, None)
    assert (requeued.final_path, requeued.finished_at) == (None, None)
    assert claim(queue).document_id == "doc-fixed-1"
    assert (
        queue.requeue(job.id, spool_document="/s/x", spool_sidecar=None, sidecar_name=None) is False
    )  # leased now


def test_document_id_cannot_be_changed_even_by_hand(queue: Queue, db_path: Path) -> None:
    job = enqueue(queue)
    conn = raw(db_path)
    with pytest.raises(sqlite3.IntegrityError, match="document_id is fixed"):
        conn.execute("UPDATE jobs SET document_id = 'other' WHERE id = ?", (job.id,))
    conn.close()
    assert queue.get(job.id) == job


def test_a_failed_write_rolls_back_and_the_queue_goes_on(queue: Queue) -> None:
    with pytest.raises(sqlite3.IntegrityError):  # NOT NULL destination
        queue.begin_intake(
            destination=None,  # type: ignore[arg-type]
            original_name="scan.pdf",
            sidecar_name=None,
            spool_document=None,
            spool_sidecar=None,
        )
    assert queue.jobs() == [] and queue.events() == []
    job = enqueue(queue)  # no transaction was left open
    assert claim(queue).id == job.id


WORKER_CALLS: dict[str, Callable[[Queue, str, str], bool]] = {
    "record_upload": lambda q, i, t: q.record_upload(i, t, "https://blob.example/x"),
    "mark_sent": lambda q, i, t: q.mark_sent(i, t, remote_id="r", http_status=200),
    "retry_later": lambda q, i, t: q.retry_later(i, t, delay=1, error_kind="k", error="e"),
    "reject": lambda q, i, t: q.reject(i, t, error_kind="k", error="e"),
    "release": lambda q, i, t: q.release(i, t),
}


@pytest.mark.parametrize("call", WORKER_CALLS.values(), ids=WORKER_CALLS.keys())
def test_wrong_token_or_state_changes_nothing(queue: Queue, call: Callable[..., bool]) -> None:
    job = enqueue(queue)
    assert call(queue, job.id, "no-lease") is False  # queued: nobody holds it
    leased = claim(queue)
    events_before = queue.events()
    assert call(queue, job.id, "f" * 32) is False
    assert call(queue, "no-such-job", token(leased)) is False
    assert queue.get(job.id) == leased
    assert queue.events() == events_before
    assert call(queue, job.id, token(leased)) is True


def test_finishing_calls_need_the_right_state(queue: Queue) -> None:
    job = enqueue(queue)
    assert queue.mark_done(job.id, "/done/x") is False
    assert queue.mark_failed(job.id, "/failed/x") is False
    assert queue.set_final_path(job.id, "/done/x") is False
    assert (
        queue.requeue(job.id, spool_document="/s", spool_sidecar=None, sidecar_name=None) is False
    )
    leased = claim(queue)
    assert queue.mark_done(job.id, "/done/x") is False
    assert queue.get(job.id) == leased


# -- claiming -----------------------------------------------------------------


def test_claim_order_follows_next_attempt_at_then_age(queue: Queue, clock: FakeClock) -> None:
    first = enqueue(queue, name="a.pdf")
    clock.advance(1)
    second = enqueue(queue, name="b.pdf")
    clock.advance(1)
    third = enqueue(queue, name="c.pdf")
    # the oldest fails and waits: due after the other two
    assert queue.retry_later(first.id, token(claim(queue)), delay=10, error_kind="k", error="e")
    clock.advance(20)
    late = enqueue(queue, name="d.pdf")  # due now, later than the retry
    order = [claim(queue).id for _ in range(4)]
    assert order == [second.id, third.id, first.id, late.id]
    assert queue.claim(lease_seconds=10) is None


def test_same_due_time_goes_by_creation(queue: Queue, clock: FakeClock) -> None:
    created = []
    for n in range(5):
        job = queue.begin_intake(
            destination="consents",
            original_name=f"{n}.pdf",
            sidecar_name=None,
            spool_document=None,
            spool_sidecar=None,
        )
        created.append(job.id)
        clock.advance(1)
    for job_id in reversed(created):  # all due at the same moment
        queue.complete_intake(job_id, sha256="00", size=1)
    assert [claim(queue).id for _ in created] == created


def test_exclude_destinations(queue: Queue) -> None:
    consent = enqueue(queue, destination="consents")
    lab = enqueue(queue, destination="labs")
    assert queue.claim(lease_seconds=10, exclude_destinations={"consents", "labs"}) is None
    assert claim(queue, exclude_destinations=["consents"]).id == lab.id
    assert queue.claim(lease_seconds=10, exclude_destinations=("consents",)) is None
    assert claim(queue).id == consent.id


# -- leases -------------------------------------------------------------------


def test_expire_leases_only_touches_expired_ones(queue: Queue, clock: FakeClock) -> None:
    short = enqueue(queue, name="a.pdf")
    clock.advance(1)
    long = enqueue(queue, name="b.pdf")
    clock.advance(1)
    unleased = enqueue(queue, name="c.pdf")
    short_lease = claim(queue, lease=10)
    long_lease = claim(queue, lease=100)
    assert (short_lease.id, long_lease.id) == (short.id, long.id)

    clock.advance(10)
    assert queue.expire_leases() == 0  # exactly at expiry: still live
    clock.advance(0.5)
    assert queue.expire_leases() == 1
    expired = queue.get(short.id)
    assert expired is not None and expired.state is JobState.QUEUED
    assert expired.lease_token is None and expired.attempts == 0
    assert queue.events(short.id)[-1]["detail"] == "lease expired"
    assert queue.get(long.id) == long_lease
    assert queue.get(unleased.id) == unleased

    # the dead worker's token is refused; the live one still works
    assert queue.mark_sent(short.id, token(short_lease), remote_id=None, http_status=200) is False
    assert queue.mark_sent(long.id, token(long_lease), remote_id=None, http_status=200)
    assert queue.expire_leases() == 0
    again = claim(queue)
    assert again.id == short.id


def test_reset_all_leases_at_start_up(queue: Queue, db_path: Path) -> None:
    for n in range(3):
        enqueue(queue, name=f"{n}.pdf")
    leases = [claim(queue, lease=3600) for _ in range(2)]
    queue.close()
    with Queue(db_path) as restarted:
        assert restarted.reset_all_leases() == 2
        assert counts_by_state(restarted.path)["queued"] == 3
        for lease in leases:
            assert restarted.release(lease.id, token(lease)) is False
            assert restarted.events(lease.id)[-1]["detail"] == "lease reset at start-up"
        assert restarted.reset_all_leases() == 0


# -- the audit trail ----------------------------------------------------------


def test_events_are_append_only(queue: Queue, db_path: Path) -> None:
    job = enqueue(queue)
    conn = raw(db_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET detail = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events WHERE job_id = ?", (job.id,))
    conn.close()
    assert len(queue.events(job.id)) == 2


def test_every_change_writes_one_event(queue: Queue, clock: FakeClock) -> None:
    jobs = [enqueue(queue, name=f"{n}.pdf") for n in range(4)]
    a, b, c, _ = (claim(queue, lease=5) for _ in jobs)  # the last one's lease expires
    queue.mark_sent(a.id, token(a), remote_id="r", http_status=200)
    queue.mark_done(a.id, "/done/a")
    queue.reject(b.id, token(b), error_kind="http_400", error="bad", http_status=400)
    queue.mark_failed(b.id, "/failed/b")
    queue.requeue(b.id, spool_document="/s/b", spool_sidecar=None, sidecar_name=None)
    queue.retry_later(c.id, token(c), delay=1, error_kind="k", error="e")
    clock.advance(10)
    queue.expire_leases()  # d
    events = queue.events()
    assert len(events) == 4 * 3 + 2 + 3 + 1 + 1
    for event in events:
        job = queue.get(event["job_id"])
        assert job is not None and event["destination"] == job.destination
    last = {e["job_id"]: e["to_state"] for e in events}
    assert all(last[j.id] == queue.get(j.id).state for j in jobs)  # type: ignore[union-attr]
    assert queue.events(since=T0 + 10) == [events[-1]]


def test_events_never_hold_phi(queue: Queue, clock: FakeClock) -> None:
    names = [f"{CANARY}_{n}.pdf" for n in range(4)]
    jobs = [
        queue.begin_intake(
            destination="consents",
            original_name=name,
            sidecar_name=f"{CANARY}.json",
            spool_document=f"/var/lib/chartdrop/spool/{CANARY}/{name}",
            spool_sidecar=f"/var/lib/chartdrop/spool/{CANARY}/{name}.json",
        )
        for name in names
    ]
    queue.complete_intake(jobs[0].id, sha256="aa", size=1, rejection=ContentError("unreadable PDF"))
    queue.mark_failed(jobs[0].id, f"/srv/failed/{CANARY}.pdf")
    queue.requeue(
        jobs[0].id,
        spool_document=f"/spool/{CANARY}",
        spool_sidecar=f"/spool/{CANARY}",
        sidecar_name=None,
    )
    queue.abandon_intake(jobs[1].id, "hand-over interrupted")
    for job in jobs[2:]:
        queue.complete_intake(job.id, sha256="bb", size=2)
    for _ in range(3):
        leased = claim(queue, lease=5)
        queue.record_upload(leased.id, token(leased), f"https://blob.example/{CANARY}")
        queue.retry_later(leased.id, token(leased), delay=0, error_kind="k", error="HTTP 503")
    a, b, _ = (claim(queue, lease=5) for _ in range(3))  # the last one's lease expires
    queue.mark_sent(a.id, token(a), remote_id="log-1", http_status=200)
    queue.set_final_path(a.id, f"/srv/done/{CANARY}.pdf")
    queue.mark_done(a.id, f"/srv/done/{CANARY}.pdf")
    queue.reject(b.id, token(b), error_kind="http_400", error="HTTP 400", http_status=400)
    queue.mark_failed(b.id, f"/srv/failed/{CANARY}.pdf")
    clock.advance(60)
    queue.expire_leases()

    events = queue.events()
    assert len(events) > 20
    for event in events:
        for column, value in event.items():
            for needle in ("CANARY", "Bixby", "Timothy", "/spool", "/srv", "blob.example"):
                assert needle not in str(value), (column, value)


# -- reads --------------------------------------------------------------------


def test_get_by_unique_prefix(queue: Queue, db_path: Path) -> None:
    job = enqueue(queue)
    assert queue.get(job.id) == job
    assert queue.get(job.id[:6]) == job
    assert queue.get(job.id[:6].upper()) == job
    assert queue.get(job.id[:5]) is None
    assert queue.get("zzzzzzzz") is None
    # a second id with the same 6-character prefix makes that prefix ambiguous
    twin = job.id[:6] + ("0" if job.id[6] != "0" else "1") + job.id[7:]
    conn = raw(db_path)
    columns = ", ".join(c for c in Job.__dataclass_fields__ if c != "id")
    conn.execute(
        f"INSERT INTO jobs (id, {columns}) SELECT ?, {columns} FROM jobs WHERE id = ?",
        (twin, job.id),
    )
    conn.close()
    assert queue.get(job.id[:6]) is None
    assert queue.get(job.id[:7]) == job


def test_jobs_filters_newest_first(queue: Queue, clock: FakeClock) -> None:
    made = []
    for n, dest in enumerate(["consents", "labs", "consents", "labs"]):
        made.append(enqueue(queue, destination=dest, name=f"{n}.pdf"))
        clock.advance(1)
    leased = claim(queue)
    assert leased.id == made[0].id
    assert [j.id for j in queue.jobs()] == [j.id for j in reversed(made)]
    assert [j.id for j in queue.jobs(destination="labs")] == [made[3].id, made[1].id]
    assert [j.id for j in queue.jobs(states=["leased"])] == [made[0].id]
    assert len(queue.jobs(states=[JobState.QUEUED, JobState.LEASED], limit=2)) == 2
    assert queue.jobs(states=["leased"], destination="labs") == []
    with pytest.raises(ValueError):
        queue.jobs(states=["nonsense"])


def test_status_per_destination(queue: Queue, clock: FakeClock) -> None:
    midnight = datetime.fromtimestamp(T0).replace(hour=0, minute=0, second=0, microsecond=0)
    clock.now = (midnight - timedelta(hours=1)).timestamp()  # yesterday, 23:00
    yesterday = enqueue(queue, name="y.pdf")
    lease = claim(queue)
    queue.mark_sent(yesterday.id, token(lease), remote_id="r0", http_status=200)
    queue.mark_done(yesterday.id, "/done/y")
    oldest = enqueue(queue, name="old.pdf")  # waiting since yesterday 23:00
    lease = claim(queue)
    queue.retry_later(oldest.id, token(lease), delay=36_000, error_kind="k", error="e")  # retrying

    clock.now = (midnight + timedelta(hours=2)).timestamp()
    for n in range(6):
        enqueue(queue, name=f"{n}.pdf")
    for n in range(5):
        lease = claim(queue)
        if n == 0:
            queue.mark_sent(lease.id, token(lease), remote_id="r1", http_status=200)
            queue.mark_done(lease.id, "/done/1")
        elif n == 1:
            clock.advance(5)
            queue.mark_sent(lease.id, token(lease), remote_id="r2", http_status=200)  # sent
        elif n == 2:
            queue.reject(lease.id, token(lease), error_kind="k", error="e")  # rejected
        elif n == 3:
            queue.reject(lease.id, token(lease), error_kind="k", error="e")
            queue.mark_failed(lease.id, "/failed/3")
        # n == 4 stays in flight
    enqueue(queue, destination="labs", name="lab.pdf")
    clock.advance(60)

    status = queue.status()
    assert status["consents"] == DestinationStatus(
        queued=1,
        retrying=1,
        in_flight=1,
        awaiting_move=2,
        done_today=1,
        failed=1,
        oldest_waiting_seconds=clock.now - oldest.queued_at,  # type: ignore[operator]
        last_success_at=(midnight + timedelta(hours=2, seconds=5)).timestamp(),
    )
    assert status["labs"] == DestinationStatus(
        queued=1,
        retrying=0,
        in_flight=0,
        awaiting_move=0,
        done_today=0,
        failed=0,
        oldest_waiting_seconds=60.0,
        last_success_at=None,
    )
    tomorrow = (midnight + timedelta(days=1, hours=1)).timestamp()
    assert queue.status(now=tomorrow)["consents"].done_today == 0
    assert counts_by_state(queue.path) == {
        "intake": 0,
        "queued": 3,
        "leased": 1,
        "sent": 1,
        "rejected": 1,
        "done": 2,
        "failed": 1,
        "abandoned": 0,
    }


# -- concurrency --------------------------------------------------------------


def test_two_queues_on_one_file_never_claim_the_same_job(queue: Queue, db_path: Path) -> None:
    total = 120
    for n in range(total):
        enqueue(queue, name=f"{n}.pdf")
    other = Queue(db_path)
    start = threading.Barrier(8)

    def worker(q: Queue) -> list[str]:
        start.wait(30)
        ids = []
        while (job := q.claim(lease_seconds=600)) is not None:
            ids.append(job.id)
        return ids

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(worker, q) for q in [queue, other] * 4]
        claimed = [job_id for future in futures for job_id in future.result(60)]
    other.close()
    assert len(claimed) == total
    assert len(set(claimed)) == total
    assert counts_by_state(queue.path)["leased"] == total
    assert sum(e["to_state"] == "leased" for e in queue.events()) == total


def _claim_until_empty(db_path: str, out: str, start: Any) -> None:
    q = Queue(Path(db_path))
    start.wait(30)
    ids = []
    while (job := q.claim(lease_seconds=600)) is not None:
        ids.append(job.id)
        time.sleep(0.002)  # stands in for the delivery, so the processes interleave
    q.close()
    Path(out).write_text("\n".join(ids))


def test_four_processes_claim_every_job_exactly_once(
    queue: Queue, db_path: Path, tmp_path: Path
) -> None:
    total = 200
    made = {enqueue(queue, name=f"{n}.pdf").id for n in range(total)}
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    outs = [tmp_path / f"claimed-{n}.txt" for n in range(4)]
    procs = [
        ctx.Process(target=_claim_until_empty, args=(str(db_path), str(out), start)) for out in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    per_process = [out.read_text().split() for out in outs]
    assert sum(1 for ids in per_process if ids) >= 2  # they really competed
    claimed = [job_id for ids in per_process for job_id in ids]
    assert len(claimed) == total
    assert set(claimed) == made
    assert counts_by_state(queue.path)["leased"] == total
    assert file_intact(db_path)


def test_expire_leases_keeps_the_jobs_a_live_worker_has_in_hand(
    queue: Queue, clock: FakeClock
) -> None:
    held = enqueue(queue, name="a.pdf")
    clock.advance(1)
    dead = enqueue(queue, name="b.pdf")
    held_lease = claim(queue, lease=10)
    dead_lease = claim(queue, lease=10)
    assert (held_lease.id, dead_lease.id) == (held.id, dead.id)
    clock.advance(11)
    assert queue.expire_leases(keep=[held.id, held.id]) == 1
    assert queue.get(held.id) == held_lease  # still leased, its token still good
    after = queue.get(dead.id)
    assert after is not None and after.state is JobState.QUEUED
    assert queue.mark_sent(held.id, token(held_lease), remote_id=None, http_status=200)
