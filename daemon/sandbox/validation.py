"""Validation of ``/endpoint`` bodies against Redox's published JSON schemas.

The body is checked against the draft-04 schema of its ``(DataModel,
EventType)`` (shipped in ``daemon/sandbox/schemas/``, from
``redox-contrib/models``; see the README there) with ``jsonschema`` - not with
the ``redox`` package's pydantic models chartdrop builds its own bodies with,
so a bug in those models is caught here instead of being repeated. Then the
sandbox's own rules: at least one ``Meta.Destinations`` entry, and every file
field either valid base64 or the URI of a blob uploaded to this sandbox by the
same client.

The schemas check JSON types (a number is not text) and required fields.
They do not check, so neither does the sandbox:

* unknown keys: the schemas allow keys they do not list (no
  ``additionalProperties``), and they are older than the ``redox`` models, so
  refusing unlisted keys would refuse fields Redox has added since
  (``Extensions``, ``Note.FileType``, ``Visit.PatientClass``...). chartdrop's
  own validation refuses a misspelt key before anything is sent;
* value sets and formats (``Media.Availability``, ``Media.FileType``,
  ``Note.ContentType``, dates): the schemas only say "string";
* the items of untyped lists (``EmailAddresses``, ``Credentials``, ``Notes``).

Error texts name fields by their JSON path (``Patient.Demographics.DOB: must
be of type string or null``) and never contain the values that were sent:
request bodies are full of PHI. They are written from the failing schema
keyword and the schema's own words, never from ``jsonschema``'s messages,
which quote the value.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from functools import cache
from importlib.resources import files
from typing import Any

from jsonschema import Draft4Validator, ValidationError

__all__ = [
    "SCHEMAS",
    "BlobResolver",
    "document_id_of",
    "schema_validator",
    "validate_body",
]

SCHEMAS: dict[tuple[str, str], str] = {
    ("Media", "New"): "media/new.json",
    ("Media", "Replace"): "media/replace.json",
    ("Media", "Delete"): "media/delete.json",
    ("Notes", "New"): "notes/new.json",
    ("Notes", "Replace"): "notes/replace.json",
    ("Notes", "Delete"): "notes/delete.json",
    ("Results", "New"): "results/new.json",
}
"""The ``(DataModel, EventType)`` pairs ``/endpoint`` accepts, with their schema
file under ``daemon/sandbox/schemas/``."""

BlobResolver = Callable[[str], bool]
"""Given a file field's value that starts with the sandbox's blob URL, says
whether it names a blob the requesting client uploaded."""

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAX_NAME = 40  # longest DataModel/EventType quoted back in an error


@cache
def schema_validator(data_model: str, event_type: str) -> Draft4Validator:
    """The draft-04 validator for a supported pair (KeyError for another), loaded
    from the package's data once."""
    parts = SCHEMAS[data_model, event_type].split("/")
    resource = files("daemon.sandbox").joinpath("schemas", *parts)
    schema = json.loads(resource.read_text(encoding="utf-8"))
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema)


def _safe_name(value: object) -> str:
    """A DataModel/EventType value fit to quote in an error (they are not PHI)."""
    if not isinstance(value, str):
        return "(not a string)"
    cleaned = re.sub(r"[^A-Za-z0-9 _-]", "?", value)[:_MAX_NAME]
    return repr(cleaned)


def _loc(parts: Iterable[int | str]) -> str:
    """``("Orders", 0, "Results")`` -> ``"Orders[0].Results"``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(body)"


def _schema_errors(errors: Iterable[ValidationError]) -> list[str]:
    """One ``"<path>: <problem>"`` per failing field, from the schema's side of
    each error only (``error.message`` quotes the value sent, so it is not used)."""
    texts: list[str] = []
    for err in errors:
        path = list(err.absolute_path)
        wanted: Any = err.validator_value  # the schema's side: a list of names, a type
        if err.validator == "required" and isinstance(err.instance, dict):
            for name in wanted:
                if name not in err.instance:
                    texts.append(f"{_loc([*path, name])}: Field required")
        elif err.validator == "type":
            names = [wanted] if isinstance(wanted, str) else list(wanted)
            texts.append(f"{_loc(path)}: must be of type {' or '.join(names)}")
        else:  # the schemas use no other keyword today
            texts.append(f"{_loc(path)}: does not match the schema ({err.validator})")
    return list(dict.fromkeys(texts))


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
    if (dm, et) not in SCHEMAS:
        supported = ", ".join(f"{m}.{e}" for m, e in SCHEMAS)
        text = (
            f"Meta: unsupported DataModel/EventType {_safe_name(dm)}/{_safe_name(et)}; "
            f"this sandbox accepts {supported}"
        )
        return dm, et, [text]

    errors = _schema_errors(schema_validator(dm, et).iter_errors(body))
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
