"""Reading a sidecar: the nesting depth is counted outside strings exactly as a
character-by-character scan does, and the bytes read are bounded by the limit
whatever the file's size (or its growth since it was measured)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import sidecar as sidecar_module
from daemon.errors import SidecarError
from daemon.samples import sample_sidecar
from daemon.sidecar import MAX_SIDECAR_BYTES, _depth, read_sidecar


def _depth_by_scan(text: str) -> int:
    """The reference: one character at a time, as JSON's grammar reads strings."""
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


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet='"\\[]{}a :,\n\x00é', max_size=80))
def test_depth_matches_a_character_scan(text: str) -> None:
    assert _depth(text) == _depth_by_scan(text)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(sample_sidecar()),
        '"\\',  # unterminated, ending in a backslash
        '"a\\"[[',  # an escaped quote keeps the string open
        '[[["x\\\\"]]]',  # an escaped backslash closes it
        '{"a": "[[[["}',
        '"\n[',
        "]]][[",
    ],
)
def test_depth_edge_cases(text: str) -> None:
    assert _depth(text) == _depth_by_scan(text)


def test_a_sidecar_at_the_limit_is_read_whole_and_one_byte_more_is_refused(
    tmp_path: Path,
) -> None:
    body = json.dumps({"x": ""}).encode()
    at_limit = tmp_path / "at.json"
    at_limit.write_bytes(body[:-1] + b" " * (MAX_SIDECAR_BYTES - len(body)) + body[-1:])
    assert at_limit.stat().st_size == MAX_SIDECAR_BYTES
    assert read_sidecar(at_limit) == {"x": ""}
    over = tmp_path / "over.json"
    over.write_bytes(b" " + at_limit.read_bytes())
    with pytest.raises(SidecarError, match="larger than"):
        read_sidecar(over)


def test_a_sidecar_that_grew_after_it_was_measured_is_read_on_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "grew.json"
    path.write_bytes(b" " * (MAX_SIDECAR_BYTES + 10))
    real_fstat = os.fstat

    class Small:  # what fstat said before the writer went on
        def __init__(self, st: os.stat_result) -> None:
            self.st = st
            self.st_size = 10

        def __getattr__(self, name: str) -> object:
            return getattr(self.st, name)

    def fstat(fd: int) -> object:
        st = real_fstat(fd)
        return Small(st) if st.st_size > MAX_SIDECAR_BYTES else st

    monkeypatch.setattr(sidecar_module.os, "fstat", fstat)
    with pytest.raises(SidecarError, match="larger than"):
        read_sidecar(path)
    path.write_bytes(b'{"a": 1}' + b" " * 100)
    assert read_sidecar(path) == {"a": 1}
