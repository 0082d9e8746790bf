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

The pairs one tick of the loop takes go through each step together
(:meth:`HandOver.hand_over_many`): one transaction for all their rows, their
renames, one fsync per folder, one transaction for all their outcomes. The
order of the steps is the same for every pair, so a crash anywhere leaves each
of them where a crash of a lone hand-over would.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config import Destination
from daemon.errors import (
    InputError,
    MissingSidecarError,
    NotRegularFileError,
    UnreadableError,
)
from daemon.fsutil import child, fsync_dir, open_document, rename_noreplace, set_mode, sha256_file
from daemon.intake.judging import Verdict, storable
from daemon.killpoints import killpoint
from daemon.logs import get_logger
from daemon.names import is_sidecar
from daemon.queue import Job, Queue
from daemon.reuse import earlier_document_ids


@dataclass(frozen=True)
class Take:
    """One judged pair (or lone file) to hand over."""

    dest: Destination
    doc_name: str
    sidecar_name: str | None
    verdict: Verdict


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
        """One pair: its job, None if the document left the inbox first; raises
        what went wrong."""
        (result,) = self.hand_over_many([Take(dest, doc_name, sidecar_name, verdict)])
        if isinstance(result, Exception):
            raise result
        return result

    def hand_over_many(self, takes: list[Take]) -> list[Job | Exception | None]:
        """Hand ``takes`` over, each step for all of them at once (see the module
        docstring). One result per take, in order: its job, None if the document
        left the inbox before the rename, or the exception that stopped it (the
        caller holds that name back, as it would a lone hand-over that raised)."""
        results: list[Job | Exception | None] = [None] * len(takes)
        try:
            documents = [
                (i, (take.dest.name, take.dest.inbox / take.doc_name, take.verdict.patient))
                for i, take in enumerate(takes)
                if not is_sidecar(take.doc_name)
            ]
            document_ids: list[str | None] = [None] * len(takes)
            found = earlier_document_ids(self.queue, [doc for _, doc in documents])
            for (i, _), document_id in zip(documents, found, strict=True):
                document_ids[i] = document_id
            rows: list[dict[str, Any]] = []
            for take, document_id in zip(takes, document_ids, strict=True):
                token = uuid.uuid4().hex
                rows.append(
                    {
                        "destination": take.dest.name,
                        "original_name": storable(take.doc_name),
                        "sidecar_name": storable(take.sidecar_name) if take.sidecar_name else None,
                        "spool_document": child(self.spool_dir, f"{token}.document"),
                        "spool_sidecar": child(self.spool_dir, f"{token}.sidecar")
                        if take.sidecar_name
                        else None,
                        "document_id": document_id,
                        "patient_key": take.verdict.patient,
                    }
                )
            jobs = self.queue.begin_intake_many(rows)
        except Exception as exc:  # noqa: BLE001 - nothing was moved: each name is held back
            return [exc] * len(takes)
        killpoint("intake_after_row")
        moved: list[tuple[int, Job, Destination, Verdict]] = []
        inboxes: dict[Path, None] = {}
        for i, (take, job) in enumerate(zip(takes, jobs, strict=True)):
            try:
                verdict = self._move_in(take, job)
            except Exception as exc:  # noqa: BLE001 - this pair only
                results[i] = exc
                continue
            if verdict is not None:
                moved.append((i, job, take.dest, verdict))
                inboxes[take.dest.inbox] = None
        if not moved:
            return results
        try:
            fsync_dir(self.spool_dir)
            for inbox in inboxes:
                fsync_dir(inbox)
        except Exception as exc:  # noqa: BLE001 - not durable: recovery finishes them
            for i, *_ in moved:
                results[i] = exc
            return results
        try:
            done = self.complete_many([(job, dest, verdict) for _, job, dest, verdict in moved])
        except Exception as exc:  # noqa: BLE001 - in the spool: recovery finishes them
            for i, *_ in moved:
                results[i] = exc
            return results
        for (i, *_), job in zip(moved, done, strict=True):
            results[i] = job
        return results

    def _move_in(self, take: Take, job: Job) -> Verdict | None:
        """Rename one pair into the spool (its row is committed). Its verdict (a
        sidecar that vanished meanwhile makes it a rejection), or None when the
        document had left the inbox (the job is abandoned)."""
        assert job.spool_document is not None
        dest, verdict = take.dest, take.verdict
        spool_doc = Path(job.spool_document)
        spool_side = Path(job.spool_sidecar) if job.spool_sidecar else None
        try:
            rename_noreplace(dest.inbox / take.doc_name, spool_doc)
        except FileNotFoundError:
            self.queue.abandon_intake(job.id, "document left the inbox before hand-over")
            return None
        except OSError as exc:
            self.queue.abandon_intake(job.id, f"hand-over failed ({type(exc).__name__})")
            raise
        killpoint("intake_mid_rename")
        if take.sidecar_name and spool_side is not None:
            try:
                rename_noreplace(dest.inbox / take.sidecar_name, spool_side)
            except OSError:
                verdict = Verdict(
                    rejection=MissingSidecarError("the sidecar disappeared during hand-over")
                )
        for moved in (spool_doc, spool_side):
            if moved is not None and moved.exists():
                set_mode(moved, 0o600)  # best effort: only files the daemon owns can change
        return verdict

    def complete(self, job: Job, dest: Destination, verdict: Verdict) -> Job:
        return self.complete_many([(job, dest, verdict)])[0]

    def complete_many(self, items: list[tuple[Job, Destination, Verdict]]) -> list[Job]:
        """Check the spool copies (hash them) and commit every outcome in one
        transaction; then log and announce each."""
        completions: list[tuple[str, str, int, InputError | None]] = []
        for job, dest, verdict in items:
            digest, size, rejection = self._check(job, dest.timing.upload_max_bytes, verdict)
            completions.append((job.id, digest, size, rejection))
        done = self.queue.complete_intake_many(completions)
        for (_, dest, _), (_, digest, size, rejection), job in zip(
            items, completions, done, strict=True
        ):
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
                self.on_rejected(job)
        return done

    @staticmethod
    def _check(job: Job, limit: int, verdict: Verdict) -> tuple[str, int, InputError | None]:
        assert job.spool_document is not None
        digest, size = "", 0
        rejection = verdict.rejection
        try:
            with open_document(Path(job.spool_document)) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size <= limit:  # never hash what cannot go
                    digest, size = sha256_file(fh)
        except NotRegularFileError as exc:  # swapped for a link after the checks
            rejection = rejection or exc
        except OSError as exc:
            rejection = rejection or UnreadableError(
                f"chartdrop could not read the document ({exc.strerror or type(exc).__name__})"
            )
        return digest, size, rejection
