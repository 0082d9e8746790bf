"""daemon.names: table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import names


@pytest.mark.parametrize(
    ("name", "junk"),
    [
        ("scan.pdf", False),
        ("scan.json", False),
        ("Scan 2024-01-05.TIF", False),
        ("scan", False),
        ("temp.pdf", False),
        ("partial results.pdf", False),
        ("scan.pdf.tmp", True),
        ("scan.TMP", True),
        ("scan.temp", True),
        ("scan.pdf.part", True),
        ("scan.partial", True),
        ("scan.pdf.crdownload", True),
        ("scan.pdf.download", True),
        ("scan.swp", True),
        ("scan.pdf~", True),
        (".scan.pdf", True),
        (".hidden", True),
        (".DS_Store", True),
        (".ds_store", True),
        ("~$report.docx", True),
        ("Thumbs.db", True),
        ("thumbs.DB", True),
        ("desktop.ini", True),
        ("Desktop.INI", True),
        ("scan.pdf.error.txt", True),
        ("scan.pdf.ERROR.TXT", True),
        ("error.txt", False),
        ("notes.txt", False),
        ("", True),
    ],
)
def test_is_junk(name: str, junk: bool) -> None:
    assert names.is_junk(name) is junk


@pytest.mark.parametrize(
    ("name", "sidecar"),
    [
        ("scan.json", True),
        ("scan.pdf.json", True),
        ("SCAN.JSON", True),
        ("scan.pdf", False),
        ("scan.jsonl", False),
        ("json", False),
    ],
)
def test_is_sidecar(name: str, sidecar: bool) -> None:
    assert names.is_sidecar(name) is sidecar


@pytest.mark.parametrize(
    ("document", "candidates"),
    [
        ("scan.pdf", ["scan.pdf.json", "scan.json"]),
        ("scan", ["scan.json"]),
        ("scan.tar.gz", ["scan.tar.gz.json", "scan.tar.json"]),
        ("Fax 12.TIF", ["Fax 12.TIF.json", "Fax 12.json"]),
        (".pdf", [".pdf.json"]),
    ],
)
def test_sidecar_candidates(document: str, candidates: list[str]) -> None:
    assert names.sidecar_candidates(document) == candidates


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        ("scan.pdf.json", ("scan.pdf", "scan.pdf")),
        ("scan.json", (None, "scan")),
        ("scan.JSON", (None, "scan")),
        ("Fax 12.TIF.json", ("Fax 12.TIF", "Fax 12.TIF")),
    ],
)
def test_documents_for_sidecar(sidecar: str, expected: tuple[str | None, str]) -> None:
    assert names.documents_for_sidecar(sidecar) == expected


def test_documents_for_sidecar_rejects_non_sidecar() -> None:
    with pytest.raises(ValueError):
        names.documents_for_sidecar("scan.pdf")


@given(st.text(st.sampled_from("ab. ("), min_size=1, max_size=12))
def test_sidecar_pairing_is_consistent(document: str) -> None:
    """Every candidate sidecar maps back to the document, exactly or by stem."""
    stem, _ = names.split_extension(document)
    for sidecar in names.sidecar_candidates(document):
        exact, sidecar_stem = names.documents_for_sidecar(sidecar)
        assert exact == document or sidecar_stem in (stem, document)


@pytest.mark.parametrize(
    ("name", "n", "expected"),
    [
        ("scan.pdf", 0, "scan.pdf"),
        ("scan.pdf", 1, "scan (1).pdf"),
        ("scan.pdf", 12, "scan (12).pdf"),
        ("scan", 1, "scan (1)"),
        ("scan.pdf.json", 2, "scan.pdf (2).json"),
        (".pdf", 1, ".pdf (1)"),
        ("..pdf", 1, "..pdf (1)"),
        ("a.b.c", 3, "a.b (3).c"),
    ],
)
def test_suffixed(name: str, n: int, expected: str) -> None:
    assert names.suffixed(name, n) == expected


def test_suffixed_negative() -> None:
    with pytest.raises(ValueError):
        names.suffixed("scan.pdf", -1)


@given(st.text(min_size=1, max_size=20), st.integers(1, 1000))
def test_suffixed_keeps_extension_and_differs(name: str, n: int) -> None:
    new = names.suffixed(name, n)
    assert new != name
    assert names.split_extension(new)[1] == names.split_extension(name)[1]


@pytest.mark.parametrize(
    ("new_doc", "old_doc", "old_sidecar", "expected"),
    [
        ("scan (1).pdf", "scan.pdf", "scan.pdf.json", "scan (1).pdf.json"),
        ("scan (1).pdf", "scan.pdf", "scan.json", "scan (1).json"),
        ("scan (1).pdf", "scan.pdf", "scan.pdf.JSON", "scan (1).pdf.JSON"),
        ("scan (1)", "scan", "scan.json", "scan (1).json"),
        ("x.tif", "scan.pdf", "scan.json", "x.json"),
        # a decomposed document (macOS) with a composed sidecar is still exact style
        (
            "Mu\u0308ller (1).pdf",
            "Mu\u0308ller.pdf",
            "M\u00fcller.pdf.json",
            "Mu\u0308ller (1).pdf.json",
        ),
    ],
)
def test_paired_sidecar_name(new_doc: str, old_doc: str, old_sidecar: str, expected: str) -> None:
    assert names.paired_sidecar_name(new_doc, old_doc, old_sidecar) == expected


def test_paired_sidecar_name_rejects_non_sidecar() -> None:
    with pytest.raises(ValueError):
        names.paired_sidecar_name("a (1).pdf", "a.pdf", "a.pdf")


def test_paired_sidecar_name_pairs_back() -> None:
    """The renamed pair is found again by the pairing rules."""
    for old_sidecar in ("scan.pdf.json", "scan.json"):
        new_doc = names.suffixed("scan.pdf", 3)
        new_sidecar = names.paired_sidecar_name(new_doc, "scan.pdf", old_sidecar)
        assert new_sidecar in names.sidecar_candidates(new_doc)


def test_error_note_name() -> None:
    note = names.error_note_name("scan.pdf")
    assert note == "scan.pdf.error.txt"
    assert names.is_junk(note)  # never picked up as a document if moved back


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("scan.pdf", ("scan", ".pdf")),
        ("scan", ("scan", "")),
        (".bashrc", (".bashrc", "")),
        ("a.b.c", ("a.b", ".c")),
        ("scan.", ("scan", ".")),
    ],
)
def test_split_extension(name: str, split: tuple[str, str]) -> None:
    assert names.split_extension(name) == split


@pytest.mark.parametrize(
    ("name", "limit", "expected"),
    [
        ("scan.pdf", 255, "scan.pdf"),
        ("abcdef.pdf", 8, "abcd.pdf"),
        ("ééé.pdf", 8, "éé.pdf"),  # never half a character (é is 2 bytes)
        ("ééé.pdf", 6, "é.pdf"),
        ("noext", 3, "noe"),
    ],
)
def test_shortened(name: str, limit: int, expected: str) -> None:
    assert names.shortened(name, limit) == expected
    assert len(names.shortened(name, limit).encode()) <= limit


def test_shortened_needs_room_for_the_extension() -> None:
    with pytest.raises(ValueError, match="no room"):
        names.shortened("a.pdf", 3)
