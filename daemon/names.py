"""Name rules for the inbox: junk to ignore, sidecar pairing, non-clashing names.

Pure string functions on bare file names (no folders). An "extension" is
what follows the last dot, provided something other than dots precedes it,
so ``.pdf`` and ``..pdf`` have none (as with :func:`os.path.splitext`).

The pairing rules live here and only here; :mod:`daemon.pairing` applies them
to a whole inbox. A sidecar is any name ending in ``.json`` in any case; names
are compared in Unicode NFC, so a name macOS wrote decomposed (``u`` plus a
combining mark) pairs with the same name written composed.
"""

from __future__ import annotations

import unicodedata

NAME_MAX = 255  # bytes in one file name (Linux filesystems)
SIDECAR_SUFFIX = ".json"
ERROR_NOTE_SUFFIX = ".error.txt"

_JUNK_PREFIXES = (".", "~$")
_JUNK_SUFFIXES = (
    ".tmp",
    ".temp",
    ".part",
    ".partial",
    ".crdownload",
    ".download",
    ".swp",
    "~",
    ERROR_NOTE_SUFFIX,
)
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


def split_extension(name: str) -> tuple[str, str]:
    """``"scan.pdf"`` -> ``("scan", ".pdf")``; ``"scan"`` and ``".pdf"`` -> no extension."""
    dot = name.rfind(".")
    if dot <= 0 or not name[:dot].strip("."):
        return name, ""
    return name[:dot], name[dot:]


def is_junk(name: str) -> bool:
    """Temp, partial, hidden and OS-litter names that intake never touches."""
    lowered = name.lower()
    return (
        not name
        or name.startswith(_JUNK_PREFIXES)
        or lowered.endswith(_JUNK_SUFFIXES)
        or lowered in _JUNK_NAMES
    )


def is_sidecar(name: str) -> bool:
    """A sidecar is any ``*.json`` (any case)."""
    return name.lower().endswith(SIDECAR_SUFFIX)


def nfc(name: str) -> str:
    """The name in Unicode normal form C, the form names are paired in."""
    return unicodedata.normalize("NFC", name)


def sidecar_base(sidecar_name: str) -> str:
    """A sidecar's name without its ``.json`` (any case): ``scan.pdf.JSON`` -> ``scan.pdf``."""
    if not is_sidecar(sidecar_name):
        raise ValueError("not a sidecar name")
    return sidecar_name[: -len(SIDECAR_SUFFIX)]


def pairing_bases(document_name: str) -> list[str]:
    """The sidecar bases (names minus ``.json``) a document pairs with, most
    specific first: its full name, then its stem if it has an extension.

    ``scan.pdf`` -> ``["scan.pdf", "scan"]``; ``scan`` -> ``["scan"]``. The
    first is an exact pair; the stem pairs only when no other document in the
    inbox answers to the same base (two documents ``scan.pdf`` and ``scan.tif``
    cannot share ``scan.json``).
    """
    stem, ext = split_extension(document_name)
    return [document_name, stem] if ext else [document_name]


def sidecar_candidates(document_name: str) -> list[str]:
    """Sidecar names for a document, most specific first.

    ``scan.pdf`` -> ``["scan.pdf.json", "scan.json"]``; ``scan`` -> ``["scan.json"]``.
    """
    return [base + SIDECAR_SUFFIX for base in pairing_bases(document_name)]


def documents_for_sidecar(sidecar_name: str) -> tuple[str | None, str]:
    """Which documents a sidecar can belong to: ``(exact_name or None, stem)``.

    The sidecar name minus ``.json`` is both an exact document name (if it has
    an extension itself) and the stem of any document it pairs with in stem
    style. ``scan.pdf.json`` -> ``("scan.pdf", "scan.pdf")``: the document
    ``scan.pdf``, or any document whose stem is ``scan.pdf`` (``scan.pdf.tif``),
    matching :func:`sidecar_candidates` exactly. ``scan.json`` ->
    ``(None, "scan")``: any document whose stem is ``scan`` (or named ``scan``).
    """
    base = sidecar_base(sidecar_name)
    _, ext = split_extension(base)
    return (base if ext else None), base


def suffixed(name: str, n: int) -> str:
    """``name`` made distinct by ``n``: ``scan.pdf`` -> ``scan (1).pdf``; 0 -> unchanged."""
    if n < 0:
        raise ValueError("n must not be negative")
    if n == 0:
        return name
    stem, ext = split_extension(name)
    return f"{stem} ({n}){ext}"


def paired_sidecar_name(
    new_document_name: str, old_document_name: str, old_sidecar_name: str
) -> str:
    """The sidecar name for a renamed document, in the same pairing style as before.

    ``scan.pdf.json`` style (document name + ``.json``) stays that style;
    otherwise stem style (``scan.json``). The old ``.json``'s case is kept; the
    name part follows the document's Unicode form.
    """
    if not is_sidecar(old_sidecar_name):
        raise ValueError("not a sidecar name")
    suffix = old_sidecar_name[-len(SIDECAR_SUFFIX) :]
    if nfc(sidecar_base(old_sidecar_name)) == nfc(old_document_name):
        return new_document_name + suffix
    stem, _ = split_extension(new_document_name)
    return stem + suffix


def error_note_name(document_name: str) -> str:
    """The staff-facing note written next to a failed document."""
    return document_name + ERROR_NOTE_SUFFIX


def shortened(name: str, max_bytes: int) -> str:
    """``name`` with its stem cut (at a character boundary) to fit ``max_bytes`` of
    UTF-8, keeping the extension: a 255-byte ``scan.pdf`` still needs room for
    ``.error.txt`` beside it. Unchanged if it fits."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= max_bytes:
        return name
    stem, ext = split_extension(name)
    room = max_bytes - len(ext.encode("utf-8", "surrogateescape"))
    if room < 1:
        raise ValueError("no room for the name")
    cut = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return (cut or "_") + ext
