"""The pairing index of one inbox: which names are there, and which sidecar
goes with which document, by lookup instead of by listing the folder.

Intake keeps one :class:`PairIndex` per inbox, filled by each full rescan and
updated by watchdog events, so pairing a document costs the same with 10 or
20,000 files waiting. The rules themselves are :mod:`daemon.names`'
(:func:`~daemon.names.pairing_bases`); this module only applies them:

- a sidecar is a name ending in ``.json`` in any case; every other name is a
  document (junk names and folders are never added);
- names are compared in Unicode NFC;
- a document pairs with ``<its name>.json`` (exact), else with
  ``<its stem>.json`` when no other document answers to that stem.

It holds every name of a backlog (40,000 of them for 20,000 pairs), so it is
kept small: a base that one name answers to (nearly all of them) maps to that
name itself, and only a base shared by several names to a set of them (an
empty set costs more than four names' entries).
"""

from __future__ import annotations

from collections.abc import Iterator, Set

from daemon.names import SIDECAR_SUFFIX, is_sidecar, nfc, pairing_bases, sidecar_base

# NFC base -> the one name answering to it, or the set of several.
_Table = dict[str, str | set[str]]


def _preferred(sidecars: Set[str]) -> str:
    """Of several sidecars for one base (``scan.pdf.json`` and ``scan.pdf.JSON``),
    the lower-case ``.json`` first, then by name: the same choice every time."""
    return min(sidecars, key=lambda s: (not s.endswith(SIDECAR_SUFFIX), s))


class PairIndex:
    """The names present in one inbox (real names, as listed), indexed for pairing."""

    def __init__(self) -> None:
        # The two tables are the names too (no set of them beside: 50 bytes a name):
        # a sidecar is under its base, a document under its own name (and its stem).
        self._docs_by_base: _Table = {}  # NFC base -> documents answering to it
        self._sidecars_by_base: _Table = {}  # NFC base -> sidecars naming it
        self._count = 0

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if is_sidecar(name):
            return _has(self._sidecars_by_base, nfc(sidecar_base(name)), name)
        return _has(self._docs_by_base, nfc(name), name)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        names = [n for names in self._sidecars_by_base.values() for n in _each(names)]
        names += [  # each document once: under its own name, not its stem
            n for base, docs in self._docs_by_base.items() for n in _each(docs) if nfc(n) == base
        ]
        return iter(names)

    def add(self, name: str) -> bool:
        """Add a name; False if it was already there."""
        if name in self:
            return False
        self._count += 1
        # ``scan.pdf.json``'s base is the string ``scan.pdf`` again: the table keys
        # it by the document's own string object, whichever of the two came first
        # (60 bytes a pair of a backlog, as each is another copy of the name).
        if is_sidecar(name):
            base = nfc(sidecar_base(name))
            document = self._docs_by_base.get(base)
            if isinstance(document, str) and document == base:
                base = document
            _add(self._sidecars_by_base, base, name)
        else:
            for base in {nfc(b) for b in pairing_bases(name)}:
                _add(self._docs_by_base, base, name)
            exact = nfc(name)
            sidecars = self._sidecars_by_base.pop(exact, None)
            if sidecars is not None:
                self._sidecars_by_base[exact] = sidecars
        return True

    def discard(self, name: str) -> None:
        if name not in self:
            return
        self._count -= 1
        if is_sidecar(name):
            _remove(self._sidecars_by_base, nfc(sidecar_base(name)), name)
        else:
            for base in {nfc(b) for b in pairing_bases(name)}:
                _remove(self._docs_by_base, base, name)

    def sidecar_for(self, document: str) -> str | None:
        """The sidecar that goes with ``document``, or None."""
        for i, base in enumerate(nfc(b) for b in pairing_bases(document)):
            sidecars = _get(self._sidecars_by_base, base)
            if not sidecars:
                continue
            # exact (i == 0) always; stem style only when one document has that stem
            if i == 0 or len(_get(self._docs_by_base, base)) == 1:
                return _preferred(sidecars)
        return None

    def documents_for(self, sidecar: str) -> set[str]:
        """The documents a sidecar may belong to (exactly or by stem): while there
        is one, the sidecar waits for the documents' own checks to take it."""
        return set(_get(self._docs_by_base, nfc(sidecar_base(sidecar))))

    def sidecars_naming(self, document: str) -> set[str]:
        """Every sidecar whose base is one of ``document``'s (to look at again
        when the document comes or goes)."""
        out: set[str] = set()
        for base in pairing_bases(document):
            out |= _get(self._sidecars_by_base, nfc(base))
        return out


def _each(names: str | set[str]) -> Set[str]:
    return frozenset((names,)) if isinstance(names, str) else names


def _has(table: _Table, key: str, name: str) -> bool:
    names = table.get(key)
    return names == name if isinstance(names, str) else names is not None and name in names


def _get(table: _Table, key: str) -> Set[str]:
    """The names answering to ``key`` (read only: a set may be the table's own)."""
    names = table.get(key)
    return frozenset() if names is None else _each(names)


def _add(table: _Table, key: str, name: str) -> None:
    names = table.get(key)
    if names is None:
        table[key] = name
    elif isinstance(names, str):
        if names != name:
            table[key] = {names, name}
    else:
        names.add(name)


def _remove(table: _Table, key: str, name: str) -> None:
    names = table.get(key)
    if names is None:
        return
    if isinstance(names, str):
        if names == name:
            del table[key]
        return
    names.discard(name)
    if len(names) == 1:  # (a set holds two names or more)
        table[key] = names.pop()  # back to the bare name
