"""Building and validating the Redox request body for a document.

The sidecar is the Redox body minus what chartdrop fills in. The
destination's ``defaults`` are merged under it (the sidecar wins), then
chartdrop fills ``Meta`` and the file fields of the destination's model:

    Media    Media.FileContents, Media.FileType; FileName, DocumentID and
             CreationDateTime when absent
    Notes    Note.ContentType = "Base64 Encoded", Note.FileContents; FileName
             and DocumentID when absent
    Results  Orders[0].Results[0].Value, .ValueType = "Encapsulated Data",
             .FileType

A sidecar's top-level ``EventType`` picks the event: ``New`` (the default),
``Replace`` (needs ``OriginalDocumentID``) or ``Delete`` (a sidecar dropped
alone, no document), for Media and Notes. Every body is validated against
the ``redox`` package's model for its event before anything is sent; the
errors name fields in plain words and never repeat a value.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import itertools
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from daemon.config import Destination, RedoxSettings, key_path, parse_field_path
from daemon.errors import SidecarError
from daemon.sidecar import date_problems

PLACEHOLDER_CONTENTS = "cGxhY2Vob2xkZXI="  # validates the shape before the real file is read
EVENT_TYPES = ("New", "Replace", "Delete")


class _RedoxModels(Mapping[tuple[str, str], type[BaseModel]]):
    """The redox model each (data model, event) is validated against, imported on
    first use (``redox.media.new.New``...): the Notes and Results models are ≈15 MB
    of the daemon's memory that Media destinations never need. The daemon imports
    its destinations' models at start (:meth:`daemon.service.Service.start`)."""

    _KEYS = (("Media", "New"), ("Media", "Replace"), ("Media", "Delete"),
             ("Notes", "New"), ("Notes", "Replace"), ("Notes", "Delete"),
             ("Results", "New"))  # fmt: skip

    def __getitem__(self, key: tuple[str, str]) -> type[BaseModel]:
        if key not in self._KEYS:
            raise KeyError(key)
        model, event = key
        return cast(
            type[BaseModel],
            getattr(importlib.import_module(f"redox.{model.lower()}.{event.lower()}"), event),
        )

    def __contains__(self, key: object) -> bool:
        return key in self._KEYS

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)


REDOX_MODELS = _RedoxModels()

# Where the file's own fields live, per model; a sidecar must not set them.
SECTION = {"Media": "Media", "Notes": "Note"}
FILLED_FIELDS = {
    "Media": ("FileContents", "FileType"),
    "Notes": ("FileContents", "ContentType"),
    "Results": ("Value", "ValueType", "FileType"),
}


@dataclass(frozen=True)
class FileFacts:
    """What chartdrop knows about the document file when it builds the body."""

    file_name: str
    redox_type: str
    created: datetime


def _tree_copy(value: Any) -> Any:
    """A copy of a JSON tree (dicts, lists, scalars): what ``copy.deepcopy`` does for
    one, without its memo bookkeeping (the hot path copies a sidecar per document)."""
    if isinstance(value, dict):
        return {k: _tree_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tree_copy(v) for v in value]
    return value  # str, int, float, bool, None: immutable


def merge(defaults: Any, sidecar: Any) -> Any:
    """Deep-merge ``sidecar`` over ``defaults``: objects merge key by key, lists of
    objects merge item by item (so defaults can fill ``Orders[0].Status`` under a
    sidecar's ``Orders[0].ID``), anything else is replaced by the sidecar's value.
    Neither argument is changed, nor shares a container with the result."""
    if isinstance(defaults, dict) and isinstance(sidecar, dict):
        out = {
            k: merge(v, sidecar[k]) if k in sidecar else _tree_copy(v) for k, v in defaults.items()
        }
        for key, value in sidecar.items():
            if key not in defaults:
                out[key] = _tree_copy(value)
        return out
    if isinstance(defaults, list) and isinstance(sidecar, list):
        merged = [
            merge(d, s) if isinstance(d, dict) and isinstance(s, dict) else _tree_copy(s)
            for d, s in zip(defaults, sidecar, strict=False)
        ]
        longer = sidecar if len(sidecar) > len(defaults) else defaults
        return merged + _tree_copy(longer[len(merged) :])
    return _tree_copy(sidecar)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_type(sidecar: dict[str, Any]) -> str:
    """The sidecar's ``EventType`` (default ``New``); SidecarError if it is not one."""
    value = sidecar.get("EventType", "New")
    if value not in EVENT_TYPES:
        raise SidecarError(["EventType must be one of New, Replace or Delete"])
    return str(value)


def without_event(sidecar: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sidecar.items() if k != "EventType"}


# -- sidecar-less documents: fields from the file name -------------------------


def sidecar_from_filename(dest: Destination, file_name: str) -> dict[str, Any] | None:
    """The sidecar the destination's ``filename_pattern`` makes of ``file_name``,
    or None when the destination has no pattern or the name does not match it."""
    if dest.filename_pattern is None:
        return None
    match = re.fullmatch(dest.filename_pattern, file_name)
    if match is None:
        return None
    out: dict[str, Any] = {}
    for group, target in dest.from_filename.items():
        value = match.group(group)
        if value is not None:
            set_path(out, parse_field_path(target), value)
    return out


def set_path(tree: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    """Set ``value`` at ``path``, creating objects and list items on the way."""
    node: Any = tree
    for part, following in itertools.pairwise(path):
        empty: Any = [] if isinstance(following, int) else {}
        if isinstance(part, int):
            while len(node) <= part:
                node.append({} if not isinstance(following, int) else [])
            if not isinstance(node[part], type(empty)):
                node[part] = empty
        elif not isinstance(node.get(part), type(empty)):
            node[part] = empty
        node = node[part]
    last = path[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append(None)
    node[last] = value


# -- Redox bodies --------------------------------------------------------------


def filled_field_problems(
    model: str, sidecar: dict[str, Any], *, has_file: bool = True
) -> list[str]:
    """Fields chartdrop fills itself, which a sidecar must not set (a Delete,
    which has no file, names its FileType and FileName itself)."""
    problems = []
    if "Meta" in sidecar:
        problems.append("Meta is filled in by chartdrop; remove it from the sidecar")
    if not has_file:
        return problems
    if model == "Results":
        orders = sidecar.get("Orders")
        first = orders[0] if isinstance(orders, list) and orders else None
        results = first.get("Results") if isinstance(first, dict) else None
        section = results[0] if isinstance(results, list) and results else None
        where = "Orders[0].Results[0]"
    else:
        section = sidecar.get(SECTION[model])
        where = SECTION[model]
    if isinstance(section, dict):
        for key in FILLED_FIELDS[model]:
            if key in section:
                problems.append(
                    f"{where}.{key} is filled in by chartdrop from the file; "
                    "remove it from the sidecar"
                )
    return problems


def _meta(dest: Destination, redox: RedoxSettings, event: str, now: datetime) -> dict[str, Any]:
    destination: dict[str, Any] = {"ID": dest.redox_destination_id}
    if dest.redox_destination_name:
        destination["Name"] = dest.redox_destination_name
    meta: dict[str, Any] = {
        "DataModel": dest.model,
        "EventType": event,
        "EventDateTime": iso(now),
        "Test": redox.test,
        "Destinations": [destination],
    }
    if redox.source_id or redox.source_name:
        meta["Source"] = {
            k: v for k, v in (("ID", redox.source_id), ("Name", redox.source_name)) if v
        }
    return meta


def _file_section(body: dict[str, Any], model: str) -> dict[str, Any] | None:
    """The object the file goes into (created if absent), or None if the body's
    shape is wrong there (validation then names the problem)."""
    if model == "Results":
        orders = body.setdefault("Orders", [{}])
        if not isinstance(orders, list):
            return None
        if not orders:
            orders.append({})
        if not isinstance(orders[0], dict):
            return None
        results = orders[0].setdefault("Results", [{}])
        if not isinstance(results, list):
            return None
        if not results:
            results.append({})
        return results[0] if isinstance(results[0], dict) else None
    section = body.setdefault(SECTION[model], {})
    return section if isinstance(section, dict) else None


def build_redox(
    *,
    dest: Destination,
    redox: RedoxSettings,
    sidecar: dict[str, Any],
    document_id: str,
    facts: FileFacts | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The complete body for one document (not yet validated), with placeholder
    contents: :func:`attach` puts the real ones in. ``facts`` is None for Delete."""
    event = sidecar.get("EventType", "New")  # validate_redox names a wrong one
    event = event if event in EVENT_TYPES else "New"
    body: dict[str, Any] = merge(dest.defaults, without_event(sidecar))
    body["Meta"] = _meta(dest, redox, event, now or datetime.now(UTC))
    section = _file_section(body, dest.model)
    if section is None:
        return body
    if dest.model == "Results":
        section["ValueType"] = "Encapsulated Data"
        if facts is not None:
            section["Value"] = PLACEHOLDER_CONTENTS
            section["FileType"] = facts.redox_type
        return body
    if dest.model == "Notes":
        section["ContentType"] = "Base64 Encoded"
    section.setdefault("DocumentID", document_id)
    if facts is None:
        return body
    section["FileContents"] = PLACEHOLDER_CONTENTS
    section.setdefault("FileName", facts.file_name)
    if dest.model == "Media":
        section["FileType"] = facts.redox_type
        section.setdefault("CreationDateTime", iso(facts.created))
    return body


def attach(body: dict[str, Any], model: str, contents: str) -> None:
    """Put the file's base64 text or blob URI where ``model`` carries it."""
    if model == "Results":
        body["Orders"][0]["Results"][0]["Value"] = contents
    else:
        body[SECTION[model]]["FileContents"] = contents


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
    "Media.OriginalDocumentID": "the DocumentID of the document this one replaces",
    "Media.FileType": "the deleted file's type, e.g. PDF",
    "Media.FileName": "the deleted file's name",
    "Note.DocumentType": "the kind of note, e.g. Consent Form",
    "Note.Provider": "the responsible provider",
    "Note.Provider.ID": "the responsible provider's ID, e.g. the NPI",
    "Note.OriginalDocumentID": "the DocumentID of the note this one replaces",
    "Orders": "the lab orders",
    "Orders[0].ID": "the lab order's ID",
    "Orders[0].Status": "the order's status, e.g. Resulted",
    "Orders[0].Results[0].Code": "the result's code, e.g. a LOINC code",
    "Orders[0].Results[0].Status": "the result's status, e.g. Final",
}


@functools.lru_cache(maxsize=1)
def _field_names(_modules: int) -> frozenset[str]:
    """Every field name and alias of the pydantic models loaded (Redox's, FHIR's,
    chartdrop's): the names a sidecar's key may be, or be a misspelling of.
    ``_modules``: ``len(sys.modules)``, so it is built again once more modules
    (models) were imported, as FHIR's are when first used."""
    seen: set[type] = set()
    names: set[str] = set()
    todo: list[type] = [BaseModel]
    while todo:
        cls = todo.pop()
        subclasses: list[type] = cls.__subclasses__()
        for sub in subclasses:
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
        for name, info in getattr(cls, "model_fields", {}).items():
            names.add(name)
            if isinstance(info.alias, str):
                names.add(info.alias)
    return frozenset(names)


def _is_field_like(key: str) -> bool:
    """Whether ``key`` is a field name or close to one (a misspelling). A key that
    is neither may be patient data written as a key (an MRN, a name): never shown."""
    if len(key) > 64 or not key.isascii():
        return False
    names = _field_names(len(sys.modules))
    return key in names or bool(difflib.get_close_matches(key, names, n=1, cutoff=0.75))


UNNAMED_KEY = "(a key that is not a field name: not shown, it may hold patient data)"


def sidecar_key_path(loc: tuple[int | str, ...]) -> str:
    """:func:`key_path` of a sidecar error's location, with every key that is
    neither a field name nor a misspelling of one left out (:func:`_is_field_like`)."""
    return key_path(
        tuple(p if isinstance(p, int) or _is_field_like(p) else UNNAMED_KEY for p in loc)
    )


def describe(err: ValidationError) -> list[str]:
    """Plain-language lines, one per field, never including the value (nor a key
    that may be patient data: :func:`sidecar_key_path`)."""
    lines = []
    for e in err.errors(include_input=False, include_url=False):
        path = sidecar_key_path(tuple(e["loc"]))
        meaning = f" ({_MEANING[path]})" if path in _MEANING else ""
        lines.append(f"{path}{meaning} {_PLAIN.get(e['type'], e['msg'].lower())}")
    return sorted(set(lines))


# Fields Redox's Results schema requires that the redox package's model leaves optional.
_RESULTS_REQUIRED = (("ID", "Status"), ("Code", "Status"))


def _results_problems(body: dict[str, Any]) -> list[str]:
    problems = []
    orders = body.get("Orders")
    for i, order in enumerate(orders if isinstance(orders, list) else []):
        if not isinstance(order, dict):
            continue
        paths = [(f"Orders[{i}]", order, _RESULTS_REQUIRED[0])]
        results = order.get("Results")
        for j, result in enumerate(results if isinstance(results, list) else []):
            if isinstance(result, dict):
                paths.append((f"Orders[{i}].Results[{j}]", result, _RESULTS_REQUIRED[1]))
        for where, node, keys in paths:
            for key in keys:
                if key not in node:
                    path = f"{where}.{key}"
                    meaning = f" ({_MEANING[path]})" if path in _MEANING else ""
                    problems.append(f"{path}{meaning} {_PLAIN['missing']}")
    return problems


def _event_problems(model: str, event: str, sidecar: dict[str, Any], has_file: bool) -> list[str]:
    if (model, event) not in REDOX_MODELS:
        return [f"EventType {event} is not possible for {model} destinations (only New)"]
    problems = []
    if event == "Delete" and has_file:
        problems.append(
            "EventType Delete takes no document: drop the sidecar alone, without the file"
        )
    if event != "Delete" and not has_file:
        problems.append(f"EventType {event} needs the document file next to the sidecar")
    return problems


def validate_redox(
    body: dict[str, Any], sidecar: dict[str, Any], model: str, *, has_file: bool = True
) -> None:
    """Validate a body against the redox package's model for its event; raise
    SidecarError naming every problem at once."""
    try:
        event = event_type(sidecar)
    except SidecarError as exc:
        problems = exc.problems + filled_field_problems(model, sidecar, has_file=has_file)
        raise SidecarError(problems) from None
    problems = _event_problems(model, event, sidecar, has_file)
    problems += filled_field_problems(model, sidecar, has_file=has_file)
    problems += date_problems(sidecar)  # real dates, in the format Redox documents
    if (model, event) in REDOX_MODELS:
        try:
            # strict: a number is not text, so an MRN keeps its zeros
            REDOX_MODELS[model, event].model_validate(body, strict=True)
        except ValidationError as exc:
            problems.extend(describe(exc))
    if model == "Results":
        problems.extend(_results_problems(body))
    if problems:
        raise SidecarError(list(dict.fromkeys(problems)))
