"""A pair moved back into the inbox by hand after its job gave up with an
unknown outcome (a timeout after the request was sent: it may have been filed)
must not be filed a second time under a new ID. Intake asks
:func:`earlier_document_id` before it commits the new job, so the new job
carries the failed one's DocumentID; once it is done, :func:`remove_earlier_note`
removes the old ``.error.txt`` left in failed/.

Only a file whose size matches such a failed job is hashed, so ordinary intake
pays one indexed query per batch (:func:`earlier_document_ids`).
"""

from __future__ import annotations

from pathlib import Path

from daemon.config import Settings
from daemon.errors import InputError
from daemon.fsutil import fsync_dir, lstat_kind, open_document, sha256_file
from daemon.names import error_note_name
from daemon.queue import Job, Queue


def earlier_document_id(
    queue: Queue, destination: str, path: Path, size: int, patient: str | None
) -> str | None:
    """For intake: the DocumentID of a failed job of ``destination`` whose bytes are
    ``path``'s, for the same patient (``patient``: the new sidecar's patient key),
    and whose outcome was unknown (it may have been filed), so a pair moved back
    into the inbox by hand is sent under the same ID, never a second one. The same
    bytes for another patient (a printed form, a fax page sent again) are another
    document: a new ID (with the old one, it went into the first patient's chart).
    A job from before patient keys were kept at intake has none: no reuse. Only a
    file whose size (``lstat``, by the caller) matches such a job is hashed."""
    if patient is None:
        return None
    try:
        candidates = queue.unknown_outcome_failures(destination, size)
        if not candidates:
            return None
        with open_document(path) as fh:
            digest, _size = sha256_file(fh)
    except (OSError, InputError):
        # a link, or an unreadable file: intake's own checks refuse or report it
        # (it must not hold back the pairs handed over with it)
        return None
    for job in candidates:
        if job.sha256 == digest and job.patient_key == patient:
            return job.document_id
    return None


def earlier_document_ids(
    queue: Queue, documents: list[tuple[str, Path, str | None]]
) -> list[str | None]:
    """:func:`earlier_document_id` of each ``(destination, path, patient)``, with one query per
    destination for the lot: only a document whose size some such failed job has is
    looked at one by one (hashed)."""
    sizes: list[int | None] = []
    for _destination, path, _patient in documents:
        try:
            sizes.append(path.lstat().st_size)  # a link is never followed, not even for its size
        except OSError:
            sizes.append(None)  # intake's own checks report an unreadable file
    wanted: dict[str, set[int]] = {}
    for (destination, _path, _patient), size in zip(documents, sizes, strict=True):
        if size is not None:
            wanted.setdefault(destination, set()).add(size)
    found = {d: queue.unknown_outcome_sizes(d, s) for d, s in wanted.items()}
    return [
        earlier_document_id(queue, destination, path, size, patient)
        if size is not None and size in found[destination]
        else None
        for (destination, path, patient), size in zip(documents, sizes, strict=True)
    ]


def remove_earlier_note(settings: Settings, queue: Queue, job: Job) -> None:
    """After ``job`` went through: remove the ``.error.txt`` of a failed job with the
    same DocumentID (its document was moved back by hand and is filed now)."""
    try:
        earlier = queue.failed_with_document_id(job.document_id, exclude=job.id)
    except Exception:  # noqa: BLE001 - a tidy-up: the delivery is done and recorded
        return
    for old in earlier:
        if not old.final_path:
            continue
        try:
            dest = settings.get_destination(old.destination)
        except KeyError:
            continue
        doc = Path(old.final_path)
        note = doc.parent / error_note_name(doc.name)
        if doc.parent != dest.failed or lstat_kind(doc) != "missing":
            continue  # the old document is still there: its note still describes it
        try:
            note.unlink()
            fsync_dir(dest.failed)
        except OSError:
            pass
