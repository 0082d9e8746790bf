"""Judging a ready pair: is the document complete, of a type this destination
takes, and is its sidecar valid? The same checks run in the inbox, on recovery
(in the spool) and for ``chartdrop retry`` (in failed/)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daemon.config import Destination, Settings
from daemon.content import detect, incomplete_reason
from daemon.errors import InputError, MissingSidecarError, SidecarError, TooLargeError
from daemon.fsutil import open_document
from daemon.outgoing import check_kind, check_sidecar, effective_sidecar, patient_key_of
from daemon.sidecar import read_sidecar


def storable(name: str) -> str:
    """The name as UTF-8 text for the database; undecodable bytes become \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Verdict:
    """What the checks say about a ready pair: no rejection and not incomplete
    means send it."""

    rejection: InputError | None = None
    incomplete: str | None = None
    # whom the document is for (outgoing.patient_key_of: a hash, not PHI), when accepted
    patient: str | None = None


def judge(
    dest: Destination,
    settings: Settings,
    doc: Path,
    sidecar: Path | None,
    *,
    name: str | None = None,
    sidecar_only: bool = False,
) -> Verdict:
    """Check a document and its sidecar (in the inbox, or in the spool on recovery,
    where ``name`` is the document's original name). ``sidecar_only``: ``doc`` is
    a sidecar that came alone (an EventType Delete)."""
    name = doc.name if name is None else name
    try:
        if sidecar_only:
            data = read_sidecar(doc)
            check_sidecar(
                dest=dest, settings=settings, sidecar=data, file_name=name, redox_type=None
            )
            return Verdict()
        with open_document(doc) as fh:
            size = os.fstat(fh.fileno()).st_size
            # Over the limit is final (a file only grows), so it is refused before
            # anything is read: a sparse multi-GB file must not be waited on or hashed.
            if size > dest.timing.upload_max_bytes:
                raise TooLargeError(
                    f"the file is {size:,} bytes; the limit is "
                    f"{dest.timing.upload_max_bytes:,} bytes"
                )
            kind = detect(fh)
            reason = incomplete_reason(fh, size, kind)
            if reason is not None:  # an empty file too: a writer may not have started yet
                return Verdict(incomplete=reason)
            kind = check_kind(dest, kind, name)
        try:
            fields = effective_sidecar(
                dest, None if sidecar is None else read_sidecar(sidecar), name
            )
        except SidecarError as exc:
            if sidecar is None:
                return Verdict(rejection=MissingSidecarError(exc.problems))
            raise
        check_sidecar(
            dest=dest, settings=settings, sidecar=fields, file_name=name, redox_type=kind.redox_type
        )
    except InputError as exc:
        return Verdict(rejection=exc)
    return Verdict(patient=patient_key_of(dest, fields))


def is_delete(path: Path) -> bool:
    """A lone sidecar that asks for a Delete is a job by itself."""
    try:
        return read_sidecar(path).get("EventType") == "Delete"
    except InputError:
        return False  # not (yet) a valid sidecar: wait for its document
