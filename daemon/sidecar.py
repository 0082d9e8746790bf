"""Reading sidecar JSON safely: bounded size, strict JSON, every problem named.

A sidecar is untrusted input from a scanner or a person. Parsing must end in a
dict or a :class:`SidecarError` whose lines staff can act on, and never in a
crash: oversized files, invalid UTF-8, duplicate keys, NaN, absurd nesting and
enormous numbers are all refused with a reason. Messages never quote values.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

from daemon.config import key_path
from daemon.errors import NotRegularFileError, SidecarError
from daemon.fsutil import open_document

MAX_SIDECAR_BYTES = 1_000_000
MAX_DEPTH = 32


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _reject_constant(_name: str) -> Any:
    raise ValueError("NaN and Infinity are not allowed")


# A JSON string (to its closing quote, or to the end of an unterminated one), and
# what is left of the text once strings are gone: :func:`_depth` counts brackets
# outside strings with two passes in C, not a Python loop over every character.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _depth(text: str) -> int:
    """How deep brackets nest outside JSON strings (the deepest ``[``/``{`` count)."""
    depth = deepest = 0
    for ch in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_sidecar(raw: bytes) -> dict[str, Any]:
    """Parse sidecar bytes into a JSON object, or raise SidecarError."""
    if len(raw) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"the sidecar is larger than {MAX_SIDECAR_BYTES:,} bytes")
    if not raw.strip():
        raise SidecarError("the sidecar file is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SidecarError("the sidecar is not UTF-8 text") from None
    if _depth(text) > MAX_DEPTH:
        raise SidecarError(f"the sidecar is nested more than {MAX_DEPTH} levels deep")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKeyError:
        raise SidecarError("the sidecar repeats a key inside one object") from None
    except json.JSONDecodeError as exc:
        raise SidecarError(
            f"the sidecar is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except (ValueError, RecursionError):
        raise SidecarError(
            "the sidecar contains a number that is not allowed (NaN, Infinity or too many digits)"
        ) from None
    if not isinstance(data, dict):
        raise SidecarError("the sidecar must be a JSON object ({ ... })")
    return data


def read_sidecar(path: Path) -> dict[str, Any]:
    """Read a sidecar without following links and without reading past the size limit."""
    try:
        with open_document(path) as fh:
            # Read what fstat says is there (plus one byte: a file that grew since is
            # read on up to the limit). ``read(MAX_SIDECAR_BYTES + 1)`` alone costs a
            # megabyte allocation for each few-hundred-byte sidecar.
            want = min(os.fstat(fh.fileno()).st_size, MAX_SIDECAR_BYTES) + 1
            raw = fh.read(want)
            if len(raw) == want and want <= MAX_SIDECAR_BYTES:
                raw += fh.read(MAX_SIDECAR_BYTES + 1 - want)
    except NotRegularFileError as exc:
        raise SidecarError(f"the sidecar cannot be read: {exc}") from None
    return parse_sidecar(raw)


# Dates in a sidecar, in the format Redox documents (ISO 8601): DOB is a date,
# "2008-01-06"; every *DateTime field a date-time, "2017-06-22T19:30:04.387Z"
# (a date alone, or no seconds or offset, is ISO 8601 too and accepted).
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}(?::\d{2})?)(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?)?$"
)
DATE_FIELDS = frozenset({"DOB"})


def _real_datetime(text: str) -> bool:
    match = _DATETIME.match(text)
    if match is None:
        return False
    day, clock, _fraction, offset = match.groups()
    try:
        date.fromisoformat(day)
        if clock is not None:
            stamp = f"{day}T{clock}" + ("+00:00" if offset in (None, "Z") else offset)
            datetime.fromisoformat(stamp)
    except ValueError:
        return False
    return True


def _real_date(text: str) -> bool:
    try:
        return bool(_DATE.match(text)) and date.fromisoformat(text) is not None
    except ValueError:
        return False


def date_problems(sidecar: dict[str, Any]) -> list[str]:
    """Every date field (DOB, *DateTime) that is not a real date in Redox's format,
    one line each naming the field, never its value. Nulls are left to the model."""
    problems: list[str] = []

    def walk(node: object, loc: tuple[str | int, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = (*loc, key)
                if isinstance(value, dict | list):
                    walk(value, where)
                elif value is None or not isinstance(key, str):
                    continue
                elif key in DATE_FIELDS:
                    if not (isinstance(value, str) and _real_date(value)):
                        problems.append(
                            f"{key_path(where)} must be a real date written YYYY-MM-DD "
                            "(e.g. 2008-01-06)"
                        )
                elif key.endswith("DateTime") and not (
                    isinstance(value, str) and _real_datetime(value)
                ):
                    problems.append(
                        f"{key_path(where)} must be a real date and time in ISO 8601 "
                        "(e.g. 2017-06-22T19:30:04.387Z)"
                    )
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, (*loc, i))

    walk(sidecar, ())
    return problems
