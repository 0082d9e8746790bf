"""Validation of ``POST /fhir/r4/Media`` bodies and headers.

Three layers, every problem reported at once within a layer:

1. the FHIR R4 model (``fhir.resources``' R4B ``Media``, which forbids unknown
   elements) plus what chartdrop's contract requires and the model does not
   check (JSON types, ``status`` from its value set, ``subject.identifier``,
   ``identifier[0]``, ``content.size`` / ``hash`` / ``data`` or ``url``) - 400;
2. the content's integrity: ``size`` and ``hash`` (base64 SHA-1) of the decoded
   ``content.data`` or of the uploaded blob ``content.url`` names - 422;
3. the ``If-None-Exist`` header (``identifier=<system>|<value>`` only).

chartdrop builds its resource as a plain dict (``daemon.fhir.build_media``), then
checks it with the same ``fhir.resources`` model before sending, so layer 1's
model check repeats chartdrop's own; the contract checks and layers 2 and 3 are
the sandbox's alone.

Each problem is an :class:`Issue` naming the failing element as a FHIRPath
(``Media.content.hash``); diagnostics never contain the values that were
sent: resources are full of PHI.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.media import Media
from pydantic import ValidationError

__all__ = [
    "MEDIA_STATUSES",
    "BlobDigest",
    "Issue",
    "check_content",
    "check_log_cdata",
    "identifier_value_of",
    "parse_if_none_exist",
    "validate_media",
]

MEDIA_STATUSES = (
    "preparation",
    "in-progress",
    "not-done",
    "on-hold",
    "stopped",
    "completed",
    "entered-in-error",
    "unknown",
)
"""FHIR R4 ``EventStatus``, the value set of ``Media.status``."""

BlobDigest = Callable[[str], tuple[int, bytes] | None]
"""Given a ``content.url`` starting with the sandbox's blob URL: the blob's
``(size, sha1 digest)`` when the requesting client uploaded it, else None."""


@dataclass(frozen=True)
class Issue:
    """One problem, ready for an ``OperationOutcome.issue``.

    ``code`` is a FHIR IssueType (``structure``, ``required``, ``value``,
    ``invariant``, ``invalid``); ``expression`` the FHIRPath of the element
    (None for the body or a header as a whole).
    """

    code: str
    expression: str | None
    diagnostics: str


def _path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """``("content", "size")`` -> ``"Media.content.size"``; list indexes in brackets."""
    out = "Media"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += "." + ("resourceType" if part == "resource_type" else part)
    return out


def _strings_in(value: object, depth: int = 0) -> list[str]:
    """Every value inside ``value`` as text (bounded), to make sure none is quoted back.

    Keys are element names, not values: naming an unknown element is the point.
    """
    if isinstance(value, str):
        return [value]
    if depth > 6:
        return []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings_in(v, depth + 1)]
    if isinstance(value, list):
        return [s for v in value for s in _strings_in(v, depth + 1)]
    return [str(value)] if isinstance(value, int | float) else []


def _model_issues(body: dict[str, Any]) -> list[Issue]:
    try:
        Media.model_validate(body)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False, include_input=True):
            msg = str(err["msg"])
            # pydantic's and fhir-core's messages do not quote inputs today; if
            # one ever did, fall back to the bare error type rather than leak it.
            if any(len(s) >= 3 and s in msg for s in _strings_in(err.get("input"))):
                msg = str(err["type"])
            kind = err["type"]
            code = {"missing": "required", "extra_forbidden": "structure"}.get(kind, "value")
            if not err["loc"]:
                code = "invariant"
            path = _path(err["loc"])
            issues.append(Issue(code, path, f"{path}: {msg}"))
        return issues
    return []


def _get(body: object, *keys: str | int) -> object:
    """``body[k1][k2]...``, or None as soon as a step is missing or the wrong type."""
    for key in keys:
        if isinstance(key, int):
            if not isinstance(body, list) or len(body) <= key:
                return None
            body = body[key]
        elif isinstance(body, dict):
            body = body.get(key)
        else:
            return None
    return body


_REQUIRED_STRINGS: tuple[tuple[str | int, ...], ...] = (
    ("subject", "identifier", "system"),
    ("subject", "identifier", "value"),
    ("identifier", 0, "system"),
    ("identifier", 0, "value"),
    ("content", "contentType"),
    ("content", "hash"),
)


def _contract_issues(body: dict[str, Any]) -> list[Issue]:
    """What chartdrop's contract requires beyond the FHIR model."""
    issues: list[Issue] = []
    status = body.get("status")
    if status is None:
        issues.append(Issue("required", "Media.status", "Media.status: Field required"))
    elif status not in MEDIA_STATUSES:
        text = f"Media.status: must be one of {', '.join(MEDIA_STATUSES)}"
        issues.append(Issue("value", "Media.status", text))
    for keys in _REQUIRED_STRINGS:
        value, path = _get(body, *keys), _path(keys)
        if value is None:
            text = f"{path}: required by this sandbox (a non-empty string)"
            issues.append(Issue("required", path, text))
        elif not isinstance(value, str) or not value.strip():
            issues.append(Issue("value", path, f"{path}: must be a non-empty string"))
    size = _get(body, "content", "size")
    if size is None:
        text = "Media.content.size: required by this sandbox (the byte count)"
        issues.append(Issue("required", "Media.content.size", text))
    elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
        text = "Media.content.size: must be a JSON integer >= 0"
        issues.append(Issue("value", "Media.content.size", text))
    data, url = _get(body, "content", "data"), _get(body, "content", "url")
    if data is None and url is None:
        text = "Media.content: needs data (base64) or url (an uploaded blob)"
        issues.append(Issue("required", "Media.content", text))
    for name, value in (("data", data), ("url", url)):
        if value is not None and (not isinstance(value, str) or not value):
            path = f"Media.content.{name}"
            issues.append(Issue("value", path, f"{path}: must be a non-empty string"))
    if isinstance(data, str) and data and _b64(data) is None:
        text = "Media.content.data: is not valid base64"
        issues.append(Issue("value", "Media.content.data", text))
    return issues


def _b64(value: str) -> bytes | None:
    if len(value) % 4:  # b64decode tolerates surplus padding; FHIR servers may not
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def validate_media(body: object) -> list[Issue]:
    """Problems that make ``body`` an invalid Media for this sandbox (answer 400)."""
    if not isinstance(body, dict):
        return [Issue("structure", None, "the body must be a JSON object (a FHIR resource)")]
    if body.get("resourceType") != "Media":
        return [Issue("invalid", None, "resourceType: must be 'Media'")]
    issues = _model_issues(body)
    reported = {i.expression for i in issues if i.expression}
    for issue in _contract_issues(body):
        path = issue.expression or ""
        # Skip what the model already reported, at this element or above it.
        if not any(path == r or path.startswith((f"{r}.", f"{r}[")) for r in reported):
            issues.append(issue)
    return issues


def check_content(
    body: dict[str, Any], *, blob_prefix: str, blob_digest: BlobDigest
) -> list[Issue]:
    """Integrity of a valid Media's content (answer 422): ``size`` and ``hash``
    match the decoded ``data`` and the blob ``url`` names."""
    content: dict[str, Any] = body["content"]
    size, hash_ = content["size"], _b64(content["hash"]) or b""
    issues: list[Issue] = []
    found: list[tuple[str, int, bytes]] = []
    if "data" in content:
        raw = _b64(content["data"]) or b""
        found.append(("content.data", len(raw), hashlib.sha1(raw, usedforsecurity=False).digest()))
    if "url" in content:
        url = content["url"]
        digest = blob_digest(url) if url.startswith(blob_prefix) else None
        if not url.startswith(blob_prefix):
            text = "Media.content.url: does not reference this sandbox's blob store"
            issues.append(Issue("value", "Media.content.url", text))
        elif digest is None:
            text = (
                "Media.content.url: references a blob that was not uploaded "
                "to this sandbox by this client"
            )
            issues.append(Issue("value", "Media.content.url", text))
        else:
            found.append(("the blob content.url names", *digest))
    for what, actual_size, actual_sha1 in found:
        if actual_size != size:
            text = f"Media.content.size: does not match the length of {what}"
            issues.append(Issue("value", "Media.content.size", text))
        if actual_sha1 != hash_:
            text = f"Media.content.hash: is not the base64 SHA-1 of {what}"
            issues.append(Issue("value", "Media.content.hash", text))
    return issues


def parse_if_none_exist(header: str) -> tuple[str, str] | None:
    """``identifier=<system>|<value>`` (URL-encoded or not) -> ``(system, value)``.

    None for anything else: this sandbox supports no other search parameter.
    """
    params = urllib.parse.parse_qs(header.strip().lstrip("?"), keep_blank_values=True)
    values = params.get("identifier")
    if set(params) != {"identifier"} or values is None or len(values) != 1:
        return None
    system, sep, value = values[0].partition("|")
    if not sep or not system or not value:
        return None
    return system, value


def check_log_cdata(value: str | None, fmt: str | None) -> Issue | None:
    """The optional ``log-cdata`` / ``log-cdata-format`` headers (``kv`` or ``json``)."""
    if fmt is not None and fmt not in ("kv", "json"):
        return Issue("value", None, "log-cdata-format: must be kv or json")
    if fmt == "json" and value is not None:
        try:
            json.loads(value)
        except ValueError:
            return Issue("value", None, "log-cdata: is not JSON (log-cdata-format is json)")
    return None


def identifier_value_of(body: object) -> str | None:
    """Best-effort ``identifier[0].value`` of a body, for counting resends."""
    value = _get(body, "identifier", 0, "value")
    return value if isinstance(value, str) else None
