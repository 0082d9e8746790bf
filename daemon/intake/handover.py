"""Hand-over: from a judged pair in an inbox to a committed job with its files in
the spool. The order, so that nothing is queued twice and nothing is lost:

1. commit a job row in state ``intake`` naming the spool paths;
2. rename the document, then the sidecar, into the spool (same filesystem),
   fsync both directories;
3. check the spool copies (hash them) and commit ``queued`` (or ``rejected``
   with the reason, to be moved to failed/).

A crash after 1 leaves an ``intake`` row: :func:`daemon.intake.recovery.recover`
finishes it if the document reached the spool, and abandons it (the rescan
finds the file again) if it did not.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from daemon.config import Destination
from daemon.errors import MissingSidecarError, NotRegularFileError, UnreadableError
from daemon.fsutil import fsync_dir, open_document, rename_noreplace, set_mode, sha256_file
from daemon.intake.judging import Verdict, storable
from daemon.killpoints import killpoint
from daemon.logs import get_logger
from daemon.names import is_sidecar
from daemon.queue import Job, Queue
from daemon.reuse import earlier_document_id


class HandOver:
    """Moves judged pairs into the spool and commits their jobs (from the main loop)."""

    def __init__(
        self,
        queue: Queue,
        spool_dir: Path,
        *,
        on_queued: Callable[[], None] = lambda: None,
        on_rejected: Callable[[Job], object] = lambda job: None,
    ) -> None:
        self.queue = queue
        self.spool_dir = spool_dir
        self.on_queued = on_queued
        self.on_rejected = on_rejected
        self.log = get_logger()

    def hand_over(
        self,
        dest: Destination,
        doc_name: str,
        sidecar_name: str | None,
        verdict: Verdict,
    ) -> Job | None:
        token = uuid.uuid4().hex
        spool = self.spool_dir
        spool_doc = spool / f"{token}.document"
        spool_side = spool / f"{token}.sidecar" if sidecar_name else None
        job = self.queue.begin_intake(
            destination=dest.name,
            original_name=storable(doc_name),
            sidecar_name=storable(sidecar_name) if sidecar_name else None,
            spool_document=str(spool_doc),
            spool_sidecar=str(spool_side) if spool_side else None,
            document_id=None
            if is_sidecar(doc_name)
            else earlier_document_id(self.queue, dest.name, dest.inbox / doc_name),
        )
        killpoint("intake_after_row")
        try:
            rename_noreplace(dest.inbox / doc_name, spool_doc)
        except FileNotFoundError:
            self.queue.abandon_intake(job.id, "document left the inbox before hand-over")
            return None
        except OSError as exc:
            self.queue.abandon_intake(job.id, f"hand-over failed ({type(exc).__name__})")
            raise
        killpoint("intake_mid_rename")
        if sidecar_name and spool_side is not None:
            try:
                rename_noreplace(dest.inbox / sidecar_name, spool_side)
            except OSError:
                verdict = Verdict(
                    rejection=MissingSidecarError("the sidecar disappeared during hand-over")
                )
        for moved in (spool_doc, spool_side):
            if moved is not None and moved.exists():
                set_mode(moved, 0o600)  # best effort: only files the daemon owns can change
        fsync_dir(spool)
        fsync_dir(dest.inbox)
        return self.complete(job, dest, verdict)

    def complete(self, job: Job, dest: Destination, verdict: Verdict) -> Job:
        assert job.spool_document is not None
        digest, size = "", 0
        rejection = verdict.rejection
        try:
            with open_document(Path(job.spool_document)) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size <= dest.timing.upload_max_bytes:  # never hash what cannot go
                    digest, size = sha256_file(fh)
        except NotRegularFileError as exc:  # swapped for a link after the checks
            rejection = rejection or exc
        except OSError as exc:
            rejection = rejection or UnreadableError(
                f"chartdrop could not read the document ({exc.strerror or type(exc).__name__})"
            )
        done = self.queue.complete_intake(job.id, sha256=digest, size=size, rejection=rejection)
        if rejection is None:
            self.log.info(
                "job.queued", job_id=job.id, destination=dest.name, size=size, sha256=digest
            )
            self.on_queued()
        else:
            self.log.info(
                "job.rejected",
                job_id=job.id,
                destination=dest.name,
                error_kind=rejection.kind,
                size=size,
                reason="intake",
            )
            self.on_rejected(done)
        return done
