"""``chartdrop retry``: a failed job back into the queue, under the same job and
the same DocumentID.

The pair is taken back from failed/ as it is there *now* (staff may have fixed
the sidecar in place), checked exactly as intake checks an inbox pair, renamed
into the spool, and the job goes ``failed -> queued`` with its attempts reset;
then its ``.error.txt`` is removed. Refused, with every reason, when the job is
not failed, its files are no longer in failed/, the document's bytes are not
the ones the job had (that is a new document: drop it into the inbox), or the
sidecar is still invalid. Nothing moves unless the job can be requeued.

Order, for a crash in the middle: the files are renamed into the spool first
and the row changes after; if the row cannot change (another retry won the
race) the files are renamed back. A crash between the two leaves the files in
the spool under the job's retry token and the job failed: ``chartdrop retry``
of that job says the files are not in failed/ any more.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config import Settings
from daemon.errors import InputError
from daemon.fsutil import fsync_dir, lstat_kind, open_document, rename_noreplace, sha256_file
from daemon.intake import judge
from daemon.names import (
    error_note_name,
    is_junk,
    is_sidecar,
    paired_sidecar_name,
    sidecar_candidates,
)
from daemon.pairing import PairIndex
from daemon.queue import Job, JobState, Queue


@dataclass
class RetryResult:
    job_id: str
    requeued: bool
    problems: list[str] = field(default_factory=list)
    document_id: str | None = None
    destination: str | None = None


AMBIGUOUS_SIDECAR = (
    "the sidecar beside it in failed/ is named after its stem, and another document there "
    "has the same stem: it cannot be told whose it is. Name it after the document's full "
    "name followed by .json, then retry"
)


def _sidecar_in_failed(job: Job, doc: Path) -> tuple[Path | None, str | None]:
    """The sidecar beside ``doc`` in failed/ and the name it is stored under, by
    intake's rule (:class:`PairIndex` over failed/). Raises ValueError
    (:data:`AMBIGUOUS_SIDECAR`) for a stem-style sidecar that another document
    there answers to as well."""
    if job.sidecar_name:
        name = paired_sidecar_name(doc.name, job.original_name, job.sidecar_name)
        return doc.parent / name, name
    exact = sidecar_candidates(doc.name)[0]  # one staff added since (a missing sidecar)
    if lstat_kind(doc.parent / exact) == "file":
        return doc.parent / exact, exact
    index = PairIndex()
    with os.scandir(doc.parent) as entries:
        for entry in entries:
            if not is_junk(entry.name) and entry.is_file(follow_symlinks=False):
                index.add(entry.name)
    found = index.sidecar_for(doc.name)
    if found is None:
        if index.sidecars_naming(doc.name):
            raise ValueError(AMBIGUOUS_SIDECAR)
        return None, None
    return doc.parent / found, found


def _refused(job: Job, *problems: str) -> RetryResult:
    return RetryResult(job.id, False, list(problems), job.document_id, job.destination)


def retry_job(
    settings: Settings, queue: Queue, job: Job, *, allow_duplicate: bool = False
) -> RetryResult:
    """Requeue one failed job from failed/, or say why not. ``allow_duplicate``
    lets a held duplicate through (audited; the same DocumentID)."""
    if job.state != JobState.FAILED:
        return _refused(job, f"the job is {job.state}, not failed")
    try:
        dest = settings.get_destination(job.destination)
    except KeyError:
        return _refused(job, f"its destination {job.destination} is no longer configured")
    if not job.final_path:
        return _refused(job, "the job has no files on record (removed by retention?)")
    doc = Path(job.final_path)
    if doc.parent != dest.failed or lstat_kind(doc) != "file":
        return _refused(
            job, "the document is no longer in failed/ (moved back by hand, or deleted)"
        )
    sidecar_only = job.sidecar_name is None and is_sidecar(job.original_name)
    try:
        side, side_name = (None, None) if sidecar_only else _sidecar_in_failed(job, doc)
    except ValueError as exc:
        return _refused(job, str(exc))
    if job.sidecar_name and (side is None or lstat_kind(side) != "file"):
        return _refused(job, "the sidecar is no longer in failed/ next to the document")
    if job.sha256:
        try:
            with open_document(doc) as fh:
                digest, _size = sha256_file(fh)
        except InputError as exc:  # e.g. linked back into the inbox: never opened
            return _refused(job, *exc.problems)
        if digest != job.sha256:
            return _refused(
                job,
                "the document in failed/ is not the one this job had (its content changed); "
                "move it into the inbox to send it as a new document",
            )
    verdict = judge(dest, settings, doc, side, name=job.original_name, sidecar_only=sidecar_only)
    if verdict.incomplete is not None:
        return _refused(job, f"the document is incomplete: {verdict.incomplete}")
    if verdict.rejection is not None:
        return _refused(job, *verdict.rejection.problems)
    if allow_duplicate and job.error_kind == "duplicate" and not queue.allow_duplicate(job.id):
        return _refused(job, "the job changed while it was being retried; look again")
    token = uuid.uuid4().hex
    spool = settings.spool_dir
    spool_doc = spool / f"{token}.document"
    spool_side = spool / f"{token}.sidecar" if side is not None else None
    rename_noreplace(doc, spool_doc)
    if side is not None and spool_side is not None:
        try:
            rename_noreplace(side, spool_side)
        except OSError:
            rename_noreplace(spool_doc, doc)
            raise
    fsync_dir(spool)
    fsync_dir(dest.failed)
    if not queue.requeue(
        job.id,
        spool_document=str(spool_doc),
        spool_sidecar=None if spool_side is None else str(spool_side),
        sidecar_name=side_name if side_name is not None else job.sidecar_name,
        patient_key=verdict.patient,
    ):
        rename_noreplace(spool_doc, doc)
        if side is not None and spool_side is not None:
            rename_noreplace(spool_side, side)
        return _refused(job, "the job changed while it was being retried; look again")
    note = dest.failed / error_note_name(doc.name)
    try:
        note.unlink()
        fsync_dir(dest.failed)
    except FileNotFoundError:
        pass
    return RetryResult(job.id, True, [], job.document_id, job.destination)
