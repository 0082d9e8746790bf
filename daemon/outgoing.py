"""What goes out for one job, per destination model, and the offline checks.

The same functions serve the intake (check before queueing, so a bad
sidecar fails at once with every problem named), ``chartdrop validate``, and
delivery (build, send). Delivery re-reads everything from the spool and
builds the body again; the model validation is skipped only when this process
already validated the same inputs under the same config (:class:`_Validated`),
so what is sent is exactly what was checked, plus the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import httpx

from daemon import fhir
from daemon.config import Destination, RedoxSettings, Settings
from daemon.content import FileKind, check_kind_matches_extension, detect
from daemon.errors import ContentError, SidecarError, TooLargeError
from daemon.fhir import FhirClient
from daemon.http import SendResult
from daemon.names import is_sidecar
from daemon.payload import (
    FileFacts,
    attach,
    build_redox,
    iso,
    merge,
    sidecar_from_filename,
    validate_redox,
)
from daemon.queue import Job
from daemon.redox import Embedded, RedoxClient
from daemon.sidecar import date_problems

PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"  # a job's DocumentIDs are UUIDs


def is_sidecar_only(job: Job) -> bool:
    """A job made of a sidecar alone (an EventType Delete): its "document" is the sidecar."""
    return job.spool_sidecar is None and job.sidecar_name is None and is_sidecar(job.original_name)


def effective_sidecar(
    dest: Destination, sidecar: dict[str, Any] | None, file_name: str
) -> dict[str, Any]:
    """The sidecar file's fields over those the destination's ``filename_pattern``
    takes from the file name. SidecarError when there is neither."""
    from_name = sidecar_from_filename(dest, file_name)
    if sidecar is None:
        if from_name is None:
            if dest.filename_pattern is not None:
                raise SidecarError(
                    [
                        "no sidecar (.json) came with the document, and its file name does "
                        "not match the pattern this folder expects (ask IT for the naming rule)"
                    ]
                )
            raise SidecarError(["no sidecar (.json) file came with the document"])
        return from_name
    merged: dict[str, Any] = merge(from_name or {}, sidecar)
    return merged


def patient_key(dest: Destination, sidecar: dict[str, Any] | None, file_name: str) -> str | None:
    """A hash of the patient identifier a document is for (``Patient.Identifiers[0]``
    after file-name fields and defaults), for the duplicate hold; None without one.
    The hash, not the identifier, is kept on the job."""
    try:
        fields = effective_sidecar(dest, sidecar, file_name)
    except SidecarError:
        return None
    return patient_key_of(dest, fields)


def patient_key_of(dest: Destination, fields: dict[str, Any]) -> str | None:
    """:func:`patient_key` of an effective sidecar (:func:`effective_sidecar`'s
    result). Only ``Patient`` is merged over the defaults (``merge`` merges each
    top-level key on its own), not the whole sidecar; ``fields`` is not changed."""
    defaults = dest.defaults
    if "Patient" in fields:
        patient = merge(defaults.get("Patient"), fields["Patient"])
    else:
        patient = defaults.get("Patient")  # read only: no copy needed
    ids = patient.get("Identifiers") if isinstance(patient, dict) else None
    first = ids[0] if isinstance(ids, list) and ids else None
    if not isinstance(first, dict) or not isinstance(first.get("ID"), str):
        return None
    id_type = first.get("IDType")
    raw = f"{id_type if isinstance(id_type, str) else ''}\x1f{first['ID']}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def check_kind(dest: Destination, kind: FileKind | None, file_name: str) -> FileKind:
    """The content's kind, refused when unknown, not accepted here, or contradicting
    the file's extension (a TIFF named .pdf: something went wrong upstream)."""
    if kind is None:
        accepted = ", ".join(dest.accepted_types)
        raise ContentError(
            f"the file's content is not a document type this folder takes ({accepted})"
        )
    if kind.redox_type not in dest.accepted_types:
        accepted = ", ".join(dest.accepted_types)
        raise ContentError(
            f"the file is a {kind.redox_type} file; this folder takes only {accepted}"
        )
    if not check_kind_matches_extension(kind, file_name):
        ext = file_name.rpartition(".")[2].lower()
        raise ContentError(
            f"the file's name ends in .{ext} but its content is a {kind.redox_type} file"
        )
    return kind


NO_FHIR_DELETE = "a sidecar without a document cannot be sent to FHIR"


class _Validated:
    """Bodies this process has already validated, so a job's body is validated once
    (at intake) and not again at delivery: a bounded map from a fingerprint of the
    inputs that decide the verdict (the effective sidecar, the file's name and type)
    to the exact config objects it was validated against. A reload makes new
    config objects, so nothing validated under the old config is trusted after it.
    What the fingerprint leaves out is filled by chartdrop with values of a fixed
    type (DocumentID, EventDateTime, CreationDateTime: text), which cannot change
    the verdict."""

    SIZE = 4096

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, tuple[Destination, RedoxSettings]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(dest: Destination, sidecar: dict[str, Any], facts: FileFacts | None) -> bytes:
        inputs = [sidecar, None if facts is None else (facts.file_name, facts.redox_type)]
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).digest()

    def known(self, key: bytes, dest: Destination, redox: RedoxSettings) -> bool:
        with self._lock:
            seen = self._seen.get(key)
            return seen is not None and seen[0] is dest and seen[1] is redox

    def add(self, key: bytes, dest: Destination, redox: RedoxSettings) -> None:
        with self._lock:
            self._seen[key] = (dest, redox)  # holding them: their ids are never reused
            self._seen.move_to_end(key)
            while len(self._seen) > self.SIZE:
                self._seen.popitem(last=False)


VALIDATED = _Validated()


def redox_body(
    *,
    dest: Destination,
    settings: Settings,
    sidecar: dict[str, Any],
    document_id: str,
    facts: FileFacts | None,
) -> dict[str, Any]:
    """The validated Redox body (with placeholder contents) or SidecarError.
    ``facts`` None: the sidecar came alone (a Delete)."""
    body = build_redox(
        dest=dest, redox=settings.redox, sidecar=sidecar, document_id=document_id, facts=facts
    )
    try:
        key = _Validated.key(dest, sidecar, facts)
    except (TypeError, ValueError):  # not a JSON tree (never from a parsed sidecar): validate
        key = None
    if key is not None and VALIDATED.known(key, dest, settings.redox):
        return body
    validate_redox(body, sidecar, dest.model, has_file=facts is not None)
    if key is not None:
        VALIDATED.add(key, dest, settings.redox)
    return body


def fhir_resource(
    *,
    settings: Settings,
    sidecar: dict[str, Any],
    document_id: str,
    file_name: str,
    mime: str,
    data: bytes,
    created: datetime,
) -> dict[str, Any]:
    """The validated FHIR Media resource for ``data``, or SidecarError."""
    dates = date_problems(sidecar)  # real dates, in the format Redox documents
    try:
        parsed = fhir.parse_sidecar(sidecar, settings.fhir)
    except SidecarError as exc:
        raise SidecarError(dates + exc.problems) from None
    if dates:
        raise SidecarError(dates)
    resource = fhir.build_media(
        settings=settings.fhir,
        sidecar=parsed,
        document_id=document_id,
        file_name=file_name,
        mime=mime,
        data_b64=base64.b64encode(data).decode("ascii"),
        size=len(data),
        sha1_b64=base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode(),
        created=iso(created),
    )
    fhir.validate_media(resource)
    return resource


def check_sidecar(
    *,
    dest: Destination,
    settings: Settings,
    sidecar: dict[str, Any],
    file_name: str,
    redox_type: str | None = "PDF",
) -> None:
    """Offline check of a sidecar for ``dest``: every problem at once, or nothing.
    ``redox_type`` None means the sidecar came alone (a Delete)."""
    now = datetime.now(UTC)
    if dest.model == "FHIR":
        if redox_type is None:
            raise SidecarError([NO_FHIR_DELETE])
        fhir_resource(
            settings=settings,
            sidecar=sidecar,
            document_id=PLACEHOLDER_ID,
            file_name=file_name,
            mime="application/pdf",
            data=b"x",
            created=now,
        )
        return
    facts = None if redox_type is None else FileFacts(file_name, redox_type, now)
    redox_body(
        dest=dest, settings=settings, sidecar=sidecar, document_id=PLACEHOLDER_ID, facts=facts
    )


@dataclass
class Sender:
    """Sends one job's document (already open from the spool) to its destination.

    ``upload`` stores and returns a blob URI (the caller records it on the job
    so a retry does not upload again).
    """

    settings: Settings
    redox: RedoxClient
    fhir: FhirClient

    def http_clients(self) -> list[httpx.Client]:
        """Every HTTP client (one per TLS trust: Redox, FHIR, FHIR destinations)."""
        return [self.redox.http, self.fhir.http, *self.fhir.dest_http.values()]

    def send(
        self,
        job: Job,
        dest: Destination,
        fh: BinaryIO,
        sidecar: dict[str, Any] | None,
        upload: Callable[[BinaryIO, FileKind], str],
        *,
        stat: tuple[int, float] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> SendResult:
        """``stat``: the document's size and mtime when ``fh`` is not a file (the
        snapshot's checked bytes, in memory); else they come from ``fstat``.
        ``fields``: :func:`effective_sidecar` of ``sidecar``, when the caller has it
        already (None: made here)."""
        if stat is None:
            st = os.fstat(fh.fileno())
            stat = (st.st_size, st.st_mtime)
        size, mtime = stat
        if is_sidecar_only(job):
            return self._send_sidecar_only(job, dest, sidecar or {})
        timing = dest.timing
        limit = timing.upload_max_bytes
        if size > limit:
            raise TooLargeError(f"the file is {size:,} bytes; the limit is {limit:,} bytes")
        kind = check_kind(dest, detect(fh), job.original_name)
        if fields is None:
            fields = effective_sidecar(dest, sidecar, job.original_name)
        created = datetime.fromtimestamp(mtime, UTC)
        if dest.model == "FHIR":
            return self._send_fhir(job, dest, fh, fields, kind, size, created)
        facts = FileFacts(job.original_name, kind.redox_type, created)
        body = redox_body(  # validated before any network call
            dest=dest, settings=self.settings, sidecar=fields, document_id=job.document_id,
            facts=facts,
        )  # fmt: skip
        if size <= timing.embed_max_bytes:
            # the base64 bytes go into the encoded JSON as they are (no str round trip)
            embedded = Embedded(f"chartdrop-file-{uuid.uuid4().hex}", base64.b64encode(fh.read()))
            attach(body, dest.model, embedded.marker)
            return self.redox.send(body, embedded)
        attach(body, dest.model, job.blob_uri or upload(fh, kind))
        return self.redox.send(body)

    def _send_sidecar_only(
        self, job: Job, dest: Destination, sidecar: dict[str, Any]
    ) -> SendResult:
        if dest.model == "FHIR":
            raise SidecarError([NO_FHIR_DELETE])
        body = redox_body(
            dest=dest, settings=self.settings, sidecar=sidecar, document_id=job.document_id,
            facts=None,
        )  # fmt: skip
        return self.redox.send(body)

    def _send_fhir(
        self,
        job: Job,
        dest: Destination,
        fh: BinaryIO,
        fields: dict[str, Any],
        kind: FileKind,
        size: int,
        created: datetime,
    ) -> SendResult:
        data = fh.read()
        if len(data) != size:
            raise ContentError("the file changed while it was being sent")
        resource = fhir_resource(
            settings=self.settings,
            sidecar=fields,
            document_id=job.document_id,
            file_name=job.original_name,
            mime=kind.mime,
            data=data,
            created=created,
        )
        del data
        return self.fhir.create_media(dest, resource)
