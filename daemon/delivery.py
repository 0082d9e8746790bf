"""Delivery: one claimed job → (upload?) → send → sent | retry later | rejected.

What happens after a failure is decided in :mod:`daemon.decide`, by the
exception's type, and only there. The DocumentID was fixed when the job was
queued, so every resend carries the same one; a blob URI, once uploaded, is
stored on the job and reused, so a retry does not upload again. Before each
send the spool document becomes a private snapshot (:mod:`daemon.snapshot`).
"""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from daemon.breaker import AUTH, OUTAGE, Breakers
from daemon.config import Destination, Settings
from daemon.content import FileKind
from daemon.decide import Decision, decide, gap_cap, safe_text
from daemon.errors import (
    ChangedError,
    DuplicateError,
    ErrorKind,
    PermanentDeliveryError,
    SidecarError,
    TransientDeliveryError,
)
from daemon.filing import Filer
from daemon.fsutil import open_document, sha256_file
from daemon.gate import GATE
from daemon.http import SendResult
from daemon.killpoints import killpoint
from daemon.logs import get_logger
from daemon.outgoing import Sender, effective_sidecar, is_sidecar_only, patient_key_of
from daemon.queue import Job, Queue
from daemon.ratelimit import RateLimits, Throttled
from daemon.sidecar import read_sidecar
from daemon.slots import InFlightKeys, NotNow, SendSlots, Slot
from daemon.snapshot import CHANGED, snapshot

# A local error committing ``sent`` after a successful send is retried promptly,
# backing off from COMMIT_RETRY_FIRST_SECONDS to COMMIT_RETRY_MAX_SECONDS, until
# COMMIT_MARGIN_SECONDS before the job's lease ends.
COMMIT_RETRY_FIRST_SECONDS = 0.1
COMMIT_RETRY_MAX_SECONDS = 2.0
COMMIT_MARGIN_SECONDS = 5.0
# A document up to this size is copied (and held in memory) before its thread
# waits for a send slot; a larger one waits first (see daemon.slots).
PREPARE_AHEAD_MAX_BYTES = 1_000_000


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        sender: Sender,
        filer: Filer,
        *,
        breakers: Breakers | None = None,
        limits: RateLimits | None = None,
        clock: Callable[[], float] = time.time,
        beat: Callable[[], None] | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.beat = beat  # the worker's heartbeat, while it retries a commit or waits for a slot
        self.stopping = stopping  # set at shutdown: a thread waiting for a slot gives up
        self.slots = SendSlots(settings.workers)  # resized by a reload that changes ``workers``
        self.in_flight = InFlightKeys()  # the duplicate keys of the jobs being sent
        self.settings = settings
        self.queue = queue
        self.sender = sender
        self.filer = filer
        self.breakers = breakers or Breakers(queue)
        self.limits = limits or RateLimits(settings)
        self.clock = clock
        self.log = get_logger()

    def process(self, job: Job, *, order: int | None = None) -> str:
        """Deliver one leased job; returns the state it ended in. ``order``: its place
        in the line for a send slot, taken with its claim (None: joins it now); the
        caller withdraws it if it is still in line afterwards (the worker does, in a
        ``finally``)."""
        assert job.lease_token is not None
        log = self.log.bind(job_id=job.id, destination=job.destination, attempt=job.attempts + 1)
        try:
            dest = self.settings.get_destination(job.destination)
        except KeyError:
            self.queue.retry_later(
                job.id,
                job.lease_token,
                delay=self.settings.retry_cap_seconds,
                error_kind=ErrorKind.DESTINATION_REMOVED,
                error="destination no longer configured",
            )
            log.warning("job.retry", error_kind=ErrorKind.DESTINATION_REMOVED)
            return "queued"
        slot = Slot(
            self.slots, order=order, keys=self.in_flight, stopping=self.stopping, beat=self.beat
        )
        with slot:
            try:
                sidecar = self._sidecar(job)  # read once: for the duplicate hold and the body
                fields = self._fields(job, dest, sidecar)
                key = self._hold_duplicates(job, dest, fields, slot)
                result = self._deliver(job, dest, sidecar, fields, slot)
            except Throttled as exc:
                # Nothing was sent: the job waits unburnt, its quota's destinations are held.
                self.queue.release(job.id, job.lease_token)
                self.breakers.hold(self.limits.sharing(dest), exc.wait, "rate limit reached")
                log.info(
                    "job.waiting", error_kind=ErrorKind.RATE_LIMITED, retry_in=round(exc.wait, 1)
                )
                return "queued"
            except NotNow as exc:  # nothing was sent: back to the queue, no attempt counted
                self.queue.release(job.id, job.lease_token)
                if not exc.quiet:
                    log.info("job.put_back", reason=exc.reason)
                return "queued"
            except Exception as exc:  # noqa: BLE001 - every failure is decided by type below
                return self._failed(job, dest, exc, log)
            self.breakers.success(dest.name)
            killpoint("after_send")
            # The move to done/ is claimed before the send is recorded, so the job this
            # commit returns is current (no other path can file it meanwhile) and is
            # filed without reading it again; its target in done/ is committed with the
            # send (one transaction, one fsync), durable before the rename as before.
            with self.filer.claimed(job.id) as mine:
                target = self.filer.done_target(job) if mine else None
                sent = self._commit_sent(job, result, log, key, target)
                slot.give_back()  # durable: another document (or its copy's check) may go
                GATE.rejoin()  # the filing is local work again (daemon.gate)
                if sent is None:
                    log.error("job.lease_lost_after_send", remote_id=result.log_id)
                    return "lease_lost"
                killpoint("after_commit")
                log.info("job.sent", remote_id=result.log_id, http_status=result.status)
                if mine:
                    self.filer.finish_claimed(sent)
        if not mine:  # (never expected) another thread has its move: files it or retries
            self._finish(job)
        return "sent"

    def _take_slot(self, job: Job, dest: Destination, slot: Slot) -> None:
        """Take a send slot for ``job`` (see :mod:`daemon.slots`), then ask the
        destination's circuit whether it may go (right before its first request,
        so a circuit that opened while it waited holds it back). A job whose lease
        is more than half gone by then is not sent: the rest may not cover the
        send, and a job whose lease ran out may be claimed again meanwhile."""
        if slot.held:
            return
        # (daemon.gate) When the peer has been slow, the thread stays out of the gate
        # from the wait for the slot until the outcome is committed: the slot waits
        # for no one's local work.
        GATE.keep_out()
        with GATE.released():  # a wait for the other sends
            slot.take()
        expires = job.lease_expires_at
        if expires is not None:
            lease = expires - job.updated_at  # the claim set both
            if expires - self.clock() < lease / 2:
                raise NotNow("its lease ran low while it waited to be sent")
        if not self.breakers.admit(dest.name):  # paused (or another job is the probe)
            raise NotNow("its destination is paused", quiet=True)

    # -- issue 12 item 4: a local error after a successful send ----------------
    def _commit_sent(
        self, job: Job, result: SendResult, log: Any, key: str | None, target: Path | None
    ) -> Job | None:
        """Record ``sent`` (with ``target``, the document's place in done/, in the same
        transaction); a local error here (a full disk: SQLite's "database or
        disk is full") is retried at once as the commit it is, with a short backoff,
        for as long as the job's lease lasts: the document was delivered, so it must
        never be resent after a silent lease expiry. The job as committed, or None
        if the lease is lost."""
        assert job.lease_token is not None
        deadline = job.lease_expires_at or (self.clock() + self.settings.lease_seconds)
        delay = COMMIT_RETRY_FIRST_SECONDS
        failures = 0
        while True:
            try:
                return self.queue.record_sent(
                    job.id,
                    job.lease_token,
                    remote_id=result.log_id,
                    http_status=result.status,
                    patient_key=key,
                    final_path=None if target is None else str(target),
                )
            except (sqlite3.Error, OSError) as exc:
                failures += 1
                if failures == 1:  # once per job: a full disk would flood the log
                    log.error(
                        "job.commit_retry",
                        exc_type=type(exc).__name__,
                        error=safe_text(exc),
                        remote_id=result.log_id,
                    )
                if self.clock() + delay >= deadline - COMMIT_MARGIN_SECONDS:
                    raise  # the lease ends: the resend keeps the DocumentID
            if self.beat is not None:
                self.beat()
            with GATE.released():  # (daemon.gate)
                time.sleep(delay)
            delay = min(delay * 2, COMMIT_RETRY_MAX_SECONDS)

    def _failed(self, job: Job, dest: Destination, exc: Exception, log: Any) -> str:
        assert job.lease_token is not None
        now = self.clock()
        waited = self.queue.waited_seconds(job.id, now=now, gap_cap=gap_cap(dest))
        decision = decide(exc, job, dest, now=now, waited=waited)
        if decision.action == "wait":
            return self._wait(job, dest, decision, log)
        try:
            return self._apply(job, decision, exc, log)
        finally:  # after the job's own record, so an opening circuit can re-pace it
            if isinstance(exc, TransientDeliveryError) and exc.status == 429:
                self._too_many_requests(dest, exc.retry_after)
            elif isinstance(exc, TransientDeliveryError):
                self.breakers.failure(dest, OUTAGE, safe_text(exc), exc.retry_after)
            elif isinstance(exc, PermanentDeliveryError):
                self.breakers.success(dest.name)  # it answered: the destination is up
            else:
                self.breakers.inconclusive(dest.name)  # never reached it (input, local)

    def _wait(self, job: Job, dest: Destination, decision: Decision, log: Any) -> str:
        """The job goes back to the queue with no attempt counted, and its destination
        pauses: refused credentials (AUTH) until fixed, a token endpoint that is down
        (OUTAGE) as an outage."""
        assert job.lease_token is not None
        refused = decision.http_status in (400, 401, 403)  # else the token endpoint is down
        # Paused first, then released: a released job must not be claimed again by
        # another worker before the pause keeps the destination from claims.
        self.breakers.failure(
            dest, AUTH if refused else OUTAGE, decision.error, decision.delay or None
        )
        self.queue.release(job.id, job.lease_token)
        log.warning("job.waiting", error_kind=decision.error_kind, http_status=decision.http_status)
        return "queued"

    def _too_many_requests(self, dest: Destination, retry_after: float | None) -> None:
        """A 429: the destination's whole quota (every Redox destination, for Redox)
        waits for its Retry-After, not only this job; not a sign of an outage."""
        seconds = retry_after if retry_after is not None else dest.timing.retry_base_seconds
        self.limits.pause(dest, seconds)
        self.breakers.inconclusive(dest.name)  # a probe that got it: the next one probes
        self.breakers.hold(
            self.limits.sharing(dest), seconds, "the destination asked us to slow down (HTTP 429)"
        )

    def _apply(self, job: Job, decision: Decision, exc: Exception, log: Any) -> str:
        assert job.lease_token is not None
        if decision.action == "retry":
            ok = self.queue.retry_later(
                job.id,
                job.lease_token,
                delay=decision.delay,
                error_kind=decision.error_kind,
                error=decision.error,
                http_status=decision.http_status,
                remote_id=decision.remote_id,
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
            remote_id=decision.remote_id,
        )
        log.warning(
            "job.rejected",
            error_kind=decision.error_kind,
            http_status=decision.http_status,
            remote_id=decision.remote_id,
        )
        if ok:
            self._finish(job)
        return "rejected"

    def _finish(self, job: Job) -> None:
        self.filer.finish_safely(job)  # it reads the job again: ``job`` is the claimed copy

    @staticmethod
    def _sidecar(job: Job) -> dict[str, Any] | None:
        """The job's sidecar from the spool (a Delete's is its document); None when
        its fields come from the file name (filename_pattern)."""
        if is_sidecar_only(job):
            assert job.spool_document is not None
            return read_sidecar(Path(job.spool_document))
        if job.spool_sidecar:
            return read_sidecar(Path(job.spool_sidecar))
        return None

    @staticmethod
    def _fields(
        job: Job, dest: Destination, sidecar: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The effective sidecar (file-name fields under the sidecar's), made once for
        the duplicate hold and the body; None for a Delete, or when there is none
        (the send raises that SidecarError in its own order)."""
        if is_sidecar_only(job):
            return None
        if sidecar is not None and dest.filename_pattern is None:
            # effective_sidecar would return a copy of it: this job's own parsed
            # sidecar, which nothing changes from here on (the body is built from a copy)
            return sidecar
        try:
            return effective_sidecar(dest, sidecar, job.original_name)
        except SidecarError:
            return None

    def _hold_duplicates(
        self, job: Job, dest: Destination, fields: dict[str, Any] | None, slot: Slot
    ) -> str | None:
        """The job's patient key; DuplicateError when ``duplicates = "hold"`` and the
        same bytes were sent for the same patient within the window, unless the job
        is allowed through (``allow_duplicate``, set by ``chartdrop retry
        --allow-duplicate``): then the send is audited as a duplicate. A copy being
        sent by another thread is waited for first (``slot.hold_key``)."""
        assert job.lease_token is not None
        if is_sidecar_only(job) or not job.sha256:
            return None
        key = None if fields is None else patient_key_of(dest, fields)
        if key is None or dest.duplicates == "send":
            return key
        with GATE.released():  # (daemon.gate) a wait for its copy's outcome
            slot.hold_key((dest.name, job.sha256, key))
        since = self.clock() - dest.duplicate_window_days * 86400
        earlier = self.queue.earlier_duplicate(job, patient_key=key, since=since)
        if earlier is None:
            return key
        earlier_id, sent_at = earlier
        if job.allow_duplicate:
            self.queue.record_duplicate_sent(job.id, job.lease_token, earlier_id)
            self.log.info(
                "job.duplicate_allowed",
                job_id=job.id,
                destination=job.destination,
                earlier_job_id=earlier_id,
            )
            return key
        when = datetime.fromtimestamp(sent_at).astimezone().strftime("%Y-%m-%d %H:%M")
        raise DuplicateError(
            f"the same document for the same patient was already sent to this destination "
            f"on {when} (job {earlier_id}), so it was not sent again"
        )

    def _deliver(
        self,
        job: Job,
        dest: Destination,
        sidecar: dict[str, Any] | None,
        fields: dict[str, Any] | None,
        slot: Slot,
    ) -> SendResult:
        """Snapshot and send ``job``, taking its send slot just before the first
        request (or before the snapshot, for a document not kept in memory)."""
        assert job.spool_document is not None and job.lease_token is not None
        if self.limits.settings is not self.settings:  # a reload: new rates, same buckets
            self.limits.configure(self.settings)
        for client in {id(c): c for c in self.sender.http_clients()}.values():
            self.limits.watch(client)  # the sender's clients are new after a reload
        if job.size is None or job.size > PREPARE_AHEAD_MAX_BYTES:
            self._take_slot(job, dest, slot)  # its copy is not held in memory while it waits
        snap = None
        if job.sha256 and not is_sidecar_only(job):
            # an embedded document's bytes are kept as copied and checked: sent from memory
            timing = dest.timing  # (FHIR embeds every document)
            keep = timing.upload_max_bytes if dest.model == "FHIR" else timing.embed_max_bytes
            snap = snapshot(Path(job.spool_document), job.sha256, keep_bytes=keep)
            if snap is None:
                self.log.warning(
                    "job.snapshot_skipped", job_id=job.id, destination=job.destination,
                    reason="no room on the disk for the copy: sent from the spool file",
                )  # fmt: skip

        def upload(fh: BinaryIO, kind: FileKind) -> str:
            return self._upload(job, fh, kind)

        self._take_slot(job, dest, slot)
        if snap is not None and snap.data is not None:
            with self.limits.sending(dest):
                return self.sender.send(
                    job, dest, io.BytesIO(snap.data), sidecar, upload,
                    stat=(snap.size, snap.mtime), fields=fields,
                )  # fmt: skip
        with self.limits.sending(dest), open_document(Path(job.spool_document)) as fh:
            if job.sha256 and snap is None:  # what goes out must be what intake hashed
                self._unchanged(job, sha256_file(fh)[0])  # (a snapshot was checked as copied)
                fh.seek(0)
            return self.sender.send(job, dest, fh, sidecar, upload, fields=fields)

    @staticmethod
    def _unchanged(job: Job, digest: str) -> None:
        """The bytes about to go out must be the ones hashed when the job was queued."""
        if job.sha256 and digest != job.sha256:
            raise ChangedError(CHANGED)

    def _upload(self, job: Job, fh: BinaryIO, kind: FileKind) -> str:
        assert job.lease_token is not None
        uri = self.sender.redox.upload(
            fh, upload_name=f"{job.document_id}.{kind.extension}", mime=kind.mime
        )
        self._unchanged(job, sha256_file(fh)[0])  # not changed while it streamed either
        if not self.queue.record_upload(job.id, job.lease_token, uri):
            raise TransientDeliveryError("lease lost during upload")
        self.log.info("job.uploaded", job_id=job.id, destination=job.destination, size=job.size)
        return uri
