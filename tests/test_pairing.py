"""The pairing index (daemon.pairing): one test per naming case, and the same
pairs as the listing-per-file algorithm it replaced, on an inbox of thousands."""

from __future__ import annotations

import random
import unicodedata
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.names import is_junk, is_sidecar, split_extension
from daemon.pairing import PairIndex

DECOMPOSED = unicodedata.normalize("NFD", "Müller")
COMPOSED = unicodedata.normalize("NFC", "Müller")
assert DECOMPOSED != COMPOSED
D, C = DECOMPOSED, COMPOSED


def index_of(*names: str) -> PairIndex:
    index = PairIndex()
    for name in names:
        index.add(name)
    return index


@pytest.mark.parametrize(
    ("names", "document", "sidecar"),
    [
        (["scan.pdf", "scan.pdf.json"], "scan.pdf", "scan.pdf.json"),
        (["scan.pdf", "scan.json"], "scan.pdf", "scan.json"),
        (["scan", "scan.json"], "scan", "scan.json"),
        (["scan.tar.gz", "scan.tar.gz.json"], "scan.tar.gz", "scan.tar.gz.json"),
        (["scan.tar.gz", "scan.tar.json"], "scan.tar.gz", "scan.tar.json"),
        (["Fax 12.TIF", "Fax 12.json"], "Fax 12.TIF", "Fax 12.json"),
        # the exact name wins over the stem
        (["scan.pdf", "scan.pdf.json", "scan.json"], "scan.pdf", "scan.pdf.json"),
        # two documents share the stem: neither takes scan.json
        (["scan.pdf", "scan.tif", "scan.json"], "scan.pdf", None),
        # a document named like the stem takes scan.json exactly; scan.pdf does not
        (["scan", "scan.pdf", "scan.json"], "scan", "scan.json"),
        (["scan", "scan.pdf", "scan.json"], "scan.pdf", None),
        # scan.pdf.json is scan.pdf's, and stem-style for scan.pdf.tif only if alone
        (["scan.pdf", "scan.pdf.tif", "scan.pdf.json"], "scan.pdf.tif", None),
        (["scan.pdf.tif", "scan.pdf.json"], "scan.pdf.tif", "scan.pdf.json"),
        (["scan.pdf"], "scan.pdf", None),
        (["scan.pdf", "other.json"], "scan.pdf", None),
        # the .json suffix in any case (Windows scanner software)
        (["scan.pdf", "scan.pdf.JSON"], "scan.pdf", "scan.pdf.JSON"),
        (["scan.pdf", "scan.Json"], "scan.pdf", "scan.Json"),
        (["scan.pdf", "scan.pdf.JSON", "scan.pdf.json"], "scan.pdf", "scan.pdf.json"),
        # but the name itself keeps its case
        (["scan.pdf", "SCAN.pdf.json"], "scan.pdf", None),
        # Unicode: decomposed (macOS) and composed names pair both ways
        ([f"{D}.pdf", f"{C}.pdf.json"], f"{D}.pdf", f"{C}.pdf.json"),
        ([f"{C}.pdf", f"{D}.pdf.json"], f"{C}.pdf", f"{D}.pdf.json"),
        ([f"{D}.pdf", f"{C}.json"], f"{D}.pdf", f"{C}.json"),
        ([f"{D}.pdf", f"{C}.JSON"], f"{D}.pdf", f"{C}.JSON"),
        # two spellings of one stem are one stem
        ([f"{D}.pdf", f"{C}.tif", f"{C}.json"], f"{D}.pdf", None),
    ],
)
def test_sidecar_for(names: list[str], document: str, sidecar: str | None) -> None:
    index = index_of(*names)
    assert index.sidecar_for(document) == sidecar
    if sidecar is not None:
        assert document in index.documents_for(sidecar)


def test_documents_for_and_removal() -> None:
    index = index_of("scan.pdf", "scan.tif", "scan.json", f"{DECOMPOSED}.pdf")
    assert index.documents_for("scan.json") == {"scan.pdf", "scan.tif"}
    assert index.documents_for(f"{COMPOSED}.pdf.JSON") == {f"{DECOMPOSED}.pdf"}
    assert index.documents_for("nothing.json") == set()
    assert index.sidecar_for("scan.pdf") is None
    index.discard("scan.tif")  # now scan.pdf is the only document with the stem
    assert index.sidecar_for("scan.pdf") == "scan.json"
    assert index.sidecars_naming("scan.pdf") == {"scan.json"}
    index.discard("scan.json")
    assert index.sidecar_for("scan.pdf") is None
    assert "scan.json" not in index
    assert len(index) == 2


# -- the algorithm the index replaced: a listing of the inbox per file ----------
class OldListing:
    """intake's former ``_find_sidecar`` (with ``_documents_with_stem``), on a set
    of names instead of a folder listing; the stem count is computed once so the
    reference stays fast, with the same meaning."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.documents = [n for n in names if not is_junk(n) and not is_sidecar(n)]
        self.by_rsplit = Counter(n.rsplit(".", 1)[0] for n in self.documents)

    def with_stem(self, stem: str) -> int:
        return self.by_rsplit[stem] + (1 if stem in self.names and "." in stem else 0)

    def sidecar_for(self, doc: str) -> str | None:
        stem, ext = split_extension(doc)
        candidates = [doc + ".json"] + ([stem + ".json"] if ext else [])
        for candidate in candidates:
            if candidate not in self.names:
                continue
            if candidate == doc + ".json":
                return candidate
            if self.with_stem(candidate[: -len(".json")]) == 1:
                return candidate
        return None


CASES: list[list[str]] = [
    ["{p}scan.pdf", "{p}scan.pdf.json"],
    ["{p}scan.pdf", "{p}scan.json"],
    ["{p}scan", "{p}scan.json"],
    ["{p}scan.tar.gz", "{p}scan.tar.json"],
    ["{p}Fax 12.TIF", "{p}Fax 12.json"],
    ["{p}both.pdf", "{p}both.pdf.json", "{p}both.json"],
    ["{p}twin.pdf", "{p}twin.tif", "{p}twin.json"],
    ["{p}bare", "{p}bare.pdf", "{p}bare.json"],
    ["{p}a.pdf", "{p}a.pdf.tif", "{p}a.pdf.json"],
    ["{p}lonely.pdf"],
    ["{p}orphan.json"],
    ["{p}a.b.c", "{p}a.b.json"],
    ["{p}dot.", "{p}dot.json"],
]


def test_same_pairs_as_the_old_listing_on_thousands_of_names() -> None:
    rng = random.Random(9)
    names: set[str] = set()
    for i in range(320):  # 13 cases: ~4,200 documents, ~3,800 sidecars
        for case in CASES:
            names.update(n.format(p=f"{i:04d} ") for n in case)
    order = list(names)
    rng.shuffle(order)
    index = index_of(*order)
    documents = [n for n in names if not is_sidecar(n)]
    assert len(documents) > 3000
    found = {d: index.sidecar_for(d) for d in documents}
    old = OldListing(names)
    assert found == {d: old.sidecar_for(d) for d in documents}
    assert sum(1 for s in found.values() if s is not None) > 2500
    # and the other way: each sidecar's possible documents, as the old listing found
    # them (a document whose name, or name minus its last extension, is the base)
    answering: dict[str, set[str]] = {}
    for n in documents:
        answering.setdefault(n.rsplit(".", 1)[0], set()).add(n)
        answering.setdefault(n, set()).add(n)
    for sidecar in (n for n in names if is_sidecar(n)):
        base = sidecar[: -len(".json")]
        assert index.documents_for(sidecar) == answering.get(base, set())
    # removing half of the names keeps the index equal to a fresh one
    for name in order[::2]:
        index.discard(name)
    rest = set(order[1::2])
    rest_docs = [n for n in rest if not is_sidecar(n)]
    old = OldListing(rest)
    assert {d: index.sidecar_for(d) for d in rest_docs} == {
        d: old.sidecar_for(d) for d in rest_docs
    }


NAME_PARTS = st.sampled_from(
    ["scan", "scan.pdf", "scan.tif", "scan.pdf.tif", D, C, f"{D}.pdf", f"{C}.pdf", "a.b"]
)
SUFFIXES = st.sampled_from(["", ".json", ".JSON", ".Json"])


@given(st.lists(st.tuples(st.booleans(), NAME_PARTS, SUFFIXES), max_size=40))
def test_updates_leave_the_index_as_a_fresh_one(ops: list[tuple[bool, str, str]]) -> None:
    """Adding and removing names one by one (events) gives the same answers as an
    index built from what is left (a rescan)."""
    index = PairIndex()
    present: set[str] = set()
    for add, part, suffix in ops:
        name = part + suffix
        if add:
            index.add(name)
            present.add(name)
        else:
            index.discard(name)
            present.discard(name)
    fresh = index_of(*sorted(present))
    assert sorted(index) == sorted(present)  # each name once
    assert len(index) == len(present)
    for _, part, suffix in ops:
        assert (part + suffix in index) == (part + suffix in present)
    for name in present:
        if is_sidecar(name):
            assert index.documents_for(name) == fresh.documents_for(name)
        else:
            assert index.sidecar_for(name) == fresh.sidecar_for(name)
            assert index.sidecars_naming(name) == fresh.sidecars_naming(name)


@pytest.mark.parametrize("document_first", [True, False])
def test_a_sidecar_is_filed_under_its_document_s_own_string(document_first: bool) -> None:
    """A backlog keeps every name: ``scan.pdf.json``'s base is not a second copy
    of ``scan.pdf`` (whichever was listed first)."""
    document = "".join(["scan", ".pdf"])  # made at run time, as a listing's names are
    sidecar = document + ".json"
    index = index_of(*([document, sidecar] if document_first else [sidecar, document]))
    (key,) = index._sidecars_by_base
    assert key is document
    assert index.sidecar_for(document) == sidecar
