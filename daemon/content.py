"""What a document is, and whether it has been written completely.

Only small ranges are read (the head, the tail, TIFF directories and their
value arrays), never the whole file. Reasons returned are plain-language
lines for the ``.error.txt`` note and carry no file names or content.
"""

from __future__ import annotations

import operator
import struct
from dataclasses import dataclass
from typing import BinaryIO

import filetype


@dataclass(frozen=True)
class FileKind:
    """A document type: Redox ``FileType``, MIME type and usual extension."""

    redox_type: str
    mime: str
    extension: str


PDF = FileKind("PDF", "application/pdf", "pdf")
TIFF = FileKind("TIFF", "image/tiff", "tif")
JPEG = FileKind("JPG", "image/jpeg", "jpg")
PNG = FileKind("PNG", "image/png", "png")
GIF = FileKind("GIF", "image/gif", "gif")
RTF = FileKind("RTF", "application/rtf", "rtf")
TXT = FileKind("TXT", "text/plain", "txt")

KINDS: tuple[FileKind, ...] = (PDF, TIFF, JPEG, PNG, GIF, RTF, TXT)
_BY_MIME = {k.mime: k for k in KINDS}
_BY_EXTENSION = {
    "pdf": PDF,
    "tif": TIFF,
    "tiff": TIFF,
    "jpg": JPEG,
    "jpeg": JPEG,
    "png": PNG,
    "gif": GIF,
    "rtf": RTF,
    "txt": TXT,
    "text": TXT,
}

_HEAD_BYTES = 8192  # what filetype looks at
_PDF_HEADER_WITHIN = 1024
_PDF_TAIL = 1024
_PDF_WHITESPACE = b" \t\r\n\f"  # PDF whitespace minus NUL: trailing NULs mean unfilled
_BIGTIFF_MAGIC = (b"II+\x00", b"MM\x00+")
_PNG_IEND = b"\x00\x00\x00\x00IEND\xae\x42\x60\x82"

EMPTY = "the file is empty"
ZERO_TAIL = (
    "the file ends in blank (zero) bytes, so it was not completely written "
    "(the scanner or copy may have been interrupted)"
)
BLANK = (
    "the file holds only blank (zero) bytes so far: it was made at its full size "
    "and not yet written (a copy may still be running)"
)
PDF_NO_EOF = "the PDF is incomplete: it does not end with the %%EOF end marker"
JPEG_NO_EOI = "the JPEG image is incomplete: it does not end with the end-of-image marker"
PNG_NO_IEND = "the PNG image is incomplete: it does not end with the IEND end marker"
GIF_NO_TRAILER = "the GIF image is incomplete: it does not end with the GIF trailer"
RTF_NO_END = "the RTF document is incomplete: it does not end with its closing brace"
TIFF_TRUNCATED = "the TIFF image is incomplete: part of it lies beyond the end of the file"
TIFF_BLANK_ENTRY = (
    "the TIFF image is incomplete: its directory has blank (zero) entries "
    "(the file may have been pre-allocated and not yet filled in)"
)
TIFF_DAMAGED = "the TIFF image is damaged: its structure cannot be read"
TIFF_LOOP = "the TIFF image is damaged: its list of pages loops back on itself"
TIFF_NO_PAGES = "the TIFF image has no pages (it may not have been completely written)"
TIFF_TOO_MANY_PAGES = "the TIFF image has more than 10,000 pages"
TIFF_TOO_COMPLEX = "the TIFF image's structure is too large to check"

_TIFF_MAX_IFDS = 10_000
_TIFF_MAX_ENTRIES = 65_535  # the classic-TIFF limit, applied to BigTIFF too
_TIFF_READ_BUDGET = 64 << 20  # total bytes of structure read per file
_TIFF_CHUNK_VALUES = 8192  # value-array elements read at a time
# Field type -> element size (TIFF 6.0 plus BigTIFF's LONG8/SLONG8/IFD8).
_TIFF_TYPE_SIZES = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
    16: 8, 17: 8, 18: 8,
}  # fmt: skip
_TIFF_INT_FORMATS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
_STRIP_OFFSETS, _STRIP_BYTE_COUNTS = 273, 279
_TILE_OFFSETS, _TILE_BYTE_COUNTS = 324, 325


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def detect(f: BinaryIO) -> FileKind | None:
    """The document's kind from its first bytes, or None if not one we send.

    The file position is restored afterwards.
    """
    pos = f.tell()
    try:
        head = _read_at(f, 0, _HEAD_BYTES)
    finally:
        f.seek(pos)
    if b"%PDF-" in head[:_PDF_HEADER_WITHIN]:
        return PDF
    if head[:4] in _BIGTIFF_MAGIC:  # filetype knows classic TIFF only
        return TIFF
    if head.startswith(b"{\\rtf"):
        return RTF
    match = filetype.image_match(head) if head else None
    if match is not None:
        return _BY_MIME.get(str(match.mime))
    return TXT if _is_text(head, whole=len(head) < _HEAD_BYTES) else None


def _is_text(head: bytes, *, whole: bool) -> bool:
    """Plain text has no magic bytes: UTF-8 (a character cut at the end of the
    sample is fine) with no NUL and no control characters but tab, CR, LF, FF."""
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if whole or exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text.lstrip("\ufeff"))


def check_kind_matches_extension(kind: FileKind, filename: str) -> bool:
    """False if the name's extension names a different kind (``scan.pdf`` that is a TIFF).

    Unknown or missing extensions are not judged (True).
    """
    _, dot, ext = filename.rpartition(".")
    if not dot:
        return True
    expected = _BY_EXTENSION.get(ext.lower())
    return expected is None or expected.redox_type == kind.redox_type


def incomplete_reason(f: BinaryIO, size: int, kind: FileKind | None) -> str | None:
    """None if the document looks completely written, else a short reason (no PHI).

    ``size`` is the file's size (from ``fstat``). Unknown kinds only need to be
    non-empty and not blank (zeros at both ends: a pre-allocated file that no
    data reached yet is held, not refused as a type). Never raises on malformed
    content (only on I/O errors), and the work is bounded whatever the content.
    The file position is restored.
    """
    if size <= 0:
        return EMPTY
    pos = f.tell()
    try:
        if kind is None:  # no magic bytes yet: a pre-allocated file not yet filled in?
            return BLANK if _blank(f, size) else None
        return _reason(f, size, kind)
    finally:
        f.seek(pos)


def _blank(f: BinaryIO, size: int) -> bool:
    """Zeros at both ends (the whole file if small): made at its full size, not yet
    written. Content a writer put at the start is never blank."""
    head = _read_at(f, 0, _HEAD_BYTES)
    tail = _read_at(f, max(0, size - _HEAD_BYTES), _HEAD_BYTES) if size > _HEAD_BYTES else b""
    return not head.strip(b"\x00") and not tail.strip(b"\x00")


def _reason(f: BinaryIO, size: int, kind: FileKind) -> str | None:
    if kind.redox_type == TIFF.redox_type:
        return _tiff_reason(f, size)
    if kind.redox_type == PDF.redox_type:
        tail = _read_at(f, max(0, size - _PDF_TAIL), _PDF_TAIL)
        if tail.rstrip(_PDF_WHITESPACE).endswith(b"%%EOF"):
            return None
        return ZERO_TAIL if tail.endswith(b"\x00") else PDF_NO_EOF
    if kind.redox_type == JPEG.redox_type:
        expected, missing = b"\xff\xd9", JPEG_NO_EOI
    elif kind.redox_type == PNG.redox_type:
        expected, missing = _PNG_IEND, PNG_NO_IEND
    elif kind.redox_type == GIF.redox_type:
        expected, missing = b"\x3b", GIF_NO_TRAILER
    elif kind.redox_type == RTF.redox_type:
        tail = _read_at(f, max(0, size - 64), 64)
        if tail.rstrip(_PDF_WHITESPACE + b"\x00").endswith(b"}"):
            return None if not tail.endswith(b"\x00") else ZERO_TAIL
        return RTF_NO_END
    else:
        return None
    tail = _read_at(f, max(0, size - len(expected)), len(expected))
    if tail == expected:
        return None
    return ZERO_TAIL if tail.endswith(b"\x00") else missing


# --------------------------------------------------------------------------- TIFF


class _TiffError(Exception):
    """Internal: stops the walk with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TiffReader:
    """Bounded, exact reads: short data is a truncated file, over budget is refused."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.budget = _TIFF_READ_BUDGET

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise _TiffError(TIFF_TRUNCATED)
        self.budget -= n
        if self.budget < 0:
            raise _TiffError(TIFF_TOO_COMPLEX)
        data = _read_at(self.f, offset, n)
        if len(data) != n:  # the file is shorter than its stat said
            raise _TiffError(TIFF_TRUNCATED)
        return data


@dataclass(frozen=True)
class _Layout:
    endian: str  # "<" or ">"
    big: bool  # BigTIFF

    @property
    def offset_format(self) -> str:
        return self.endian + ("Q" if self.big else "I")

    @property
    def offset_size(self) -> int:
        return 8 if self.big else 4

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12

    @property
    def count_format(self) -> str:  # number of entries in an IFD
        return self.endian + ("Q" if self.big else "H")

    @property
    def count_size(self) -> int:
        return 8 if self.big else 2


@dataclass(frozen=True)
class _Entry:
    type: int
    count: int
    value: bytes  # the raw inline value / offset field


def _tiff_reason(f: BinaryIO, size: int) -> str | None:
    reader = _TiffReader(f, size)
    try:
        _walk_tiff(reader)
    except _TiffError as problem:
        return problem.reason
    return None


def _walk_tiff(r: _TiffReader) -> None:
    head = r.read(0, 8)
    if head[:2] == b"II":
        endian = "<"
    elif head[:2] == b"MM":
        endian = ">"
    else:
        raise _TiffError(TIFF_DAMAGED)
    (version,) = struct.unpack(endian + "H", head[2:4])
    if version == 42:
        layout = _Layout(endian, big=False)
        (ifd,) = struct.unpack(endian + "I", head[4:8])
    elif version == 43:
        layout = _Layout(endian, big=True)
        bytesize, reserved, ifd = struct.unpack(endian + "HHQ", r.read(4, 12))
        if bytesize != 8 or reserved != 0:
            raise _TiffError(TIFF_DAMAGED)
    else:
        raise _TiffError(TIFF_DAMAGED)
    if ifd == 0:
        raise _TiffError(TIFF_NO_PAGES)
    seen: set[int] = set()
    while ifd != 0:
        if ifd in seen:
            raise _TiffError(TIFF_LOOP)
        if len(seen) >= _TIFF_MAX_IFDS:
            raise _TiffError(TIFF_TOO_MANY_PAGES)
        seen.add(ifd)
        ifd = _check_ifd(r, layout, ifd)


def _check_ifd(r: _TiffReader, lay: _Layout, offset: int) -> int:
    """Check one image directory; return the next one's offset (0 at the end)."""
    (n,) = struct.unpack(lay.count_format, r.read(offset, lay.count_size))
    if n == 0 or n > _TIFF_MAX_ENTRIES:
        raise _TiffError(TIFF_DAMAGED)
    block = r.read(offset + lay.count_size, n * lay.entry_size + lay.offset_size)
    entry_format = lay.endian + ("HHQ8s" if lay.big else "HHI4s")
    entries: dict[int, _Entry] = {}
    for i in range(n):
        start = i * lay.entry_size
        tag, typ, count, value = struct.unpack(entry_format, block[start : start + lay.entry_size])
        if tag == 0 and typ == 0:  # no TIFF writer makes one: zeros not yet overwritten
            raise _TiffError(TIFF_BLANK_ENTRY)
        element = _TIFF_TYPE_SIZES.get(typ)
        if element is None:
            continue  # unknown field types are skipped, as TIFF 6.0 asks of readers
        nbytes = element * count
        if nbytes > lay.offset_size:
            (where,) = struct.unpack(lay.offset_format, value)
            if where + nbytes > r.size:
                raise _TiffError(TIFF_TRUNCATED)
        entries[tag] = _Entry(typ, count, value)
    _check_image_data(r, lay, entries, _STRIP_OFFSETS, _STRIP_BYTE_COUNTS)
    _check_image_data(r, lay, entries, _TILE_OFFSETS, _TILE_BYTE_COUNTS)
    (next_ifd,) = struct.unpack(lay.offset_format, block[-lay.offset_size :])
    return int(next_ifd)


def _values(r: _TiffReader, lay: _Layout, e: _Entry, start: int, k: int) -> tuple[int, ...]:
    """Elements ``start .. start+k`` of an integer (SHORT/LONG/LONG8) field."""
    code = _TIFF_INT_FORMATS.get(e.type)
    if code is None:
        raise _TiffError(TIFF_DAMAGED)
    element = _TIFF_TYPE_SIZES[e.type]
    if element * e.count <= lay.offset_size:
        data = e.value[start * element : (start + k) * element]
    else:
        (where,) = struct.unpack(lay.offset_format, e.value)
        data = r.read(where + start * element, k * element)
    return struct.unpack(f"{lay.endian}{k}{code}", data)


def _check_image_data(
    r: _TiffReader, lay: _Layout, entries: dict[int, _Entry], offsets_tag: int, counts_tag: int
) -> None:
    """Every strip (or tile) must lie inside the file."""
    offsets = entries.get(offsets_tag)
    if offsets is None:
        return
    counts = entries.get(counts_tag)
    if counts is not None and counts.count != offsets.count:
        raise _TiffError(TIFF_DAMAGED)
    for start in range(0, offsets.count, _TIFF_CHUNK_VALUES):
        k = min(_TIFF_CHUNK_VALUES, offsets.count - start)
        offs = _values(r, lay, offsets, start, k)
        if counts is None:  # no byte counts: at least each strip must start inside
            if max(offs) >= r.size:
                raise _TiffError(TIFF_TRUNCATED)
            continue
        ends = map(operator.add, offs, _values(r, lay, counts, start, k))
        if max(ends) > r.size:
            raise _TiffError(TIFF_TRUNCATED)
