"""Validation of ``/endpoint`` bodies against the Redox data models.

The body is checked with the ``redox`` package's pydantic models (which forbid
unknown keys), then the sandbox's own rules: at least one
``Meta.Destinations`` entry, and every file field either valid base64 or the
URI of a blob uploaded to this sandbox by the same client.

Error texts name fields (``Patient.Demographics.DOB: Input should be a valid
string``) and never contain the values that were sent: request bodies are
full of PHI.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from daemon.payload import REDOX_MODELS

__all__ = [
    "MODELS",
    "BlobResolver",
    "document_id_of",
    "validate_body",
]

MODELS = REDOX_MODELS
"""The ``(DataModel, EventType)`` pairs ``/endpoint`` accepts, with their models
(the same table chartdrop validates its own bodies with)."""

BlobResolver = Callable[[str], bool]
"""Given a file field's value that starts with the sandbox's blob URL, says
whether it names a blob the requesting client uploaded."""

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAX_NAME = 40  # longest DataModel/EventType quoted back in an error


def _safe_name(value: object) -> str:
    """A DataModel/EventType value fit to quote in an error (they are not PHI)."""
    if not isinstance(value, str):
        return "(not a string)"
    cleaned = re.sub(r"[^A-Za-z0-9 _-]", "?", value)[:_MAX_NAME]
    return repr(cleaned)


def _loc(parts: tuple[int | str, ...] | list[int | str]) -> str:
    """``("Orders", 0, "Results")`` -> ``"Orders[0].Results"``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(body)"


def _pydantic_errors(exc: ValidationError) -> list[str]:
    """One ``"<loc>: <message>"`` per error, never including the input value."""
    texts: list[str] = []
    for err in exc.errors(include_url=False, include_input=True):
        msg = err["msg"]
        value = err.get("input")
        # Belt and braces: pydantic's messages do not quote inputs, but if one
        # ever did, fall back to the bare error type rather than leak a value.
        if isinstance(value, str | int | float) and str(value) and str(value) in msg:
            msg = err["type"]
        texts.append(f"{_loc(err['loc'])}: {msg}")
    return texts


def _file_fields(data_model: str, body: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The body's file fields as ``(location, value, must_be_base64)``."""
    fields: list[tuple[str, str, bool]] = []
    if data_model == "Media":
        value = body.get("Media", {}).get("FileContents")
        if isinstance(value, str):
            fields.append(("Media.FileContents", value, True))
    elif data_model == "Notes":
        note = body.get("Note", {})
        value = note.get("FileContents")
        if isinstance(value, str):
            fields.append(("Note.FileContents", value, note.get("ContentType") == "Base64 Encoded"))
    elif data_model == "Results":
        for i, order in enumerate(body.get("Orders") or []):
            for j, result in enumerate(order.get("Results") or []):
                if result.get("ValueType") == "Encapsulated Data":
                    value = result.get("Value")
                    if isinstance(value, str):
                        fields.append((f"Orders[{i}].Results[{j}].Value", value, True))
    return fields


def _check_file_field(
    loc: str, value: str, must_be_base64: bool, blob_prefix: str, resolve: BlobResolver
) -> str | None:
    """An error text for one file field, or None when it is acceptable."""
    if value.startswith(blob_prefix):
        if resolve(value):
            return None
        return f"{loc}: references a blob that was not uploaded to this sandbox by this client"
    if _URI.match(value):
        return f"{loc}: URI does not reference this sandbox's blob store"
    if not must_be_base64:
        return None
    if not value:
        return f"{loc}: file contents are empty"
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return f"{loc}: is neither valid base64 nor a blob URI"
    if len(value) % 4:  # b64decode tolerates surplus padding; Redox's decoders may not
        return f"{loc}: is neither valid base64 nor a blob URI"
    return None


def validate_body(
    body: dict[str, Any], *, blob_prefix: str, resolve_blob: BlobResolver
) -> tuple[str | None, str | None, list[str]]:
    """Validate a parsed ``/endpoint`` body.

    Returns ``(data_model, event_type, errors)``; the first two are the body's
    ``Meta.DataModel`` / ``Meta.EventType`` when they are strings (for echoing
    in the answer), and ``errors`` is empty when the body is acceptable.
    """
    meta = body.get("Meta")
    if not isinstance(meta, dict):
        return None, None, ["Meta: Field required (an object with DataModel and EventType)"]
    data_model, event_type = meta.get("DataModel"), meta.get("EventType")
    dm = data_model if isinstance(data_model, str) else None
    et = event_type if isinstance(event_type, str) else None
    if dm is None or et is None:
        missing = [n for n, v in (("DataModel", dm), ("EventType", et)) if v is None]
        return dm, et, [f"Meta.{n}: Field required (a string)" for n in missing]
    model = MODELS.get((dm, et))
    if model is None:
        supported = ", ".join(f"{m}.{e}" for m, e in MODELS)
        text = (
            f"Meta: unsupported DataModel/EventType {_safe_name(dm)}/{_safe_name(et)}; "
            f"this sandbox accepts {supported}"
        )
        return dm, et, [text]

    errors: list[str] = []
    try:
        model.model_validate(body, strict=True)  # JSON types: a number is not text
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc))
    destinations = meta.get("Destinations")
    if not isinstance(destinations, list) or not destinations:
        errors.append("Meta.Destinations: at least one destination is required")
    if errors:
        return dm, et, errors

    for loc, value, must_be_base64 in _file_fields(dm, body):
        problem = _check_file_field(loc, value, must_be_base64, blob_prefix, resolve_blob)
        if problem is not None:
            errors.append(problem)
    return dm, et, errors


def document_id_of(body: object) -> str | None:
    """Best-effort document ID of a body, for counting resends.

    ``Media.DocumentID`` or ``Note.DocumentID``; for Results, ``Orders[0].ID``.
    """
    if not isinstance(body, dict):
        return None
    for section in ("Media", "Note"):
        part = body.get(section)
        if isinstance(part, dict) and isinstance(part.get("DocumentID"), str | int):
            return str(part["DocumentID"])
    orders = body.get("Orders")
    if isinstance(orders, list) and orders and isinstance(orders[0], dict):
        order_id = orders[0].get("ID")
        if isinstance(order_id, str | int):
            return str(order_id)
    return None
