"""The job queue: one SQLite database (WAL) whose ``jobs`` row is the truth of a job.

    intake ─> queued ─claim─> leased ─mark_sent─> sent ─mark_done─> done
      │        ^  ^             │ │
      │        │  └─────────────┘ │ retry_later, release, lease expired
      │        │                  └─reject─> rejected ─mark_failed─> failed
      │        └──────────────────── requeue ──────────────────────────┘
      ├─(bad input)─> rejected
      └─> abandoned (the files stayed in the inbox)

A claim is one ``UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING *`` inside
``BEGIN IMMEDIATE``, so two workers (or two processes) never get the same job.
Every worker call after it names the lease token and is refused (``False``,
nothing changed) once the lease was taken away. Every change of a job appends
its ``events`` row (the audit trail, no PHI) in the same transaction. The
schema, the row types and opening the file live in :mod:`daemon.queue_schema`.

One connection per :class:`Queue`, shared by the daemon's worker threads
under a lock; other processes (CLI commands) open their own.

Longer than the ~400 lines the style asks for, on purpose: every statement that
changes a job's state is here, beside the diagram above, each with its audit
event in the same transaction; split by caller, a reader would have to put the
state machine back together from several files.
"""

from __future__ import annotations

import itertools
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from daemon.errors import InputError
from daemon.gate import GATE
from daemon.names import paired_sidecar_name
from daemon.queue_schema import JOB_COLUMNS, DestinationStatus, Job, JobState, Pause, connect

__all__ = ["SCRUBBED_NAME", "DestinationStatus", "Job", "JobState", "Pause", "Queue"]

_DETAIL_MAX = 300  # event details are short, PHI-free texts we wrote
SCRUBBED_NAME = "(removed by retention)"  # original_name of a job whose files were deleted
# A queued job last changed more than this far in the future was scheduled before
# the wall clock jumped back: it is due now, not after the clock catches up.
CLOCK_SLACK_SECONDS = 60.0


# One destination's queued job due longest: a seek into the partial index jobs_claim.
_CLAIM_CANDIDATE = (
    "SELECT next_attempt_at, created_at, id FROM jobs INDEXED BY jobs_claim"
    " WHERE state = 'queued' AND destination = ? AND next_attempt_at <= ?"
    " ORDER BY next_attempt_at, created_at, id LIMIT 1"
)


def _job(row: sqlite3.Row) -> Job:
    values = {column: row[column] for column in JOB_COLUMNS}  # a newer schema may add columns
    values["state"] = JobState(values["state"])
    values["allow_duplicate"] = bool(values["allow_duplicate"])
    return Job(**values)


def _local_midnight(now: float) -> float:
    day = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


class Queue:
    """The job store. ``clock`` (epoch seconds) is injectable for tests;
    ``readonly`` is for CLI reads (see :meth:`open_readonly`)."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._clock = clock
        self._lock = GATE.lock(reentrant=True)  # held through a commit's fsync (daemon.gate)
        self._conn = connect(self.path, readonly=readonly)

    @classmethod
    def open_readonly(cls, path: Path, *, clock: Callable[[], float] = time.time) -> Self:
        """Never creates or migrates: ``FileNotFoundError`` if the database is
        missing, ``ConfigError`` if it is not a current chartdrop queue."""
        return cls(path, clock=clock, readonly=True)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------

    @contextmanager
    def _write(self, *, redoable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction, its WAL fsync'd at COMMIT (``synchronous=FULL``).

        ``redoable``: a change that start-up recovery makes again from what is
        already durable, when a power loss takes it back (intake -> queued after
        the spool renames, sent -> done and rejected -> failed after the moves):
        it is committed with ``synchronous=NORMAL``, without an fsync of its own.
        The WAL is one sequential log with chained checksums, so the next FULL
        commit (the claim before any send, the final path before any move: every
        step that depends on one of these) fsyncs it too, and a power loss can
        only lose it together with everything committed after it.

        Inside another ``_write`` of the same thread (the lock is held, a
        transaction open), it is part of that transaction: its writes commit or
        roll back with the outer one (``*_many`` methods batch steps this way).
        """
        with self._lock:
            if self._conn.in_transaction:  # only ours can be open while we hold the lock
                yield self._conn
                return
            if redoable:
                self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    if redoable:  # no fsync to wait for
                        self._conn.execute("COMMIT")
                    else:
                        with GATE.disk_wait():  # its fsync (daemon.gate)
                            self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            finally:
                if redoable:
                    self._conn.execute("PRAGMA synchronous = FULL")

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        job: Job,
        from_state: JobState | None,
        detail: str | None,
        *,
        outcome: bool = False,
    ) -> None:
        """Append the audit row for ``job``'s new state: PHI-free columns only.

        ``outcome``: this change is the result of an attempt or a final state
        (sent, retry, rejected, done, failed), so the row carries the job's HTTP
        status, remote id (Redox log ID / FHIR resource id) and error kind. Other
        rows (claim, release, lease expiry, upload, retention) leave them empty,
        so an old attempt's status is never read as this change's.
        """
        result = (job.http_status, job.remote_id, job.error_kind) if outcome else (None,) * 3
        conn.execute(
            "INSERT INTO events (job_id, at, destination, from_state, to_state, attempt,"
            " http_status, remote_id, error_kind, detail, sha256, size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *(job.id, job.updated_at, job.destination, from_state, job.state, job.attempts),
                *result,
                *(detail[:_DETAIL_MAX] if detail else None, job.sha256, job.size),
            ),
        )

    def _move(
        self,
        job_id: str,
        from_state: JobState,
        to_state: JobState,
        *,
        token: str | None = None,
        detail: str | None = None,
        count_attempt: bool = False,
        outcome: bool = False,
        redoable: bool = False,
        **values: object,
    ) -> Job | None:
        """Move one job ``from_state`` -> ``to_state``, only if it is in
        ``from_state`` (and holds ``token``, if given); set the columns in
        ``values`` and append the event (``outcome``: see :meth:`_event`), in
        one transaction (``redoable``: see :meth:`_write`). ``None`` if the guard
        did not match (and nothing changed)."""
        changes: dict[str, object] = {"state": to_state, "updated_at": self._clock(), **values}
        if from_state is JobState.LEASED and to_state is not JobState.LEASED:
            changes.update(lease_token=None, lease_expires_at=None)
        if not JOB_COLUMNS.issuperset(changes):
            raise ValueError(f"not job columns: {sorted(set(changes) - JOB_COLUMNS)}")
        assignments = ", ".join(f"{column} = ?" for column in changes)
        if count_attempt:
            assignments += ", attempts = attempts + 1"
        where, params = "id = ? AND state = ?", [*changes.values(), job_id, from_state]
        if token is not None:
            where += " AND lease_token = ?"
            params.append(token)
        # Column names were checked against JOB_COLUMNS; every value is bound.
        sql = f"UPDATE jobs SET {assignments} WHERE {where} RETURNING *"  # noqa: S608
        with self._write(redoable=redoable) as conn:
            rows = conn.execute(sql, params).fetchall()
            if not rows:
                return None
            job = _job(rows[0])
            self._event(conn, job, from_state, detail, outcome=outcome)
        return job

    def _intake_row(
        self,
        *,
        destination: str,
        original_name: str,
        sidecar_name: str | None,
        spool_document: str | None,
        spool_sidecar: str | None,
        document_id: str | None = None,
        patient_key: str | None = None,
    ) -> dict[str, object]:
        now = self._clock()
        return {
            "id": uuid.uuid4().hex,
            "destination": destination,
            "state": JobState.INTAKE,
            "attempts": 0,
            "next_attempt_at": now,
            "document_id": document_id or str(uuid.uuid4()),
            "original_name": original_name,
            "sidecar_name": sidecar_name,
            "spool_document": spool_document,
            "spool_sidecar": spool_sidecar,
            "patient_key": patient_key,
            "created_at": now,
            "updated_at": now,
        }

    # -- intake ---------------------------------------------------------------

    def begin_intake(
        self,
        *,
        destination: str,
        original_name: str,
        sidecar_name: str | None,
        spool_document: str | None,
        spool_sidecar: str | None,
        document_id: str | None = None,
    ) -> Job:
        """Commit the row of a hand-over, before the files are renamed into the spool."""
        return self.begin_intake_many(
            [
                {
                    "destination": destination,
                    "original_name": original_name,
                    "sidecar_name": sidecar_name,
                    "spool_document": spool_document,
                    "spool_sidecar": spool_sidecar,
                    "document_id": document_id,
                }
            ]
        )[0]

    def begin_intake_many(self, hand_overs: list[dict[str, Any]]) -> list[Job]:
        """:meth:`begin_intake` for several hand-overs (each a dict of its keyword
        arguments), in one transaction: one commit and one fsync for all the pairs
        a tick of intake takes, every row durable before any of them is renamed."""
        rows = [self._intake_row(**fields) for fields in hand_overs]
        jobs: list[Job] = []
        with self._write() as conn:
            for row in rows:
                columns, marks = ", ".join(row), ", ".join("?" for _ in row)
                sql = f"INSERT INTO jobs ({columns}) VALUES ({marks}) RETURNING *"  # noqa: S608
                job = _job(conn.execute(sql, list(row.values())).fetchall()[0])
                self._event(conn, job, None, None)
                jobs.append(job)
        return jobs

    def complete_intake(
        self, job_id: str, *, sha256: str, size: int, rejection: InputError | None = None
    ) -> Job:
        """intake -> queued (claimable now), or -> rejected with ``rejection``'s kind
        and problems. ``ValueError`` if the job is not in intake.

        Redoable (no fsync of its own, see :meth:`_write`): the files are in the
        spool, fsync'd, so an ``intake`` row that a power loss brings back is
        finished by recovery exactly like this; the claim before the send, or the
        failed/ target before the move, is a FULL commit that makes it durable."""
        if rejection is None:
            now = self._clock()
            job = self._move(
                job_id, JobState.INTAKE, JobState.QUEUED, redoable=True,
                sha256=sha256, size=size, next_attempt_at=now, queued_at=now,
            )  # fmt: skip
        else:
            kind, error = rejection.kind, rejection.text
            job = self._move(
                job_id, JobState.INTAKE, JobState.REJECTED, detail=error, outcome=True,
                redoable=True, sha256=sha256, size=size, error_kind=kind, last_error=error,
            )  # fmt: skip
        if job is None:
            raise ValueError(f"job {job_id} is not in intake")
        return job

    def complete_intake_many(
        self, completions: list[tuple[str, str, int, InputError | None]]
    ) -> list[Job]:
        """:meth:`complete_intake` for several jobs, each ``(job_id, sha256, size,
        rejection)``, in one (redoable) transaction: all of them or none."""
        with self._write(redoable=True):
            return [
                self.complete_intake(job_id, sha256=digest, size=size, rejection=rejection)
                for job_id, digest, size, rejection in completions
            ]

    def abandon_intake(self, job_id: str, detail: str) -> None:
        """intake -> abandoned: the files stayed in the inbox (``ValueError`` if
        the job is not in intake)."""
        now = self._clock()
        job = self._move(
            job_id, JobState.INTAKE, JobState.ABANDONED, detail=detail,
            last_error=detail, finished_at=now,
        )  # fmt: skip
        if job is None:
            raise ValueError(f"job {job_id} is not in intake")

    # -- workers --------------------------------------------------------------

    def claim(
        self, *, lease_seconds: float, exclude_destinations: Collection[str] = ()
    ) -> Job | None:
        """Lease the queued job that has been due longest, or ``None``.

        ``next_attempt_at`` is wall-clock time (it must survive a restart). A job
        whose row was last changed "in the future" was scheduled before the clock
        was set back, and is due now: a clock jump never stalls the queue.

        Every step is an index seek, so a claim costs the same with 100 or 100,000
        rows, and with 100,000 jobs in backoff or of an excluded (paused)
        destination (``tests/test_queue_scale.py`` checks the plans): first the
        rows changed in the future are made due now (normally none: one seek);
        then, for each destination that has queued jobs (found by seeking past
        the previous one, not by reading them all), its job due longest.
        """
        now = self._clock()
        excluded = set(exclude_destinations)
        token = secrets.token_hex(16)
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET next_attempt_at = MIN(next_attempt_at, ?), updated_at = ?"
                " WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_queued_updated"
                " WHERE state = 'queued' AND updated_at > ?)",
                (now, now, now + CLOCK_SLACK_SECONDS),
            )
            best: tuple[float, float, str] | None = None
            for destination in self._queued_destinations(conn):
                if destination in excluded:
                    continue
                row = conn.execute(_CLAIM_CANDIDATE, (destination, now)).fetchone()
                if row is not None and (best is None or tuple(row) < best):
                    best = (row[0], row[1], row[2])
            if best is None:
                return None
            rows = conn.execute(
                "UPDATE jobs SET state = ?, lease_token = ?, lease_expires_at = ?, updated_at = ?"
                " WHERE id = ? AND state = ? RETURNING *",
                (JobState.LEASED, token, now + lease_seconds, now, best[2], JobState.QUEUED),
            ).fetchall()
            job = _job(rows[0])
            self._event(conn, job, JobState.QUEUED, None)
        return job

    @staticmethod
    def _queued_destinations(conn: sqlite3.Connection) -> Iterator[str]:
        """The destinations that have queued jobs: one index seek each (a loose
        index scan), however many jobs each has."""
        sql = (
            "SELECT MIN(destination) FROM jobs INDEXED BY jobs_claim"
            " WHERE state = 'queued' AND destination > ?"
        )
        last = ""
        while True:
            (destination,) = conn.execute(sql, (last,)).fetchone()
            if destination is None:
                return
            yield destination
            last = destination

    def record_upload(self, job_id: str, token: str, blob_uri: str) -> bool:
        """Keep the URI of the uploaded blob; the job stays leased."""
        job = self._move(
            job_id, JobState.LEASED, JobState.LEASED, token=token, detail="blob uploaded",
            blob_uri=blob_uri,
        )  # fmt: skip
        return job is not None

    def mark_sent(
        self,
        job_id: str,
        token: str,
        *,
        remote_id: str | None,
        http_status: int,
        patient_key: str | None = None,
    ) -> bool:
        """leased -> sent: the remote side accepted it (the attempt counts).
        ``patient_key``: whom it was sent for (see :meth:`earlier_duplicate`)."""
        job = self.record_sent(
            job_id, token, remote_id=remote_id, http_status=http_status, patient_key=patient_key
        )
        return job is not None

    def record_sent(
        self,
        job_id: str,
        token: str,
        *,
        remote_id: str | None,
        http_status: int,
        patient_key: str | None = None,
        final_path: str | None = None,
    ) -> Job | None:
        """:meth:`mark_sent`, returning the job as committed (``None``: the lease was
        lost, nothing changed). ``final_path``: the target of the move to done/,
        chosen before the send was recorded, committed in the same transaction
        (what :meth:`set_final_path` would commit just after: one fsync fewer);
        it must be durable before the rename, and is."""
        extra = {} if final_path is None else {"final_path": final_path}
        return self._move(
            job_id, JobState.LEASED, JobState.SENT, token=token, count_attempt=True, outcome=True,
            redoable=False,  # the one record of a delivery: durable before anything follows
            remote_id=remote_id, http_status=http_status, sent_at=self._clock(),
            error_kind=None, last_error=None, patient_key=patient_key, **extra,
        )  # fmt: skip

    def retry_later(
        self,
        job_id: str,
        token: str,
        *,
        delay: float,
        error_kind: str,
        error: str,
        http_status: int | None = None,
        remote_id: str | None = None,
    ) -> bool:
        """leased -> queued, due ``delay`` seconds from now (the attempt counts).
        ``remote_id``: the log ID the remote side gave this failed attempt, if any."""
        job = self._move(
            job_id, JobState.LEASED, JobState.QUEUED, token=token, count_attempt=True,
            outcome=True, detail=error, next_attempt_at=self._clock() + delay,
            error_kind=error_kind, last_error=error, http_status=http_status, remote_id=remote_id,
        )  # fmt: skip
        return job is not None

    def reject(
        self,
        job_id: str,
        token: str,
        *,
        error_kind: str,
        error: str,
        http_status: int | None = None,
        remote_id: str | None = None,
    ) -> bool:
        """leased -> rejected: a permanent failure (the attempt counts). ``remote_id``:
        the log ID the remote side gave the refusal, if any."""
        job = self._move(
            job_id, JobState.LEASED, JobState.REJECTED, token=token, count_attempt=True,
            outcome=True, detail=error, error_kind=error_kind, last_error=error,
            http_status=http_status, remote_id=remote_id,
        )  # fmt: skip
        return job is not None

    def release(self, job_id: str, token: str) -> bool:
        """leased -> queued, no attempt counted (shutdown, paused destination)."""
        job = self._move(job_id, JobState.LEASED, JobState.QUEUED, token=token, detail="released")
        return job is not None

    def _unlease(self, condition: str, params: list[object], detail: str) -> int:
        sql = (
            "UPDATE jobs SET state = ?, lease_token = NULL, lease_expires_at = NULL,"  # noqa: S608
            f" updated_at = ? WHERE state = ?{condition} RETURNING *"
        )
        with self._write() as conn:
            rows = conn.execute(sql, [JobState.QUEUED, self._clock(), JobState.LEASED, *params])
            jobs = [_job(row) for row in rows.fetchall()]
            for job in jobs:
                self._event(conn, job, JobState.LEASED, detail)
        return len(jobs)

    def expire_leases(self, *, keep: Collection[str] = ()) -> int:
        """Requeue the jobs whose lease ran out (a dead or hung worker); how many.
        ``keep``: jobs a live worker of this daemon still has in hand (a send slower
        than the lease, its answer not in yet): never requeued from under it, or
        another worker would send them again after the first send succeeded."""
        kept = list(dict.fromkeys(keep))
        marks = ", ".join("?" for _ in kept)
        condition = " AND lease_expires_at < ?" + (f" AND id NOT IN ({marks})" if kept else "")
        return self._unlease(condition, [self._clock(), *kept], "lease expired")

    def reset_all_leases(self) -> int:
        """At start-up every lease is stale (the daemon holds the only lock); how many."""
        return self._unlease("", [], "lease reset at start-up")

    def set_final_path(self, job_id: str, final_path: str) -> bool:
        """Record the chosen target of a pending move (sent or rejected) before
        the rename, so a move a crash interrupted resumes to the same place.
        Not a state change: no event (the path is PHI anyway)."""
        sql = "UPDATE jobs SET final_path = ?, updated_at = ? WHERE id = ? AND state IN (?, ?)"
        params = (final_path, self._clock(), job_id, JobState.SENT, JobState.REJECTED)
        with self._write() as conn:
            return conn.execute(sql, params).rowcount == 1

    def mark_done(self, job_id: str, final_path: str) -> bool:
        """sent -> done: the files are in done/ (moved to the durable ``final_path``,
        folders fsync'd). Redoable (see :meth:`_write`): a ``sent`` job that a power
        loss brings back is finished at start-up as the move it is (the document is
        at its final path already), never sent again."""
        now = self._clock()
        job = self._move(
            job_id, JobState.SENT, JobState.DONE, outcome=True, final_path=final_path,
            finished_at=now, redoable=True,
        )  # fmt: skip
        return job is not None

    def mark_failed(self, job_id: str, final_path: str) -> bool:
        """rejected -> failed: the files are in failed/ (redoable, as :meth:`mark_done`)."""
        now = self._clock()
        job = self._move(
            job_id, JobState.REJECTED, JobState.FAILED, outcome=True, final_path=final_path,
            finished_at=now, redoable=True,
        )  # fmt: skip
        return job is not None

    # -- retention ------------------------------------------------------------

    def done_before(self, cutoff: float, *, limit: int = 500) -> list[Job]:
        """Done jobs that finished before ``cutoff`` and still name their files
        (not yet through retention), oldest first."""
        sql = (
            "SELECT * FROM jobs WHERE state = 'done' AND finished_at < ?"
            " AND final_path IS NOT NULL ORDER BY finished_at, id LIMIT ?"
        )
        with self._lock:
            rows = self._conn.execute(sql, (cutoff, limit)).fetchall()
        return [_job(row) for row in rows]

    def done_names_in(self, folder: str) -> set[str]:
        """Names (document and sidecar) that done jobs not yet through retention
        have in ``folder`` (PHI: for comparing with a listing, never for logs)."""
        prefix = folder.rstrip("/") + "/"
        sql = (
            "SELECT final_path, original_name, sidecar_name FROM jobs WHERE state = ?"
            " AND final_path IS NOT NULL AND substr(final_path, 1, ?) = ?"
        )
        with self._lock:
            rows = self._conn.execute(sql, (JobState.DONE, len(prefix), prefix)).fetchall()
        names: set[str] = set()
        for final_path, original, sidecar in rows:
            name = final_path[len(prefix) :]
            names.add(name)
            if sidecar:
                names.add(paired_sidecar_name(name, original, sidecar))
        return names

    def scrub_done(self, job_id: str, detail: str) -> bool:
        """Retention: a done job keeps only non-PHI facts (ids, destination, hashes,
        size, times, HTTP status, remote id). File names and paths are replaced
        (``original_name`` by :data:`SCRUBBED_NAME`, the rest by NULL) and an event
        with ``detail`` is appended. False if the job is not done."""
        job = self._move(
            job_id, JobState.DONE, JobState.DONE, detail=detail, original_name=SCRUBBED_NAME,
            sidecar_name=None, spool_document=None, spool_sidecar=None, final_path=None,
            blob_uri=None, last_error=None,
        )  # fmt: skip
        return job is not None

    # -- retention of failed rows and events ----------------------------------

    def failed_before(self, cutoff: float, *, limit: int = 500) -> list[Job]:
        """Failed and abandoned jobs that finished before ``cutoff`` and still name
        their files, oldest first."""
        sql = (
            "SELECT * FROM jobs WHERE state IN (?, ?) AND finished_at < ?"
            " AND original_name != ? ORDER BY finished_at, id LIMIT ?"
        )
        params = (JobState.FAILED, JobState.ABANDONED, cutoff, SCRUBBED_NAME, limit)
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_job(row) for row in rows]

    def scrub_failed(self, job: Job, detail: str) -> bool:
        """Retention: a failed or abandoned job's file names and paths are removed
        from its row (the files in failed/ or the inbox are not touched; the error
        text, PHI-free by construction, stays). False if its state changed."""
        scrubbed = self._move(
            job.id, job.state, job.state, detail=detail, original_name=SCRUBBED_NAME,
            sidecar_name=None, spool_document=None, spool_sidecar=None, final_path=None,
            blob_uri=None,
        )  # fmt: skip
        return scrubbed is not None

    def prune_events(self, cutoff: float, *, limit: int = 5000) -> int:
        """Delete up to ``limit`` audit rows older than ``cutoff`` (keep_events_days);
        the number deleted. Rows at or after the cutoff stay undeletable."""
        with self._write() as conn:
            conn.execute("UPDATE events_prune_before SET at = MAX(at, ?)", (cutoff,))
            cursor = conn.execute(
                "DELETE FROM events WHERE id IN"
                " (SELECT id FROM events WHERE at < ? ORDER BY id LIMIT ?)",
                (cutoff, limit),
            )
            return cursor.rowcount

    # -- duplicates -------------------------------------------------------------

    def earlier_duplicate(
        self, job: Job, *, patient_key: str, since: float
    ) -> tuple[str, float] | None:
        """(id, sent_at) of the latest other job with ``job``'s destination and
        sha256 sent for ``patient_key`` at or after ``since``, or None."""
        sql = (
            "SELECT id, sent_at FROM jobs WHERE destination = ? AND sha256 = ? AND id != ?"
            " AND patient_key = ? AND sent_at >= ? AND state IN (?, ?)"
            " ORDER BY sent_at DESC LIMIT 1"
        )
        params = (job.destination, job.sha256, job.id, patient_key, since)
        with self._lock:
            row = self._conn.execute(sql, (*params, JobState.SENT, JobState.DONE)).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def allow_duplicate(self, job_id: str) -> bool:
        """Let this job through the duplicate hold once (for ``chartdrop retry
        --allow-duplicate``, which then requeues it); audited. False if no such job."""
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE jobs SET allow_duplicate = 1, updated_at = ? WHERE id = ? RETURNING *",
                (self._clock(), job_id),
            ).fetchall()
            if not rows:
                return False
            job = _job(rows[0])
            self._event(conn, job, job.state, "duplicate allowed by the admin")
        return True

    def record_duplicate_sent(self, job_id: str, token: str, earlier_id: str) -> bool:
        """Audit: this leased job is a duplicate of ``earlier_id`` and goes out anyway."""
        job = self._move(
            job_id, JobState.LEASED, JobState.LEASED, token=token,
            detail=f"duplicate of job {earlier_id}, sent as allowed",
        )  # fmt: skip
        return job is not None

    # -- reads ----------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or with this unique id prefix (6 characters or more)."""
        key = job_id.strip().lower()
        with self._lock:
            rows = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (key,)).fetchall()
            if not rows and len(key) >= 6 and all(c in "0123456789abcdef" for c in key):
                rows = self._conn.execute(
                    "SELECT * FROM jobs WHERE id >= ? AND id < ? LIMIT 2", (key, key + "g")
                ).fetchall()
        return _job(rows[0]) if len(rows) == 1 else None

    def jobs(
        self, *, states: Collection[str] = (), destination: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, newest first. ``ValueError`` for a state that does not exist."""
        wanted = sorted({JobState(state) for state in states})
        where, params = ["1"], list[object](wanted)
        if wanted:
            where.append(f"state IN ({', '.join('?' for _ in wanted)})")
        if destination is not None:
            where.append("destination = ?")
            params.append(destination)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id LIMIT ?"  # noqa: S608
        with self._lock:
            rows = self._conn.execute(sql, [*params, limit]).fetchall()
        return [_job(row) for row in rows]

    def events(
        self, job_id: str | None = None, *, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Audit rows, oldest first, of one job and/or from ``since`` on."""
        where, params = ["1"], list[object]()
        if job_id is not None:  # conditions spelled out, so the indexes are used
            where.append("job_id = ?")
            params.append(job_id)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id"  # noqa: S608
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [dict(row) for row in rows]

    def audit_rows(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        destination: str | None = None,
        sha256: str | None = None,
        batch: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Audit rows (events with their job's fixed DocumentID), oldest first, with
        ``since <= at < until``; with ``sha256``, every row of the jobs of that
        document. Read in batches, so a long export holds no lock."""
        where, params = ["e.id > ?"], list[object]()
        for condition, value in (
            ("e.at >= ?", since),
            ("e.at < ?", until),
            ("e.destination = ?", destination),
            ("j.sha256 = ?", sha256.lower() if sha256 else None),  # all of that job's rows
        ):
            if value is not None:
                where.append(condition)
                params.append(value)
        sql = (
            "SELECT e.*, j.document_id FROM events e JOIN jobs j ON j.id = e.job_id"  # noqa: S608
            f" WHERE {' AND '.join(where)} ORDER BY e.id LIMIT ?"
        )
        last = 0
        while True:
            with self._lock:
                rows = self._conn.execute(sql, [last, *params, batch]).fetchall()
            for row in rows:
                yield dict(row)
            if len(rows) < batch:
                return
            last = rows[-1]["id"]

    def status(self, *, now: float | None = None) -> dict[str, DestinationStatus]:
        """Per destination that has jobs: the numbers ``chartdrop status`` shows.

        Every number comes from an index, never the table: the counts from the
        (destination, state) index (read, not the rows), retrying from the claim's
        partial index, done today from a range of ``jobs_done_finished``, the
        oldest waiting job and the last success from one seek per destination.
        Under a second with 100,000 rows (``scripts/bench_queue.py`` measures it).
        """
        now = self._clock() if now is None else now
        with self._lock, self._snapshot() as conn:
            counts: dict[str, dict[str, int]] = {}
            for dest, state, n in conn.execute(
                "SELECT destination, state, COUNT(*) FROM jobs GROUP BY destination, state"
            ):
                counts.setdefault(dest, {})[state] = n
            retrying = dict(
                conn.execute(
                    "SELECT destination, COUNT(*) FROM jobs INDEXED BY jobs_claim"
                    " WHERE state = 'queued' AND attempts > 0 GROUP BY destination"
                ).fetchall()
            )
            done_today = dict(
                conn.execute(
                    "SELECT destination, COUNT(*) FROM jobs INDEXED BY jobs_done_finished"
                    " WHERE state = 'done' AND finished_at >= ? GROUP BY destination",
                    (_local_midnight(now),),
                ).fetchall()
            )
            result: dict[str, DestinationStatus] = {}
            for dest in sorted(counts):
                by_state = counts[dest]
                oldest = [
                    conn.execute(
                        "SELECT MIN(queued_at) FROM jobs WHERE destination = ? AND state = ?",
                        (dest, state),
                    ).fetchone()[0]
                    for state in (JobState.QUEUED, JobState.LEASED)
                ]
                waiting = [t for t in oldest if t is not None]
                (last,) = conn.execute(
                    "SELECT MAX(sent_at) FROM jobs WHERE destination = ?", (dest,)
                ).fetchone()
                queued = by_state.get(JobState.QUEUED, 0)
                result[dest] = DestinationStatus(
                    queued=queued - retrying.get(dest, 0),
                    retrying=retrying.get(dest, 0),
                    in_flight=by_state.get(JobState.LEASED, 0),
                    awaiting_move=by_state.get(JobState.SENT, 0)
                    + by_state.get(JobState.REJECTED, 0),
                    done_today=done_today.get(dest, 0),
                    failed=by_state.get(JobState.FAILED, 0),
                    oldest_waiting_seconds=max(0.0, now - min(waiting)) if waiting else None,
                    last_success_at=last,
                )
        return result

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that must agree (one WAL snapshot); the caller holds the lock."""
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    # -- pauses ---------------------------------------------------------------

    def set_pause(
        self, destination: str, kind: str, reason: str, until: float | None = None
    ) -> None:
        """Record (or update) why ``destination`` is paused; ``since`` is kept
        from the first time this kind of pause was set."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO pauses (destination, kind, reason, since, until)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (destination, kind)"
                " DO UPDATE SET reason = excluded.reason, until = excluded.until",
                (destination, kind, reason[:_DETAIL_MAX], self._clock(), until),
            )

    def clear_pause(self, destination: str, kind: str | None = None) -> bool:
        """Lift one kind of pause (or all of them) from ``destination``."""
        sql, params = "DELETE FROM pauses WHERE destination = ?", [destination]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        with self._write() as conn:
            return conn.execute(sql, params).rowcount > 0

    def clear_all_pauses(self) -> int:
        """At start-up: pauses are re-learnt by the running daemon."""
        with self._write() as conn:
            return conn.execute("DELETE FROM pauses").rowcount

    def pauses(self) -> list[Pause]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT destination, kind, reason, since, until FROM pauses"
                " ORDER BY destination, since"
            ).fetchall()
        return [Pause(*row) for row in rows]

    def make_due(self, destination: str) -> int:
        """After an outage ends: the destination's waiting jobs are due again, in
        the order they were queued (their backoff was the outage's, not theirs)."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE jobs SET next_attempt_at = COALESCE(queued_at, created_at)"
                " WHERE destination = ? AND state = ?"
                " AND next_attempt_at > COALESCE(queued_at, created_at)",
                (destination, JobState.QUEUED),
            ).rowcount

    def waited_seconds(self, job_id: str, *, now: float, gap_cap: float) -> float:
        """How long ``job_id`` has waited since it was (re)queued, for giving up.

        The sum of the gaps between its audit events (and from the last one to
        ``now``), each counted between 0 and ``gap_cap``: a wall clock set back
        adds nothing and one set forward adds at most ``gap_cap``.
        """
        sql = "SELECT at, from_state, to_state FROM events WHERE job_id = ? ORDER BY id"
        with self._lock:
            rows = self._conn.execute(sql, (job_id,)).fetchall()
        start = 0
        for i, (_at, from_state, to_state) in enumerate(rows):
            if to_state == JobState.QUEUED and from_state in (JobState.INTAKE, JobState.FAILED):
                start = i
        times = [float(at) for at, _from, _to in rows[start:]] + [now]
        return sum(min(max(b - a, 0.0), gap_cap) for a, b in itertools.pairwise(times))

    # -- monitoring and retry (status --check, metrics, chartdrop retry) ------

    def failed_since(self, since: float) -> dict[str, int]:
        """Per destination: jobs that went to failed/ at or after ``since``."""
        sql = (
            "SELECT destination, COUNT(*) FROM jobs WHERE state = ? AND finished_at >= ?"
            " GROUP BY destination"
        )
        with self._lock:
            rows = self._conn.execute(sql, (JobState.FAILED, since)).fetchall()
        return {dest: int(n) for dest, n in rows}

    def counts_by_destination(self) -> dict[tuple[str, str], int]:
        """(destination, state) -> number of jobs, for metrics."""
        sql = "SELECT destination, state, COUNT(*) FROM jobs GROUP BY destination, state"
        with self._lock:
            rows = self._conn.execute(sql).fetchall()
        return {(dest, state): int(n) for dest, state, n in rows}

    def failed_jobs(
        self, *, destination: str | None = None, since: float | None = None
    ) -> list[Job]:
        """Failed jobs, oldest first (``chartdrop retry --failed``)."""
        where, params = ["state = ?"], list[object]([JobState.FAILED])
        if destination is not None:
            where.append("destination = ?")
            params.append(destination)
        if since is not None:
            where.append("finished_at >= ?")
            params.append(since)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY finished_at, id"  # noqa: S608
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_job(row) for row in rows]

    def find_prefix(self, prefix: str, *, limit: int = 10) -> list[Job]:
        """Jobs whose id starts with ``prefix`` (hex), for short ids on the command line."""
        key = prefix.strip().lower()
        if not key or any(c not in "0123456789abcdef-" for c in key):
            return []
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                (key, key + "g", limit),
            ).fetchall()
        return [_job(row) for row in rows]

    # The failed jobs :meth:`unknown_outcome_failures` and :meth:`unknown_outcome_sizes`
    # look among. The unary + keeps SQLite off jobs_destination_sha256 (every hashed job
    # of the destination, scanned at each intake): it seeks (destination, state).
    _UNKNOWN_OUTCOME = (
        "state = ? AND destination = ? AND +sha256 IS NOT NULL AND +sha256 != ''"
        " AND (error_kind = 'unknown_outcome' OR EXISTS (SELECT 1 FROM events e"
        " WHERE e.job_id = j.id AND e.error_kind = 'unknown_outcome'))"
    )

    def unknown_outcome_failures(self, destination: str, size: int) -> list[Job]:
        """Failed jobs of ``destination`` with a file of ``size`` bytes, newest first,
        whose tries ended at least once without knowing whether it arrived (so it may
        have been filed): a copy moved back by hand must reuse their DocumentID."""
        sql = (
            f"SELECT * FROM jobs j WHERE {self._UNKNOWN_OUTCOME} AND size = ?"  # noqa: S608
            " ORDER BY finished_at DESC LIMIT 20"
        )
        with self._lock:
            rows = self._conn.execute(sql, (JobState.FAILED, destination, size)).fetchall()
        return [_job(row) for row in rows]

    def unknown_outcome_sizes(self, destination: str, sizes: Collection[int]) -> set[int]:
        """Which of ``sizes`` :meth:`unknown_outcome_failures` finds a job of: one
        query for a batch of intake's documents (it nearly always finds none)."""
        found: set[int] = set()
        wanted = list(dict.fromkeys(sizes))
        for start in range(0, len(wanted), 500):  # under SQLite's limit on parameters
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            sql = (
                f"SELECT DISTINCT size FROM jobs j WHERE {self._UNKNOWN_OUTCOME}"  # noqa: S608
                f" AND size IN ({marks})"
            )
            with self._lock:
                rows = self._conn.execute(sql, (JobState.FAILED, destination, *chunk)).fetchall()
            found.update(row[0] for row in rows)
        return found

    def requeue(
        self,
        job_id: str,
        *,
        spool_document: str,
        spool_sidecar: str | None,
        sidecar_name: str | None,
        patient_key: str | None = None,
    ) -> bool:
        """failed -> queued from scratch (``chartdrop retry``), same document_id. The
        caller has moved the files back into the spool already; a sidecar staff added
        in failed/ since (a missing-sidecar failure) is recorded, and whom the
        sidecar as it is now names (``patient_key``)."""
        now = self._clock()
        job = self._move(
            job_id, JobState.FAILED, JobState.QUEUED, detail="requeued by chartdrop retry",
            attempts=0, next_attempt_at=now, queued_at=now, spool_document=spool_document,
            spool_sidecar=spool_sidecar, sidecar_name=sidecar_name, final_path=None,
            patient_key=patient_key,
            sent_at=None, finished_at=None, blob_uri=None, remote_id=None, http_status=None,
            last_error=None, error_kind=None,
        )  # fmt: skip
        return job is not None

    def failed_with_document_id(self, document_id: str, *, exclude: str) -> list[Job]:
        """Failed jobs carrying ``document_id`` (other than ``exclude``)."""
        sql = (  # the state as a literal: the partial index jobs_failed_document is used
            "SELECT * FROM jobs INDEXED BY jobs_failed_document"
            " WHERE document_id = ? AND state = 'failed' AND id != ?"
        )
        with self._lock:
            rows = self._conn.execute(sql, (document_id, exclude)).fetchall()
        return [_job(row) for row in rows]

    def attempt_counts(self) -> dict[tuple[str, str], int]:
        """(destination, result) -> send attempts that ended that way, from the audit
        trail: ``sent`` (leased -> sent), ``retry`` (leased -> queued with an error),
        ``rejected`` (leased -> rejected), for metrics."""
        sql = """
            SELECT destination,
                   CASE WHEN to_state = 'sent' THEN 'sent'
                        WHEN to_state = 'rejected' THEN 'rejected' ELSE 'retry' END,
                   COUNT(*)
            FROM events WHERE from_state = 'leased'
              AND (to_state IN ('sent', 'rejected')
                   OR (to_state = 'queued' AND error_kind IS NOT NULL))
            GROUP BY 1, 2
        """
        with self._lock:
            rows = self._conn.execute(sql).fetchall()
        return {(dest, result): int(n) for dest, result, n in rows}
