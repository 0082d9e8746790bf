"""Building and validating the Redox request body for a document.

The sidecar is the Redox body minus what chartdrop fills in. The
destination's ``defaults`` are merged under it (the sidecar wins), then
chartdrop fills ``Meta``, the file fields, ``DocumentID`` when absent and
``CreationDateTime`` from the file. Every body is validated against the
``redox`` package's model before anything is sent; the errors name fields in
plain words and never repeat a value.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redox.media.new import New as MediaNew

from daemon.config import Destination, RedoxSettings, key_path
from daemon.errors import SidecarError

# Fields chartdrop fills from the file itself; a sidecar must not set them.
FILLED_MEDIA_FIELDS = ("FileContents", "FileType")
PLACEHOLDER_CONTENTS = "cGxhY2Vob2xkZXI="  # validates the shape before the real file is read


@dataclass(frozen=True)
class FileFacts:
    """What chartdrop knows about the file when it builds the body."""

    file_name: str
    redox_type: str
    contents: str  # base64 of the bytes, or the blob URI
    created: datetime


def merge(defaults: dict[str, Any], sidecar: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``sidecar`` over ``defaults``: objects merge, anything else is replaced."""
    out = copy.deepcopy(defaults)
    for key, value in sidecar.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def filled_field_problems(sidecar: dict[str, Any]) -> list[str]:
    """Fields chartdrop fills itself, which a sidecar must not set."""
    problems = []
    if "Meta" in sidecar:
        problems.append("Meta is filled in by chartdrop; remove it from the sidecar")
    media = sidecar.get("Media")
    if isinstance(media, dict):
        for key in FILLED_MEDIA_FIELDS:
            if key in media:
                problems.append(
                    f"Media.{key} is filled in by chartdrop from the file; "
                    "remove it from the sidecar"
                )
    return problems


def build_media(
    *,
    dest: Destination,
    redox: RedoxSettings,
    sidecar: dict[str, Any],
    document_id: str,
    facts: FileFacts,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The complete Media New body for one document (not yet validated)."""
    body = merge(dest.defaults, sidecar)
    meta: dict[str, Any] = {
        "DataModel": "Media",
        "EventType": "New",
        "EventDateTime": _iso(now or datetime.now(UTC)),
        "Test": redox.test,
        "Destinations": [
            {"ID": dest.redox_destination_id}
            | ({"Name": dest.redox_destination_name} if dest.redox_destination_name else {})
        ],
    }
    if redox.source_id or redox.source_name:
        meta["Source"] = {
            k: v for k, v in (("ID", redox.source_id), ("Name", redox.source_name)) if v
        }
    body["Meta"] = meta
    media = body.setdefault("Media", {})
    if not isinstance(media, dict):
        return body  # validation names the problem
    media["FileContents"] = facts.contents
    media["FileType"] = facts.redox_type
    media.setdefault("FileName", facts.file_name)
    media.setdefault("DocumentID", document_id)
    media.setdefault("CreationDateTime", _iso(facts.created))
    return body


_PLAIN = {
    "missing": "is required but missing",
    "extra_forbidden": "is not a field Redox knows (check its spelling)",
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list [ ... ]",
    "dict_type": "must be an object { ... }",
    "model_type": "must be an object { ... }",
    "model_attributes_type": "must be an object { ... }",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
}


# What the most common fields mean, for the front desk reading an .error.txt.
_MEANING = {
    "Patient": "the patient",
    "Patient.Identifiers": "the patient's ID numbers, e.g. the MRN",
    "Patient.Identifiers[0].ID": "the patient's ID number, e.g. the MRN",
    "Patient.Identifiers[0].IDType": "the kind of patient ID, e.g. MR",
    "Patient.Demographics.DOB": 'the date of birth, as text: "YYYY-MM-DD"',
    "Media.DocumentType": "the kind of document, e.g. Consent Form",
    "Media.Provider": "the responsible provider",
    "Media.Provider.ID": "the responsible provider's ID, e.g. the NPI",
    "Media.Availability": "Available or Unavailable",
}


def describe(err: ValidationError) -> list[str]:
    """Plain-language lines, one per field, never including the value."""
    lines = []
    for e in err.errors(include_input=False, include_url=False):
        path = key_path(tuple(e["loc"]))
        meaning = f" ({_MEANING[path]})" if path in _MEANING else ""
        lines.append(f"{path}{meaning} {_PLAIN.get(e['type'], e['msg'].lower())}")
    return sorted(set(lines))


def validate_media(body: dict[str, Any], sidecar: dict[str, Any]) -> None:
    """Validate a Media New body against the redox package's model; raise SidecarError
    naming every problem at once."""
    problems = filled_field_problems(sidecar)
    try:
        MediaNew.model_validate(body, strict=True)  # a number is not text: an MRN keeps its zeros
    except ValidationError as exc:
        problems.extend(describe(exc))
    if problems:
        raise SidecarError(problems)


def check_sidecar(
    *, dest: Destination, redox: RedoxSettings, sidecar: dict[str, Any], file_name: str
) -> None:
    """Offline check of a sidecar for ``dest``: every problem at once, or nothing."""
    facts = FileFacts(
        file_name=file_name,
        redox_type="PDF",
        contents=PLACEHOLDER_CONTENTS,
        created=datetime.now(UTC),
    )
    body = build_media(
        dest=dest, redox=redox, sidecar=sidecar, document_id="placeholder", facts=facts
    )
    validate_media(body, sidecar)
