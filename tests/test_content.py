"""daemon.content against small real documents built byte by byte in temp folders."""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import content
from daemon.content import GIF, JPEG, KINDS, PDF, PNG, TIFF, FileKind

# --------------------------------------------------------------------------- builders


def make_pdf() -> bytes:
    """A minimal valid one-page PDF with a correct xref table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def make_jpeg() -> bytes:
    """A 1x1 grey baseline JPEG, hand-assembled segment by segment."""
    soi = b"\xff\xd8"
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + b"\x01" * 64
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 1, 1, 1) + b"\x01\x11\x00"
    dc_bits = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    dht_dc = b"\xff\xc4" + struct.pack(">H", 31) + b"\x00" + dc_bits + bytes(range(12))
    ac_bits = bytes([1] + [0] * 15)  # one 1-bit code ...
    dht_ac = b"\xff\xc4" + struct.pack(">H", 20) + b"\x10" + ac_bits + b"\x00"  # ... for EOB
    sos = b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x00\x00\x3f\x00"
    scan = b"\x1f"  # DC category 0 ("00"), EOB ("0"), padded with 1-bits
    eoi = b"\xff\xd9"
    return soi + dqt + sof0 + dht_dc + dht_ac + sos + scan + eoi


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int = 3, height: int = 2) -> bytes:
    raw = b"".join(b"\x00" + bytes(range(y, y + width)) for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


GIF_1X1 = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

SHORT, LONG, RATIONAL, LONG8 = 3, 4, 5, 16


@dataclass
class Tiff:
    data: bytes
    ifds: list[int]  # offset of each IFD
    next_pointers: list[int]  # offset of each IFD's next-IFD field


def make_tiff(
    pages: int = 2,
    *,
    endian: str = "<",
    big: bool = False,
    data_last: bool = False,
    tiled: bool = False,
    offsets_type: int = LONG,
    counts_type: int = LONG,
) -> Tiff:
    """A baseline 8-bit greyscale TIFF (stripped or tiled), ``pages`` IFDs.

    Strip offsets / byte counts have more than one element, so they are stored
    out of line. ``data_last`` puts all pixel data after every IFD (as some
    writers do), so truncating the file cuts strips but not directories.
    """
    if data_last:
        structure = _assemble_tiff(pages, endian, big, tiled, offsets_type, counts_type, 0)
        base = len(structure[0])
        full, tail, ifds, ptrs = _assemble_tiff(
            pages, endian, big, tiled, offsets_type, counts_type, base
        )
        assert len(full) == base
        return Tiff(bytes(full + tail), ifds, ptrs)
    out, tail, ifds, ptrs = _assemble_tiff(pages, endian, big, tiled, offsets_type, counts_type)
    assert not tail
    return Tiff(bytes(out), ifds, ptrs)


def _assemble_tiff(
    pages: int,
    e: str,
    big: bool,
    tiled: bool,
    offsets_type: int,
    counts_type: int,
    data_base: int | None = None,
) -> tuple[bytearray, bytearray, list[int], list[int]]:
    off_code, off_size = ("Q", 8) if big else ("I", 4)
    fmt = {SHORT: "H", LONG: "I", LONG8: "Q"}
    size_of = {SHORT: 2, LONG: 4, LONG8: 8}
    bom = b"II" if e == "<" else b"MM"
    out = bytearray(
        bom + (struct.pack(e + "HHHQ", 43, 8, 0, 0) if big else struct.pack(e + "HI", 42, 0))
    )
    prev_ptr = 8 if big else 4
    tail = bytearray()
    ifds: list[int] = []
    ptrs: list[int] = []
    for page in range(pages):
        if tiled:
            width, height, tw, th = 32, 16, 16, 16
            chunks = [bytes((page + t + i) % 256 for i in range(tw * th)) for t in range(2)]
            layout_tags = [(322, SHORT, [tw]), (323, SHORT, [th])]
            offsets_tag, counts_tag = 324, 325
        else:
            width, height, rows = 5, 5, 2
            chunks = [
                bytes((page * 50 + s * 10 + i) % 256 for i in range(width * min(rows, height - s)))
                for s in range(0, height, rows)
            ]
            assert len(chunks) == math.ceil(height / rows)
            layout_tags = [(278, SHORT, [rows])]
            offsets_tag, counts_tag = 273, 279
        offs: list[int] = []
        for c in chunks:
            if data_base is not None:
                offs.append(data_base + len(tail))
                tail += c
            else:
                offs.append(len(out))
                out += c
        if len(out) % 2:
            out += b"\x00"
        tags = [
            (256, SHORT, [width]),
            (257, SHORT, [height]),
            (258, SHORT, [8]),
            (259, SHORT, [1]),
            (262, SHORT, [1]),
            (277, SHORT, [1]),
            (offsets_tag, offsets_type, offs),
            (counts_tag, counts_type, [len(c) for c in chunks]),
            *layout_tags,
        ]
        tags.sort()
        fields = []
        for tag, typ, values in tags:
            raw = struct.pack(f"{e}{len(values)}{fmt[typ]}", *values)
            if len(raw) <= off_size:
                value = raw.ljust(off_size, b"\x00")
            else:
                value = struct.pack(e + off_code, len(out))
                out += raw
                if len(out) % 2:
                    out += b"\x00"
            fields.append((tag, typ, len(values), value))
            assert size_of[typ] * len(values) == len(raw)
        ifd = len(out)
        out += struct.pack(e + ("Q" if big else "H"), len(fields))
        for tag, typ, count, value in fields:
            out += struct.pack(e + "HH" + ("Q" if big else "I"), tag, typ, count) + value
        out[prev_ptr : prev_ptr + off_size] = struct.pack(e + off_code, ifd)
        prev_ptr = len(out)
        out += b"\x00" * off_size
        ifds.append(ifd)
        ptrs.append(prev_ptr)
    return out, tail, ifds, ptrs


def make_ifd_chain(n: int, *, entries_per_ifd: int = 1, loop_to: int | None = None) -> bytes:
    """A classic little-endian TIFF with ``n`` minimal IFDs (ImageWidth only)."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    ifd_len = 2 + 12 * entries_per_ifd + 4
    for i in range(n):
        start = len(out)
        nxt = (
            start + ifd_len if i < n - 1 else (8 + loop_to * ifd_len if loop_to is not None else 0)
        )
        out += struct.pack("<H", entries_per_ifd)
        for _ in range(entries_per_ifd):
            out += struct.pack("<HHI", 256, SHORT, 1) + struct.pack("<HH", 1, 0)
        out += struct.pack("<I", nxt)
    return bytes(out)


def reason_of(data: bytes, kind: FileKind | None) -> str | None:
    return content.incomplete_reason(io.BytesIO(data), len(data), kind)


VALID = {
    "pdf": (make_pdf(), PDF),
    "jpeg": (make_jpeg(), JPEG),
    "png": (make_png(), PNG),
    "gif": (GIF_1X1, GIF),
    "tiff-le": (make_tiff().data, TIFF),
    "tiff-be": (make_tiff(endian=">").data, TIFF),
    "tiff-data-last": (make_tiff(data_last=True).data, TIFF),
    "tiff-short-counts": (make_tiff(offsets_type=SHORT, counts_type=SHORT).data, TIFF),
    "tiff-tiled": (make_tiff(tiled=True).data, TIFF),
    "tiff-tiled-be": (make_tiff(tiled=True, endian=">").data, TIFF),
    "tiff-single-page": (make_tiff(pages=1).data, TIFF),
    # two SHORT tile offsets fit in the entry itself (inline values)
    "tiff-tiled-inline": (make_tiff(tiled=True, offsets_type=SHORT, counts_type=SHORT).data, TIFF),
    "bigtiff-tiled-inline": (make_tiff(tiled=True, big=True).data, TIFF),
    "bigtiff": (make_tiff(big=True, offsets_type=LONG8, counts_type=LONG8).data, TIFF),
    "bigtiff-be-data-last": (make_tiff(big=True, endian=">", data_last=True).data, TIFF),
}


# --------------------------------------------------------------------------- detect


@pytest.mark.parametrize("name", sorted(VALID))
def test_detect_real_files(tmp_path: Path, name: str) -> None:
    data, kind = VALID[name]
    p = tmp_path / "doc.bin"
    p.write_bytes(data)
    with p.open("rb") as f:
        f.seek(3)
        assert content.detect(f) == kind
        assert f.tell() == 3  # position restored


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x03\x04" + b"\x00" * 40, b"\x00" * 2000, b"text\x01\x02", b"\xff\xfe\xfd"],
)
def test_detect_unknown(data: bytes) -> None:
    assert content.detect(io.BytesIO(data)) is None


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"hello world\r\n", "TXT"),
        (b" " * 1020 + b"%PD", "TXT"),
        ("Grüße, café\n".encode(), "TXT"),
        ("\ufeffwith a BOM\n".encode(), "TXT"),
        # a multi-byte character cut by the 8 KiB sample is still text
        (b"a" * 8191 + "é".encode(), "TXT"),
        (b"{\\rtf1\\ansi hello}", "RTF"),
    ],
)
def test_detect_text_kinds(data: bytes, kind: str) -> None:
    found = content.detect(io.BytesIO(data))
    assert found is not None and found.redox_type == kind


def test_rtf_must_end_with_its_closing_brace() -> None:
    whole = b"{\\rtf1\\ansi hello}\n"
    assert content.incomplete_reason(io.BytesIO(whole), len(whole), content.RTF) is None
    cut = whole[:-3]
    assert content.incomplete_reason(io.BytesIO(cut), len(cut), content.RTF) == content.RTF_NO_END


def test_detect_pdf_header_after_junk_within_1024() -> None:
    assert content.detect(io.BytesIO(b"\x00" * 1000 + b"%PDF-1.7\n")) == PDF
    assert content.detect(io.BytesIO(b"\x00" * 1020 + b"%PDF-1.7\n")) is None


def test_kinds() -> None:
    assert [(k.redox_type, k.mime, k.extension) for k in KINDS] == [
        ("PDF", "application/pdf", "pdf"),
        ("TIFF", "image/tiff", "tif"),
        ("JPG", "image/jpeg", "jpg"),
        ("PNG", "image/png", "png"),
        ("GIF", "image/gif", "gif"),
        ("RTF", "application/rtf", "rtf"),
        ("TXT", "text/plain", "txt"),
    ]
    from daemon.config import FILE_TYPES

    assert sorted(FILE_TYPES) == sorted(k.redox_type for k in KINDS)


@pytest.mark.parametrize(
    ("kind", "filename", "ok"),
    [
        (PDF, "scan.pdf", True),
        (PDF, "SCAN.PDF", True),
        (PDF, "scan.tif", False),
        (TIFF, "fax.tif", True),
        (TIFF, "fax.TIFF", True),
        (TIFF, "fax.pdf", False),
        (JPEG, "photo.jpg", True),
        (JPEG, "photo.jpeg", True),
        (JPEG, "photo.png", False),
        (PNG, "x.png", True),
        (PNG, "x.gif", False),
        (GIF, "x.gif", True),
        (GIF, "x.jpg", False),
        (PDF, "scan", True),  # no extension: not judged
        (PDF, "scan.dat", True),  # unknown extension: not judged
        (TIFF, "archive.pdf.tif", True),
    ],
)
def test_check_kind_matches_extension(kind: FileKind, filename: str, ok: bool) -> None:
    assert content.check_kind_matches_extension(kind, filename) is ok


# --------------------------------------------------------------------------- incomplete_reason


@pytest.mark.parametrize("name", sorted(VALID))
def test_complete_real_files(tmp_path: Path, name: str) -> None:
    data, kind = VALID[name]
    p = tmp_path / "doc.bin"
    p.write_bytes(data)
    with p.open("rb") as f:
        f.seek(5)
        assert content.incomplete_reason(f, p.stat().st_size, kind) is None
        assert f.tell() == 5


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_truncation_is_incomplete(name: str) -> None:
    data, kind = VALID[name]
    end = len(data.rstrip(b"\n")) if kind == PDF else len(data)  # a PDF may lack the last EOL
    for cut in range(1, end):
        reason = reason_of(data[:cut], kind)
        assert isinstance(reason, str), f"prefix of {cut}/{len(data)} bytes judged complete"


@pytest.mark.parametrize("name", sorted(VALID))
def test_trailing_nuls_mean_incomplete_except_tiff(name: str) -> None:
    data, kind = VALID[name]
    padded = data + b"\x00" * 4096  # a pre-allocated file not yet filled
    if kind == TIFF:
        assert reason_of(padded, kind) is None  # padding after a TIFF is harmless
    else:
        assert reason_of(padded, kind) == content.ZERO_TAIL


@pytest.mark.parametrize(("kind"), [*KINDS, None])
def test_empty_file(kind: FileKind | None) -> None:
    assert reason_of(b"", kind) == content.EMPTY


def test_unknown_kind_needs_only_bytes() -> None:
    assert reason_of(b"x", None) is None


def test_pdf_tail_rules() -> None:
    pdf = make_pdf()
    assert reason_of(pdf + b"\r\n \t\n", PDF) is None
    assert reason_of(pdf.rstrip(b"\n"), PDF) is None
    assert (
        reason_of(pdf + b"1 0 obj\n<<", PDF) == content.PDF_NO_EOF
    )  # incremental update cut short
    assert reason_of(pdf + b"\n" * 1100, PDF) == content.PDF_NO_EOF  # %%EOF not in the last 1024
    assert reason_of(b"%PDF-1.4\n", PDF) == content.PDF_NO_EOF


def test_preallocated_tiff_is_incomplete() -> None:
    tiff = make_tiff().data
    assert reason_of(b"II*\x00" + b"\x00" * (len(tiff) - 4), TIFF) == content.TIFF_NO_PAGES


@pytest.mark.parametrize("data_last", [False, True])
def test_preallocated_tiff_filled_in_part_is_incomplete(data_last: bool) -> None:
    """Full size up front (zeros), filled from the start: a directory cut short
    has blank entries. (Known gap: a file cut after a complete directory whose
    next-page pointer is not yet written reads as a shorter, complete TIFF.)"""
    tiff = make_tiff(2, data_last=data_last)
    for filled in [len(tiff.data) // 3, *(ifd + 8 for ifd in tiff.ifds)]:
        data = tiff.data[:filled] + b"\x00" * (len(tiff.data) - filled)
        assert reason_of(data, TIFF) is not None, filled
    assert reason_of(tiff.data, TIFF) is None


def test_tiff_strip_beyond_eof_is_truncated() -> None:
    tiff = make_tiff(data_last=True)
    last_ifd_end = tiff.next_pointers[-1] + 4
    for cut in range(last_ifd_end, len(tiff.data)):
        assert reason_of(tiff.data[:cut], TIFF) == content.TIFF_TRUNCATED


def test_tiff_size_larger_than_file_is_truncated() -> None:
    tiff = make_tiff().data
    f = io.BytesIO(tiff[:-10])
    assert content.incomplete_reason(f, len(tiff), TIFF) is not None


@pytest.mark.parametrize("page", [0, 1])
def test_tiff_ifd_loop(page: int) -> None:
    tiff = make_tiff(pages=2)
    data = bytearray(tiff.data)
    data[tiff.next_pointers[1] : tiff.next_pointers[1] + 4] = struct.pack("<I", tiff.ifds[page])
    assert reason_of(bytes(data), TIFF) == content.TIFF_LOOP


def test_tiff_chain_bound() -> None:
    assert reason_of(make_ifd_chain(10_000), TIFF) is None
    assert reason_of(make_ifd_chain(10_001), TIFF) == content.TIFF_TOO_MANY_PAGES
    assert reason_of(make_ifd_chain(50, loop_to=10), TIFF) == content.TIFF_LOOP


def test_tiff_damaged_structures() -> None:
    tiff = make_tiff(pages=1)
    ifd = tiff.ifds[0]
    entries = [tiff.data[ifd + 2 + 12 * i : ifd + 14 + 12 * i] for i in range(9)]
    tags = [struct.unpack("<H", e[:2])[0] for e in entries]

    def patched(tag: int, new_entry: bytes) -> bytes:
        i = tags.index(tag)
        data = bytearray(tiff.data)
        data[ifd + 2 + 12 * i : ifd + 14 + 12 * i] = new_entry
        return bytes(data)

    offsets = entries[tags.index(273)]
    # byte counts that disagree in number with the offsets
    counts = entries[tags.index(279)]
    wrong_count = counts[:4] + struct.pack("<I", 2) + counts[8:]
    assert reason_of(patched(279, wrong_count), TIFF) == content.TIFF_DAMAGED
    # offsets of a non-integer type
    as_rational = offsets[:2] + struct.pack("<H", RATIONAL) + offsets[4:]
    assert reason_of(patched(273, as_rational), TIFF) is not None
    # an entry whose value array lies beyond the end
    beyond = offsets[:8] + struct.pack("<I", len(tiff.data) - 4)
    assert reason_of(patched(273, beyond), TIFF) == content.TIFF_TRUNCATED
    # unknown field types are skipped, as the spec asks
    unknown = struct.pack("<HHI", 65000, 99, 1_000_000) + b"\xff\xff\xff\xff"
    assert reason_of(patched(262, unknown), TIFF) is None


@pytest.mark.parametrize(
    "header",
    [
        b"XX*\x00\x08\x00\x00\x00",
        b"II\x2b\x00\x04\x00\x00\x00" + b"\x00" * 8,
        b"II\x07\x00\x08\x00\x00\x00",
    ],
)
def test_tiff_bad_headers(header: bytes) -> None:
    assert reason_of(header + b"\x00" * 64, TIFF) == content.TIFF_DAMAGED


def test_tiff_without_byte_counts_checks_offsets() -> None:
    tiff = make_tiff(pages=1)
    first_strip = 8
    assert reason_of(_repoint_strips(tiff, first_strip, drop_counts=True), TIFF) is None
    # without byte counts, a strip that starts beyond the end is still caught
    assert reason_of(_repoint_strips(tiff, len(tiff.data), drop_counts=True), TIFF) == (
        content.TIFF_TRUNCATED
    )
    assert reason_of(_repoint_strips(tiff, len(tiff.data) - 1, drop_counts=True), TIFF) is None
    # with byte counts, the strip must also end inside
    assert reason_of(_repoint_strips(tiff, len(tiff.data) - 1, drop_counts=False), TIFF) == (
        content.TIFF_TRUNCATED
    )


def _repoint_strips(tiff: Tiff, where: int, *, drop_counts: bool) -> bytes:
    """A copy of a one-page LE TIFF whose first strip offset is ``where``
    (and whose StripByteCounts tag is renamed to a private tag if ``drop_counts``)."""
    data = bytearray(tiff.data)
    ifd = tiff.ifds[0]
    (n,) = struct.unpack("<H", data[ifd : ifd + 2])
    for i in range(n):
        pos = ifd + 2 + 12 * i
        tag, _typ, _count, value = struct.unpack("<HHII", data[pos : pos + 12])
        if tag == 273:
            data[value : value + 4] = struct.pack("<I", where)
        if tag == 279 and drop_counts:
            data[pos : pos + 2] = struct.pack("<H", 65001)
    return bytes(data)


def test_tiff_ifd_with_no_entries_is_damaged() -> None:
    assert reason_of(b"II*\x00\x08\x00\x00\x00" + b"\x00\x00" + b"\x00" * 4, TIFF) == (
        content.TIFF_DAMAGED
    )


@pytest.mark.timeout(60)
def test_tiff_work_is_bounded_on_hostile_structure() -> None:
    """10,000 IFDs all pointing at one big strip array: the read budget stops it."""
    n_strips = 1024
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    offsets_at = len(out)
    out += struct.pack(f"<{n_strips}I", *([8] * n_strips))
    counts_at = len(out)
    out += struct.pack(f"<{n_strips}I", *([1] * n_strips))
    out[4:8] = struct.pack("<I", len(out))
    for i in range(10_000):
        start = len(out)
        out += struct.pack("<H", 2)
        out += struct.pack("<HHII", 273, LONG, n_strips, offsets_at)
        out += struct.pack("<HHII", 279, LONG, n_strips, counts_at)
        out += struct.pack("<I", start + 30 if i < 9_999 else 0)
    assert reason_of(bytes(out), TIFF) == content.TIFF_TOO_COMPLEX


# --------------------------------------------------------------------------- properties


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


_VALID_BLOBS = [v[0] for v in VALID.values()]
_kinds = st.sampled_from([*KINDS, None])
_bytes = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda b: b"II*\x00" + b, st.binary(max_size=512)),
    st.builds(lambda b: b"MM\x00*" + b, st.binary(max_size=512)),
    st.builds(lambda b: b"II+\x00\x08\x00\x00\x00" + b, st.binary(max_size=512)),
    st.builds(
        _mutate,
        st.sampled_from(_VALID_BLOBS),
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
    ),
    st.builds(lambda b, n: b[:n], st.sampled_from(_VALID_BLOBS), st.integers(0, 2048)),
)


@settings(max_examples=600, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(data=_bytes, kind=_kinds, size_delta=st.integers(-16, 16))
def test_incomplete_reason_never_raises(
    data: bytes, kind: FileKind | None, size_delta: int
) -> None:
    """Arbitrary content, even a size that disagrees with the file: None or a reason."""
    f = io.BytesIO(data)
    size = max(0, len(data) + size_delta)
    result = content.incomplete_reason(f, size, kind)
    assert result is None or (isinstance(result, str) and result)
    assert f.tell() == 0


@settings(max_examples=300, deadline=1000)
@given(data=_bytes)
def test_detect_never_raises(data: bytes) -> None:
    kind = content.detect(io.BytesIO(data))
    assert kind is None or kind in KINDS
