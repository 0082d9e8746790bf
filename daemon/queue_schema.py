"""The job queue's database file: states, row types, the schema and opening it.

The schema only changes through :func:`migrations` (sqlite-utils migrations,
set ``chartdrop``); append a new migration function, never edit an applied one.
:mod:`daemon.queue` holds the operations on it.

The database enforces what it can by itself: a state outside
:class:`JobState` is refused, a job is leased exactly when it holds a lease
token and expiry, ``document_id`` never changes, and ``events`` (the audit
trail) can only be appended to. ``events`` never holds PHI: no document or
sidecar names, no paths, no sidecar content.
"""

from __future__ import annotations

import enum
import errno
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import ConfigError

if TYPE_CHECKING:  # sqlite-utils is imported only to migrate (its import costs ~0.3 s)
    from sqlite_utils.db import Database
    from sqlite_utils.migrations import Migrations


class JobState(enum.StrEnum):
    """Where a job is. ``DONE``, ``FAILED`` and ``ABANDONED`` are terminal
    (``FAILED`` may be requeued by hand)."""

    INTAKE = "intake"  # row committed, files being renamed from the inbox into the spool
    QUEUED = "queued"  # waiting; claimable once next_attempt_at <= now
    LEASED = "leased"  # a worker holds it (lease_token, lease_expires_at)
    SENT = "sent"  # the remote side accepted it; the move to done/ is pending
    REJECTED = "rejected"  # permanently failed (last_error); the move to failed/ is pending
    DONE = "done"  # files moved to done/ (final_path)
    FAILED = "failed"  # files moved to failed/ (final_path)
    ABANDONED = "abandoned"  # an intake that never completed; files still in the inbox


@dataclass(frozen=True)
class Job:
    """One document (plus its sidecar) for one destination: a ``jobs`` row.

    ``original_name``, ``sidecar_name``, the spool paths and ``final_path`` are
    PHI (file names): never log them. Times are epoch seconds.
    """

    id: str
    destination: str
    state: JobState
    attempts: int
    next_attempt_at: float
    lease_expires_at: float | None
    lease_token: str | None
    document_id: str
    sha256: str | None
    size: int | None
    original_name: str
    sidecar_name: str | None
    spool_document: str | None
    spool_sidecar: str | None
    blob_uri: str | None
    remote_id: str | None
    http_status: int | None
    last_error: str | None
    error_kind: str | None
    final_path: str | None
    created_at: float
    queued_at: float | None
    updated_at: float
    sent_at: float | None
    finished_at: float | None
    # -- duplicates (migration m003) --
    # hash of the patient identifier (not PHI itself): kept at intake and when sent
    patient_key: str | None = None
    allow_duplicate: bool = False  # send even if a duplicate: `chartdrop retry --allow-duplicate`


@dataclass(frozen=True)
class DestinationStatus:
    """One destination's line in ``chartdrop status`` (times in seconds)."""

    queued: int  # waiting, never tried
    retrying: int  # waiting after at least one failed attempt
    in_flight: int  # leased by a worker
    awaiting_move: int  # sent or rejected, the move to done/ or failed/ pending
    done_today: int  # done since local midnight
    failed: int
    oldest_waiting_seconds: float | None  # over queued and leased jobs
    last_success_at: float | None  # epoch seconds of the latest accepted send


@dataclass(frozen=True)
class Pause:
    """Why a destination is not being sent to (or not taking in): a ``pauses`` row.

    ``kind`` is e.g. ``auth`` (the credentials were refused), ``outage`` (the
    circuit is open after repeated transient failures) or ``folder_missing``.
    ``reason`` is a PHI-free text for the admin; ``until`` is when the next
    probe is due (epoch seconds), ``None`` for "until fixed".
    """

    destination: str
    kind: str
    reason: str
    since: float
    until: float | None


MIGRATION_SET = "chartdrop"  # sqlite-utils' migration set (rows of _sqlite_migrations)
_MIGRATION_STEPS: list[Callable[[Database], None]] = []


def _migration(step: Callable[[Database], None]) -> Callable[[Database], None]:
    """Register a migration step (applied in this order, named by the function)."""
    _MIGRATION_STEPS.append(step)
    return step


def migrations() -> Migrations:
    """sqlite-utils' migration set of the queue (imports sqlite-utils: read-write only)."""
    from sqlite_utils.migrations import Migrations

    found = Migrations(MIGRATION_SET)
    for step in _MIGRATION_STEPS:
        found()(step)
    return found


def pending_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations not applied to ``conn``'s database, read with plain
    SQL from sqlite-utils' own table (so read-only CLI commands never import it)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlite_migrations'"
    ).fetchone()
    applied: set[str] = set()
    if exists:
        rows = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (MIGRATION_SET,)
        ).fetchall()
        applied = {str(name) for (name,) in rows}
    return [step.__name__ for step in _MIGRATION_STEPS if step.__name__ not in applied]


BUSY_TIMEOUT_SECONDS = 10.0  # a writer waits this long for another one (health.py counts on it)

_STATES = ", ".join(f"'{state.value}'" for state in JobState)

_CREATE = [
    f"""
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({_STATES})),
        attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at REAL NOT NULL,
        lease_expires_at REAL,
        lease_token TEXT,
        document_id TEXT NOT NULL,
        sha256 TEXT,
        size INTEGER,
        original_name TEXT NOT NULL,
        sidecar_name TEXT,
        spool_document TEXT,
        spool_sidecar TEXT,
        blob_uri TEXT,
        remote_id TEXT,
        http_status INTEGER,
        last_error TEXT,
        error_kind TEXT,
        final_path TEXT,
        created_at REAL NOT NULL,
        queued_at REAL,
        updated_at REAL NOT NULL,
        sent_at REAL,
        finished_at REAL,
        CHECK ((state = 'leased') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL))
    )
    """,
    # Lookups by state (leases, pending moves, metrics); the claim has its own (m003).
    "CREATE INDEX jobs_state_next ON jobs (state, next_attempt_at, created_at)",
    "CREATE INDEX jobs_destination_state ON jobs (destination, state)",
    """
    CREATE TRIGGER jobs_document_id_fixed BEFORE UPDATE OF document_id ON jobs
    WHEN NEW.document_id IS NOT OLD.document_id
    BEGIN SELECT RAISE(ABORT, 'jobs.document_id is fixed when the job is created'); END
    """,
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs (id),
        at REAL NOT NULL,
        destination TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        http_status INTEGER,
        remote_id TEXT,
        error_kind TEXT,
        detail TEXT,
        sha256 TEXT,
        size INTEGER
    )
    """,
    "CREATE INDEX events_job ON events (job_id, id)",
    "CREATE INDEX events_at ON events (at)",
    """
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
    """,
    """
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
    """,
]


@_migration
def m001_create_jobs_and_events(db: Database) -> None:
    # One statement at a time: executescript() would commit the open transaction.
    for statement in _CREATE:
        db.execute(statement)


@_migration
def m002_create_pauses(db: Database) -> None:
    # The daemon's live view of paused destinations, for `chartdrop status`;
    # cleared at every start (the daemon re-learns it).
    db.execute(
        """
        CREATE TABLE pauses (
            destination TEXT NOT NULL,
            kind TEXT NOT NULL,
            reason TEXT NOT NULL,
            since REAL NOT NULL,
            until REAL,
            PRIMARY KEY (destination, kind)
        )
        """
    )


@_migration
def m003_indexes_for_a_big_queue(db: Database) -> None:
    # A claim and `chartdrop status` cost the same with 100 or 100,000 rows
    # (see Queue.claim and Queue.status, and tests/test_queue_scale.py for the
    # plans). Partial indexes (WHERE state = ...) are only written for the rows
    # they cover, so a job's other states pay nothing for them; the queries
    # that use them spell the state as a literal, as SQLite requires.
    for statement in (
        # The claim: per destination, the job due longest. attempts and state make it
        # a covering index for status's "retrying" (SQLite 3.40 does not count the
        # partial index's own WHERE as covering the state column).
        "CREATE INDEX jobs_claim ON jobs"
        " (destination, next_attempt_at, created_at, id, attempts, state) WHERE state = 'queued'",
        # The claim's clock-set-back case: queued rows last changed "in the future".
        "CREATE INDEX jobs_queued_updated ON jobs (updated_at) WHERE state = 'queued'",
        # Status: counts per destination and state, and the oldest waiting job.
        "DROP INDEX jobs_destination_state",
        "CREATE INDEX jobs_destination_state ON jobs (destination, state, queued_at)",
        # Status's "done today" (state: covering, as for jobs_claim) and retention's oldest.
        "CREATE INDEX jobs_done_finished ON jobs (finished_at, destination, state)"
        " WHERE state = 'done'",
        # Status's last success per destination.
        "CREATE INDEX jobs_destination_sent ON jobs (destination, sent_at)",
    ):
        db.execute(statement)


@_migration
def m004_duplicates(db: Database) -> None:
    # Duplicate hold (``duplicates = "hold"``): a hash of the patient identifier
    # each job was sent for, the per-job flag that lets one duplicate through
    # (set by ``chartdrop retry --allow-duplicate``), and the index the check reads.
    db.execute("ALTER TABLE jobs ADD COLUMN patient_key TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN allow_duplicate INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX jobs_destination_sha256 ON jobs (destination, sha256)")


@_migration
def m005_events_retention(db: Database) -> None:
    # Events stay append-only, except that retention may delete rows older
    # than ``events_prune_before.at`` (keep_events_days): the cutoff is raised
    # in the same transaction as the delete, and no younger row can be deleted.
    db.execute("CREATE TABLE events_prune_before (at REAL NOT NULL)")
    db.execute("INSERT INTO events_prune_before (at) VALUES (0)")
    db.execute("DROP TRIGGER events_no_delete")
    db.execute(
        """
        CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        WHEN OLD.at >= (SELECT at FROM events_prune_before)
        BEGIN SELECT RAISE(ABORT, 'events are append-only (until keep_events_days)'); END
        """
    )


@_migration
def m006_failed_by_document_id(db: Database) -> None:
    # After each delivery, the failed job with the same DocumentID (a document
    # moved back by hand) has its note removed: a seek in the failed rows only,
    # not a read of every failed row kept for keep_failed_days.
    db.execute("CREATE INDEX jobs_failed_document ON jobs (document_id) WHERE state = 'failed'")


JOB_COLUMNS = frozenset(Job.__dataclass_fields__)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the queue database for one :class:`~daemon.queue.Queue`.

    Read-write creates the file (0600, before SQLite touches it: the -wal and
    -shm files inherit its mode), turns on WAL and applies pending migrations.
    Read-only (CLI reads) never creates or migrates: ``FileNotFoundError`` if
    the file is missing, ``ConfigError`` if it is not a current chartdrop queue.
    The connection is in autocommit mode; callers write in ``BEGIN IMMEDIATE``.
    """
    if readonly:
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no queue database", str(path))
        target, uri = f"{path.resolve().as_uri()}?mode=ro", True
    else:
        _create_private(path)
        target, uri = str(path), False
    conn = sqlite3.connect(
        target, uri=uri, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
            if pending_migrations(conn):
                raise ConfigError(
                    f"The queue database {path} is not initialised for this version of "
                    "chartdrop: start the daemon once to create or upgrade it."
                )
        else:
            _set_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # In one BEGIN IMMEDIATE, so two processes starting on a new file cannot
            # both create the tables (sqlite-utils nests its savepoints inside).
            conn.execute("BEGIN IMMEDIATE")
            try:
                from sqlite_utils.db import Database

                db = Database(conn, recursive_triggers=False, execute_plugins=False)
                migrations().apply(db)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def file_intact(path: Path) -> bool:
    """``PRAGMA integrity_check`` on an existing database file, before anything
    (migrations included) writes to it. False if SQLite reports any problem or
    cannot even read the file as a database."""
    try:
        conn = sqlite3.connect(str(path), timeout=10, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()
    return rows == [("ok",)]


def _set_wal(conn: sqlite3.Connection, timeout: float = 10.0) -> None:
    """Switching to WAL needs a moment alone with the file, and SQLite does not apply
    busy_timeout to it: a first open racing another process retries, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _create_private(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)
