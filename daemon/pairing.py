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
"""

from __future__ import annotations

from collections.abc import Iterator

from daemon.names import SIDECAR_SUFFIX, is_sidecar, nfc, pairing_bases, sidecar_base


def _preferred(sidecars: set[str]) -> str:
    """Of several sidecars for one base (``scan.pdf.json`` and ``scan.pdf.JSON``),
    the lower-case ``.json`` first, then by name: the same choice every time."""
    return min(sidecars, key=lambda s: (not s.endswith(SIDECAR_SUFFIX), s))


class PairIndex:
    """The names present in one inbox (real names, as listed), indexed for pairing."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._docs_by_base: dict[str, set[str]] = {}  # NFC base -> documents answering to it
        self._sidecars_by_base: dict[str, set[str]] = {}  # NFC base -> sidecars naming it

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def add(self, name: str) -> bool:
        """Add a name; False if it was already there."""
        if name in self._names:
            return False
        self._names.add(name)
        if is_sidecar(name):
            self._sidecars_by_base.setdefault(nfc(sidecar_base(name)), set()).add(name)
        else:
            for base in {nfc(b) for b in pairing_bases(name)}:
                self._docs_by_base.setdefault(base, set()).add(name)
        return True

    def discard(self, name: str) -> None:
        if name not in self._names:
            return
        self._names.discard(name)
        if is_sidecar(name):
            _remove(self._sidecars_by_base, nfc(sidecar_base(name)), name)
        else:
            for base in {nfc(b) for b in pairing_bases(name)}:
                _remove(self._docs_by_base, base, name)

    def sidecar_for(self, document: str) -> str | None:
        """The sidecar that goes with ``document``, or None."""
        for i, base in enumerate(nfc(b) for b in pairing_bases(document)):
            sidecars = self._sidecars_by_base.get(base)
            if not sidecars:
                continue
            # exact (i == 0) always; stem style only when one document has that stem
            if i == 0 or len(self._docs_by_base.get(base, ())) == 1:
                return _preferred(sidecars)
        return None

    def documents_for(self, sidecar: str) -> set[str]:
        """The documents a sidecar may belong to (exactly or by stem): while there
        is one, the sidecar waits for the documents' own checks to take it."""
        return set(self._docs_by_base.get(nfc(sidecar_base(sidecar)), ()))

    def sidecars_naming(self, document: str) -> set[str]:
        """Every sidecar whose base is one of ``document``'s (to look at again
        when the document comes or goes)."""
        out: set[str] = set()
        for base in pairing_bases(document):
            out |= self._sidecars_by_base.get(nfc(base), set())
        return out


def _remove(table: dict[str, set[str]], key: str, name: str) -> None:
    names = table.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del table[key]
