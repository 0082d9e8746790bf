"""Configuration errors in plain words, for the admin reading ``chartdrop check``.

pydantic says "Extra inputs are not permitted" and ``destination[1].inbox``;
an admin needs ``[[destination]] "letters" inbox: is required but missing``.
Each line names the table (a destination by its ``name``), the key and what
is wrong, suggests the closest known key for a typo (difflib), and never
repeats a value. The cross-field rules (:func:`daemon.config.settings_rules`,
:func:`~daemon.config.destination_rules`) are run on the file's raw tables
too, because pydantic skips a model's own validators once one of its fields
failed: every problem is reported in one run.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from daemon.config import (
    Destination,
    FhirSettings,
    RedoxSettings,
    Settings,
    destination_rules,
    key_path,
    settings_rules,
)


def plain_problems(err: ValidationError, raw: dict[str, Any]) -> list[str]:
    """Every problem of a config that did not load: field and cross-field ones."""
    return list(dict.fromkeys(format_errors(err, raw) + _rule_lines(raw)))


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed where ``loc`` points (for "did you mean")."""
    sections: dict[str, type[BaseModel]] = {
        "redox": RedoxSettings,
        "fhir": FhirSettings,
        "destination": Destination,
    }
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        nested = sections.get(part)
        if field is None or nested is None:
            break
        model = nested
    return list(model.model_fields)


def _where(loc: tuple[int | str, ...], raw: dict[str, Any]) -> tuple[str, tuple[int | str, ...]]:
    """("destination", 1, "inbox") -> ('[[destination]] "letters"', ("inbox",))."""
    if len(loc) >= 2 and loc[0] == "destination" and isinstance(loc[1], int):
        tables = raw.get("destination")
        table = tables[loc[1]] if isinstance(tables, list) and len(tables) > loc[1] else None
        name = table.get("name") if isinstance(table, dict) else None
        label = f'"{name}"' if isinstance(name, str) and name else f"number {loc[1] + 1}"
        return f"[[destination]] {label}", loc[2:]
    if loc and loc[0] in ("redox", "fhir") and len(loc) >= 1:
        return f"[{loc[0]}]", loc[1:]
    return "", loc


def _plain(e: Any, key: str, loc: tuple[int | str, ...]) -> str:
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, _known_keys(loc[:-1]), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (check its spelling)"
        return f"is not a setting chartdrop knows{hint}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "value_error":
        return str(e["msg"]).removeprefix("Value error, ")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be a whole number"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("string_type", "path_type"):
        return "must be text in quotes"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a table"
    if kind == "list_type":
        return "must be a list [ ... ]"
    bounds = {
        "greater_than": "greater than {gt}",
        "greater_than_equal": "at least {ge}",
        "less_than": "less than {lt}",
        "less_than_equal": "at most {le}",
    }
    if kind in bounds:
        return "must be " + bounds[kind].format(**ctx)
    if kind == "too_short":
        return "must not be empty"
    if kind in ("string_too_short",):
        return "must not be empty"
    if kind == "string_pattern_mismatch" and key == "name":
        return (
            "may hold only letters, digits, _ . and - (at most 64, starting with a letter or digit)"
        )
    return str(e["msg"]).lower()


def _line(where: str, path: str, message: str) -> str:
    if where and path:
        return f"{where} {path}: {message}"
    if where or path:
        return f"{where or path}: {message}"
    return message


def format_errors(err: ValidationError, raw: dict[str, Any] | None = None) -> list[str]:
    """One line per problem in plain words: the table (a destination by its
    name), the key, what is wrong; the closest known key for a typo; never the
    offending value."""
    raw = raw or {}
    lines: list[str] = []
    for e in err.errors(include_input=False, include_url=False):
        loc = tuple(e["loc"])
        where, rest = _where(loc, raw)
        path = key_path(rest) if rest else ""
        key = str(rest[-1]) if rest else ""
        message = _plain(e, key, loc)
        if e["type"] == "value_error":
            lines.extend(_line(where, path, m) for m in message.split("\n"))
        else:
            lines.append(_line(where, path, message))
    return lines


def _rule_lines(raw: dict[str, Any]) -> list[str]:
    """The cross-field rules on the file's raw tables, formatted like format_errors."""
    lines = list(settings_rules(raw))
    tables = raw.get("destination")
    for i, table in enumerate(tables if isinstance(tables, list) else []):
        if isinstance(table, dict):
            where, _ = _where(("destination", i), raw)
            lines.extend(_line(where, "", p) for p in destination_rules(table))
    return lines
