"""Delivery: one claimed job → (upload?) → send → sent | retry later | rejected.

Retrying is decided here by the exception's type, and only here
(:func:`decide`). The DocumentID was fixed when the job was queued, so every
resend carries the same one; a blob URI, once uploaded, is stored on the job
and reused, so a retry does not upload again.
"""

from __future__ import annotations

import base64
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from daemon.config import Destination, Settings
from daemon.content import detect
from daemon.errors import (
    AuthError,
    ChartdropError,
    ContentError,
    InputError,
    PermanentDeliveryError,
    TooLargeError,
    TransientDeliveryError,
)
from daemon.filing import Filer
from daemon.fsutil import open_document
from daemon.logs import get_logger
from daemon.payload import FileFacts, build_media, validate_media
from daemon.queue import Job, Queue
from daemon.redox import RedoxClient
from daemon.sidecar import read_sidecar


def backoff(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempts))."""
    ceiling = min(cap, base * (2 ** min(attempts, 32)))
    return (rng or random).uniform(0, ceiling)


def safe_text(exc: BaseException) -> str:
    """An error's text for the job row and logs. Our own errors are PHI-free by
    construction; anything else (an OSError can carry a file name) gives only its
    type and errno text."""
    if isinstance(exc, ChartdropError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


@dataclass(frozen=True)
class Decision:
    action: str  # "retry" | "reject"
    delay: float = 0.0
    error_kind: str = ""
    error: str = ""
    http_status: int | None = None


def decide(
    exc: Exception, job: Job, dest: Destination, *, now: float, rng: random.Random | None = None
) -> Decision:
    """The one place that decides between retrying and failing."""
    if isinstance(exc, InputError):
        return Decision("reject", error_kind=exc.reason, error="\n".join(exc.problems))
    if isinstance(exc, PermanentDeliveryError):
        return Decision(
            "reject",
            error_kind="remote_rejected",
            error=f"the destination refused the document (HTTP {exc.status})",
            http_status=exc.status,
        )
    status = exc.status if isinstance(exc, TransientDeliveryError) else None
    started = job.queued_at or job.created_at
    give_up = float(dest.timing("give_up_after_hours")) * 3600
    if now - started >= give_up:
        return Decision(
            "reject",
            error_kind="gave_up",
            error=(
                f"the destination could not be reached for {give_up / 3600:g} hours "
                f"(last problem: {safe_text(exc)})"
            ),
            http_status=status,
        )
    delay = backoff(
        job.attempts,
        float(dest.timing("retry_base_seconds")),
        float(dest.timing("retry_cap_seconds")),
        rng,
    )
    if isinstance(exc, TransientDeliveryError) and exc.retry_after is not None:
        delay = max(delay, exc.retry_after)
    kind = "auth" if isinstance(exc, AuthError) else "transient"
    if not isinstance(exc, TransientDeliveryError):
        kind = "local_error"  # e.g. an unreadable spool file: retried, then reported
    return Decision("retry", delay=delay, error_kind=kind, error=safe_text(exc), http_status=status)


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        client: RedoxClient,
        filer: Filer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.client = client
        self.filer = filer
        self.clock = clock
        self.log = get_logger()

    def process(self, job: Job) -> str:
        """Deliver one leased job; returns the state it ended in."""
        assert job.lease_token is not None
        log = self.log.bind(job_id=job.id, destination=job.destination, attempt=job.attempts + 1)
        try:
            dest = self.settings.get_destination(job.destination)
        except KeyError:
            self.queue.retry_later(
                job.id,
                job.lease_token,
                delay=self.settings.retry_cap_seconds,
                error_kind="destination_removed",
                error="destination no longer configured",
            )
            log.warning("job.retry", error_kind="destination_removed")
            return "queued"
        try:
            log_id = self._deliver(job, dest)
        except Exception as exc:  # noqa: BLE001 - every failure is decided by type below
            decision = decide(exc, job, dest, now=self.clock())
            if decision.action == "retry":
                ok = self.queue.retry_later(
                    job.id,
                    job.lease_token,
                    delay=decision.delay,
                    error_kind=decision.error_kind,
                    error=decision.error,
                    http_status=decision.http_status,
                )
                log.warning(
                    "job.retry",
                    error_kind=decision.error_kind,
                    http_status=decision.http_status,
                    retry_in=round(decision.delay, 1),
                    exc_type=type(exc).__name__,
                    unknown_outcome=getattr(exc, "unknown_outcome", False),
                    state="queued" if ok else "lease_lost",
                )
                return "queued"
            ok = self.queue.reject(
                job.id,
                job.lease_token,
                error_kind=decision.error_kind,
                error=decision.error,
                http_status=decision.http_status,
            )
            log.warning(
                "job.rejected", error_kind=decision.error_kind, http_status=decision.http_status
            )
            if ok:
                self._finish(job.id)
            return "rejected"
        if not self.queue.mark_sent(job.id, job.lease_token, remote_id=log_id, http_status=200):
            log.error("job.lease_lost_after_send", remote_id=log_id)
            return "lease_lost"
        log.info("job.sent", remote_id=log_id)
        self._finish(job.id)
        return "sent"

    def _finish(self, job_id: str) -> None:
        job = self.queue.get(job_id)
        if job is not None:
            self.filer.finish_safely(job)

    def _deliver(self, job: Job, dest: Destination) -> str | None:
        assert job.spool_document is not None and job.lease_token is not None
        with open_document(Path(job.spool_document)) as fh:
            st = os.fstat(fh.fileno())
            limit = int(dest.timing("upload_max_bytes"))
            if st.st_size > limit:
                raise TooLargeError(
                    f"the file is {st.st_size:,} bytes; the limit is {limit:,} bytes"
                )
            kind = detect(fh)
            if kind is None:
                raise ContentError("the file's content is not a document type chartdrop sends")
            sidecar = read_sidecar(Path(job.spool_sidecar)) if job.spool_sidecar else {}
            created = datetime.fromtimestamp(st.st_mtime, UTC)
            facts = FileFacts(job.original_name, kind.redox_type, "cGxhY2Vob2xkZXI=", created)
            body = build_media(
                dest=dest,
                redox=self.settings.redox,
                sidecar=sidecar,
                document_id=job.document_id,
                facts=facts,
            )
            validate_media(body, sidecar)  # before any network call
            if st.st_size <= int(dest.timing("embed_max_bytes")):
                contents = base64.b64encode(fh.read()).decode("ascii")
            else:
                contents = job.blob_uri or self._upload(job, fh, kind.extension, kind.mime)
        body["Media"]["FileContents"] = contents
        result = self.client.send(body)
        return result.log_id

    def _upload(self, job: Job, fh: BinaryIO, extension: str, mime: str) -> str:
        assert job.lease_token is not None
        uri = self.client.upload(fh, upload_name=f"{job.document_id}.{extension}", mime=mime)
        if not self.queue.record_upload(job.id, job.lease_token, uri):
            raise TransientDeliveryError("lease lost during upload")
        self.log.info("job.uploaded", job_id=job.id, destination=job.destination, size=job.size)
        return uri
