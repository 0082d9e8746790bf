"""Reading sidecar JSON safely: bounded size, strict JSON, every problem named.

A sidecar is untrusted input from a scanner or a person. Parsing must end in a
dict or a :class:`SidecarError` whose lines staff can act on, and never in a
crash: oversized files, invalid UTF-8, duplicate keys, NaN, absurd nesting and
enormous numbers are all refused with a reason. Messages never quote values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
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
            raw = fh.read(MAX_SIDECAR_BYTES + 1)
    except NotRegularFileError as exc:
        raise SidecarError(f"the sidecar cannot be read: {exc}") from None
    return parse_sidecar(raw)
