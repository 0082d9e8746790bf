"""The spool copy is the snapshot (issue 12 item 2): what is sent, and then
filed in done/, is exactly the bytes hashed at intake, whatever a writer that
still holds the scanner's file open does meanwhile."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import (
    ChangedError,
)
from daemon.fsutil import READ_CHUNK, fsync, fsync_dir, open_document

CHANGED = (
    "the file changed after chartdrop had taken it (something was still writing it), "
    "so it was not sent"
)
SNAPSHOT_SUFFIX = ".snapshot"


@dataclass(frozen=True)
class Snapshot:
    """The spool document as copied: the bytes checked against the intake hash."""

    size: int
    mtime: float  # the document's, kept on the copy (its CreationDateTime)
    data: bytes | None  # those bytes, when the caller asked to keep them (else None)


def snapshot(spool_document: Path, sha256: str, *, keep_bytes: int = 0) -> Snapshot | None:
    """Make ``spool_document`` a private copy of the bytes hashed at intake, so
    what is sent, and then filed in done/, is exactly those bytes.

    Intake renames the scanner's file into the spool: the same inode, which a
    writer that still holds it open can change at any moment (while the send
    waits for a token, or after it). The bytes are copied (mode 0600, mtime
    kept: it is the document's CreationDateTime) into a new file, checked
    against ``sha256`` (ChangedError when they differ: failed/ with the reason),
    made durable and renamed over the spool name. A late writer then writes to
    the old, unlinked inode and can change neither the send nor done/.

    A document of at most ``keep_bytes`` is kept in memory as copied
    (``Snapshot.data``): those bytes, already checked, are what is sent, without
    opening and reading the spool file again.

    A disk with no room for the copy (ENOSPC, EDQUOT) does not hold the send
    back: it goes out from the spool file as before, still checked against
    ``sha256`` just before it is read (returns None then).
    """
    tmp = Path(f"{spool_document}{SNAPSHOT_SUFFIX}")  # (a crash's leftover: see _create)
    try:
        snap = _copy_checked(spool_document, tmp, sha256, keep_bytes)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return None
        raise
    fsync_dir(spool_document.parent)
    return snap


def _copy_checked(spool_document: Path, tmp: Path, sha256: str, keep_bytes: int) -> Snapshot:
    with open_document(spool_document) as src:
        st = os.fstat(src.fileno())
        keep = st.st_size <= keep_bytes
        # A document kept is read as one object (no copy to join blocks); one that
        # grew since the fstat is read on in blocks, not kept (and fails its hash).
        kept = src.read(st.st_size + 1) if keep else b""
        size = 0
        digest = hashlib.sha256()
        fd = _create(tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                for block in itertools.chain((kept,), iter(lambda: src.read(READ_CHUNK), b"")):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
                out.flush()
                os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
                with contextlib.suppress(OSError):  # the staff group the inbox gave it
                    os.fchown(out.fileno(), -1, st.st_gid)
                fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise ChangedError(CHANGED)
            tmp.replace(spool_document)  # atomic, within the spool
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return Snapshot(size=size, mtime=st.st_mtime, data=kept if keep and size == len(kept) else None)


def _create(tmp: Path) -> int:
    """``tmp``, new and private (0600). A crash's leftover there is removed first:
    only then, not with an unlink before every copy (one syscall fewer per job)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(tmp, flags, 0o600)
    except FileExistsError:
        tmp.unlink()
        return os.open(tmp, flags, 0o600)
