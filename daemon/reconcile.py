"""Start-up reconciliation of the spool with the queue (issue 12, item 3).

The queue database is the truth of a job, but a database that lost its
``-wal`` after a crash (deleted by hand, by a cleanup script, or a restore that
copied the main file alone) forgets the jobs committed since the last
checkpoint, while their files sit in ``spool_dir``. Nothing would ever send
them. At start-up, before any worker runs, every spool file must belong to a
job that is not finished; any other file is an orphan:

* ``<token>.document`` (with ``<token>.sidecar``, if any) whose sidecar names
  its own ``DocumentID``: handed back to the destination's inbox under the name
  ``recovered-<token>.<ext>`` (and ``….json``), so it is queued again and any
  resend carries the same DocumentID. Only when there is exactly one
  destination: the spool does not say which destination a file came from.
* any other orphan: moved to ``failed/`` (of the only destination, or of the
  first one) with a note. Its DocumentID was in the lost rows, so whether the
  chart already has it is unknown: staff check, and move it back if not.
* ``*.snapshot`` (a copy delivery was making when the process died): deleted.

Every move is a same-filesystem ``rename_noreplace`` followed by an fsync of
both folders; an orphan bound for failed/ gets its note before its files
move. It is logged as counts (``spool.reconciled``), never names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from daemon.config import Destination, Settings
from daemon.content import detect
from daemon.errors import InputError
from daemon.fsutil import fsync_dir, open_document, rename_noreplace, write_file_atomic
from daemon.names import error_note_name, suffixed
from daemon.queue import Queue
from daemon.queue_schema import JobState
from daemon.sidecar import read_sidecar
from daemon.snapshot import SNAPSHOT_SUFFIX

KEEPS_SPOOL_FILES = (
    JobState.INTAKE,
    JobState.QUEUED,
    JobState.LEASED,
    JobState.SENT,
    JobState.REJECTED,
)

NOTE = """chartdrop could not file this document into the patient's chart.

What is wrong:
  - chartdrop lost its record of this document: its queue database was damaged
    or its journal (-wal file) was deleted after a crash. The document may or may
    not already be in the chart, and the destination it was dropped for is not
    known for sure.

How to fix it:
  Look the patient up in the chart. If this document is not there, move it and
  its sidecar (if any) into the right destination's inbox to send it again.

Recovered at: {now}
"""


@dataclass
class Reconciled:
    requeued: int = 0
    failed: int = 0
    snapshots_removed: int = 0
    problems: list[str] = field(default_factory=list)


def _known_spool_files(queue: Queue) -> set[str]:
    known: set[str] = set()
    for job in queue.jobs(states=KEEPS_SPOOL_FILES, limit=10_000_000):
        known.update(p for p in (job.spool_document, job.spool_sidecar) if p)
    return known


def _document_id(sidecar: Path | None) -> str | None:
    if sidecar is None:
        return None
    try:
        data = read_sidecar(sidecar)
    except InputError:
        return None
    for section in ("Media", "Note"):
        value = data.get(section, {}).get("DocumentID") if isinstance(data, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def _extension(document: Path) -> str:
    try:
        with open_document(document) as fh:
            kind = detect(fh)
    except (OSError, InputError):
        return "bin"
    return kind.extension if kind is not None else "bin"


def _free_in_failed(folder: Path, name: str, document: bool, sidecar: bool) -> str:
    """The first of ``name``, ``name (1)``, … under which an orphan's files are free
    in ``folder`` (its document, and its sidecar as ``<that>.json``). Its note may
    exist already: written by a start that died before the files moved (``name``
    carries the orphan's own spool token, so the note is that orphan's)."""
    n = 0
    while True:
        base = suffixed(name, n)
        taken = [base] if document else []
        if sidecar or not document:
            taken.append(f"{base}.json")
        if not any(os.path.lexists(folder / x) for x in taken):
            return base
        n += 1


def _note_once(folder: Path, name: str, note: bytes, settings: Settings) -> None:
    """``name``'s ``.error.txt`` in ``folder``, unless an earlier start wrote it."""
    path = folder / error_note_name(name)
    if not path.exists():
        write_file_atomic(path, note, mode=settings.files_mode)


def _move_free(src: Path, folder: Path, name: str) -> Path:
    n = 0
    while True:
        target = folder / suffixed(name, n)
        try:
            rename_noreplace(src, target)
            return target
        except FileExistsError:
            n += 1


def reconcile_spool(settings: Settings, queue: Queue) -> Reconciled:
    """Give every orphaned spool file a place (see the module docstring)."""
    result = Reconciled()
    spool = settings.spool_dir
    if not spool.is_dir() or not settings.destination:
        return result
    known = _known_spool_files(queue)
    tokens: dict[str, dict[str, Path]] = {}
    for path in sorted(spool.iterdir()):
        if path.name.endswith(SNAPSHOT_SUFFIX):
            path.unlink(missing_ok=True)
            result.snapshots_removed += 1
            continue
        if str(path) in known:
            continue
        stem, _, kind = path.name.rpartition(".")
        if kind in ("document", "sidecar") and stem:
            tokens.setdefault(stem, {})[kind] = path
        else:
            result.problems.append("unknown file")  # not ours: left alone, counted
    if not tokens:
        return result
    only: Destination | None = settings.destination[0] if len(settings.destination) == 1 else None
    dest = only or settings.destination[0]
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    for token, files in sorted(tokens.items()):
        document, sidecar = files.get("document"), files.get("sidecar")
        name = f"recovered-{token}"
        if document is not None:
            name = f"{name}.{_extension(document)}"
        if only is not None and document is not None and _document_id(sidecar) is not None:
            if sidecar is not None:  # the sidecar first: the document is ready with it
                _move_free(sidecar, only.inbox, f"{name}.json")
            _move_free(document, only.inbox, name)
            fsync_dir(only.inbox)
            result.requeued += 1
            continue
        # The note first, then the files: a crash in between leaves the note alone
        # (the next start finds it and files the same orphan under its name), never
        # a document in failed/ without its reason.
        base = _free_in_failed(dest.failed, name, document is not None, sidecar is not None)
        note = NOTE.format(now=now).encode("utf-8")
        _note_once(dest.failed, base if document is not None else f"{base}.json", note, settings)
        placed = _move_free(document, dest.failed, base) if document is not None else None
        if placed is not None and placed.name != base:  # taken meanwhile (by hand)
            _note_once(dest.failed, placed.name, note, settings)
        if sidecar is not None:
            side_name = f"{placed.name}.json" if placed is not None else f"{base}.json"
            _move_free(sidecar, dest.failed, side_name)
        fsync_dir(dest.failed)
        result.failed += 1
    fsync_dir(spool)
    return result
