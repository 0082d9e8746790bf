"""The queue stays fast when it is big: a claim and `status` do index seeks, not scans.

Timing-free: the query plans (``EXPLAIN QUERY PLAN`` of every statement a real
claim or status runs, captured with SQLite's trace callback) and the number of
SQLite VM steps, counted with a progress handler, at 100 and 20,000 rows.
Bulk rows are inserted with one SQL statement (20,000 API calls would take
a minute); every claim and status goes through the real :class:`Queue`.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.queue import CLOCK_SLACK_SECONDS, Job, JobState, Queue, _local_midnight

T0 = 1_790_000_000.0
BIG = 20_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> Iterator[Queue]:
    with Queue(tmp_path / "queue.db", clock=clock) as q:
        yield q


def fill(
    q: Queue,
    n: int,
    *,
    destination: str,
    state: JobState = JobState.QUEUED,
    due_in: float = 0.0,
    attempts: int = 0,
    finished_at: float | None = None,
) -> None:
    """``n`` rows of ``destination`` in ``state``, due ``due_in`` seconds after T0."""
    sql = """
        WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?)
        INSERT INTO jobs (id, destination, state, attempts, next_attempt_at, document_id,
                          original_name, created_at, queued_at, updated_at, sent_at, finished_at)
        SELECT lower(hex(randomblob(16))), ?, ?, ?, ? + i * 0.001, lower(hex(randomblob(16))),
               'bulk.pdf', ? - 3600 + i * 0.001, ? - 3600 + i * 0.001, ?, ?, ?
        FROM k
    """
    sent = finished_at if state is JobState.DONE else None
    with q._write() as conn:
        conn.execute(
            sql, (n, destination, state, attempts, T0 + due_in, T0, T0, T0, sent, finished_at)
        )


def statements_of(q: Queue, action: Callable[[], object]) -> list[str]:
    """Every SQL statement ``action`` runs on the queue's connection (values expanded)."""
    seen: list[str] = []
    q._conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        q._conn.set_trace_callback(None)
    return [s for s in seen if s.lstrip().upper().startswith(("SELECT", "UPDATE", "WITH"))]


def plan(q: Queue, sql: str) -> list[str]:
    return [row[3] for row in q._conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()]


def vm_steps(q: Queue, action: Callable[[], object]) -> int:
    """SQLite VM instructions (in hundreds) ``action`` costs: work, without a stopwatch."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    q._conn.set_progress_handler(tick, 100)
    try:
        action()
    finally:
        q._conn.set_progress_handler(None, 0)
    return count[0]


def big_outage_queue(q: Queue) -> None:
    """An outage: BIG jobs in backoff, BIG due for a paused destination, one due job."""
    fill(q, BIG, destination="consents", due_in=3600, attempts=3)
    fill(q, BIG, destination="gateway", due_in=-60)
    fill(q, BIG, destination="letters", state=JobState.DONE, finished_at=T0 - 60)
    fill(q, 1, destination="labs", due_in=-1)


def test_a_claim_plans_only_index_seeks_in_a_big_outage_queue(queue: Queue) -> None:
    big_outage_queue(queue)
    claimed: list[Job | None] = []
    sqls = statements_of(
        queue,
        lambda: claimed.append(queue.claim(lease_seconds=60, exclude_destinations={"gateway"})),
    )
    assert claimed[0] is not None and claimed[0].destination == "labs"
    details = [d for sql in sqls for d in plan(queue, sql)]
    assert len(sqls) >= 4 and details  # the destinations' seeks and the claim itself
    assert not [d for d in details if "SCAN" in d or "TEMP B-TREE" in d], details
    # a search on the state alone would read every queued row
    assert not [d for d in details if "(state=?)" in d], details
    assert any("jobs_claim" in d for d in details)


def test_a_claim_costs_the_same_with_100_or_60000_rows(tmp_path: Path, clock: Clock) -> None:
    def cost(q: Queue) -> int:
        steps = vm_steps(q, lambda: q.claim(lease_seconds=60, exclude_destinations={"gateway"}))
        return steps

    with Queue(tmp_path / "small.db", clock=clock) as small:
        fill(small, 33, destination="consents", due_in=3600, attempts=3)
        fill(small, 33, destination="gateway", due_in=-60)
        fill(small, 1, destination="labs", due_in=-1)
        small_cost = cost(small)
        assert small.status()["labs"].in_flight == 1
    with Queue(tmp_path / "big.db", clock=clock) as big:
        big_outage_queue(big)
        big_cost = cost(big)
        assert big.status()["labs"].in_flight == 1
        # nothing due but the paused destination's: still no reading of the backlog
        nothing_cost = cost(big)
        assert big.claim(lease_seconds=60, exclude_destinations={"gateway"}) is None
    assert big_cost <= 2 * small_cost + 5, (small_cost, big_cost)
    assert nothing_cost <= 2 * small_cost + 5, (small_cost, nothing_cost)


def test_a_clock_set_back_still_claims_the_future_rows_with_seeks(
    queue: Queue, clock: Clock
) -> None:
    fill(queue, BIG, destination="consents", due_in=3600, attempts=3)
    clock.now = T0 - 86_400  # rows were last changed "a day in the future"
    sqls = statements_of(queue, lambda: queue.claim(lease_seconds=60))
    assert queue.status()["consents"].in_flight == 1
    details = [d for sql in sqls for d in plan(queue, sql)]
    assert not [d for d in details if "SCAN" in d or "(state=?)" in d], details
    # once made due, they stay due: the next claims are plain seeks again
    assert vm_steps(queue, lambda: queue.claim(lease_seconds=60)) < 100
    assert queue.status()["consents"].in_flight == 2


def test_the_note_tidy_up_after_a_delivery_seeks_the_failed_rows(
    queue: Queue, clock: Clock
) -> None:
    fill(queue, BIG, destination="consents", state=JobState.FAILED, finished_at=T0 - 60)
    sqls = statements_of(queue, lambda: queue.failed_with_document_id("d", exclude="x"))
    details = [d for sql in sqls for d in plan(queue, sql)]
    assert details and not [d for d in details if "SCAN" in d], details
    assert any("jobs_failed_document" in d for d in details), details
    assert vm_steps(queue, lambda: queue.failed_with_document_id("d", exclude="x")) < 5


def test_status_reads_indexes_never_the_table(queue: Queue, clock: Clock) -> None:
    big_outage_queue(queue)
    fill(queue, 5, destination="labs", state=JobState.FAILED)
    sqls = statements_of(queue, queue.status)
    details = [d for sql in sqls for d in plan(queue, sql)]
    table_scans = [d for d in details if d.startswith("SCAN") and "COVERING INDEX" not in d]
    assert not table_scans, details
    # index-only (no row read), and never every row of a state (done: 20,000)
    assert all("COVERING INDEX" in d for d in details if d.startswith(("SCAN", "SEARCH")))
    assert not [d for d in details if "(state=?)" in d], details
    status = queue.status()
    assert status["consents"].retrying == BIG and status["consents"].queued == 0
    assert status["gateway"].queued == BIG and status["gateway"].retrying == 0
    assert status["letters"].done_today == BIG
    assert status["labs"].failed == 5 and status["labs"].queued == 1
    assert status["gateway"].oldest_waiting_seconds == pytest.approx(3600 - 0.001, abs=0.01)
    assert status["letters"].last_success_at == pytest.approx(T0 - 60)
    assert status["consents"].last_success_at is None


def test_status_counts_match_a_count_of_the_rows(queue: Queue, clock: Clock) -> None:
    fill(queue, 7, destination="a", due_in=60, attempts=1)
    fill(queue, 5, destination="a", due_in=-5)
    fill(queue, 4, destination="a", state=JobState.DONE, finished_at=T0 - 10 * 86_400)
    fill(queue, 3, destination="b", state=JobState.DONE, finished_at=T0 - 1)
    fill(queue, 2, destination="b", state=JobState.SENT)
    fill(queue, 2, destination="b", state=JobState.REJECTED)
    got = queue.status()
    conn = sqlite3.connect(queue.path)
    try:
        for dest, s in got.items():

            def count(where: str, dest: str = dest) -> int:
                sql = f"SELECT COUNT(*) FROM jobs NOT INDEXED WHERE destination = ? AND {where}"
                return int(conn.execute(sql, (dest,)).fetchone()[0])

            assert s.queued == count("state = 'queued' AND attempts = 0")
            assert s.retrying == count("state = 'queued' AND attempts > 0")
            assert s.awaiting_move == count("state IN ('sent', 'rejected')")
            assert s.done_today == count(f"state = 'done' AND finished_at >= {_local_midnight(T0)}")
    finally:
        conn.close()
    assert (got["a"].queued, got["a"].retrying, got["a"].done_today) == (5, 7, 0)
    assert (got["b"].awaiting_move, got["b"].done_today) == (4, 3)


def test_the_bench_script_runs_and_reports_ratios() -> None:
    """The README's `uv run python scripts/bench_queue.py`, on a small queue."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_queue.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rows", "2000", "--claims", "5", "--cli-repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(("claim", "status"))]
    lines += [line for line in done.stdout.splitlines() if line.startswith("`chartdrop status`")]
    assert len(lines) == 9, done.stdout
    assert "2,000 in backoff, none due" in done.stdout
    assert all(line.rstrip().endswith(tuple("0123456789")) for line in lines)


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from([-100.0, -1.0, 0.0, 5.0, 100.0]),  # due, relative to now
            st.sampled_from([-10.0, 0.0, 30.0, 3600.0]),  # last changed, relative to now
        ),
        max_size=12,
    ),
    excluded=st.sets(st.sampled_from(["a", "b", "c"])),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_claim_takes_the_job_due_longest(
    rows: list[tuple[str, float, float]], excluded: set[str]
) -> None:
    """The seeks per destination pick what one query over the whole table would:
    the queued job due longest (a row changed "in the future", beyond the slack,
    counts as due now), of a destination not excluded."""
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp, Queue(Path(tmp) / "q.db", clock=clock) as q:
        with q._write() as conn:
            for i, (dest, due, changed) in enumerate(rows):
                conn.execute(
                    "INSERT INTO jobs (id, destination, state, next_attempt_at, document_id,"
                    " original_name, created_at, queued_at, updated_at)"
                    " VALUES (?, ?, 'queued', ?, ?, 'x.pdf', ?, ?, ?)",
                    (f"{i:04d}", dest, T0 + due, f"d{i}", T0 - i, T0 - i, T0 + changed),
                )

        def effective(row: tuple[str, float, float]) -> float:
            _dest, due, changed = row
            return min(due, 0.0) if changed > CLOCK_SLACK_SECONDS else due

        candidates = [
            (effective(row), -i, f"{i:04d}")  # created_at = T0 - i
            for i, row in enumerate(rows)
            if row[0] not in excluded and effective(row) <= 0.0
        ]
        job = q.claim(lease_seconds=60, exclude_destinations=excluded)
        if not candidates:
            assert job is None
        else:
            assert job is not None and job.id == min(candidates)[2]
