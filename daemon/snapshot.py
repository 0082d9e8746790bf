"""The spool copy is the snapshot (issue 12 item 2): what is sent, and then
filed in done/, is exactly the bytes hashed at intake, whatever a writer that
still holds the scanner's file open does meanwhile."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

from daemon.errors import (
    ChangedError,
)
from daemon.fsutil import fsync_dir, open_document

CHANGED = (
    "the file changed after chartdrop had taken it (something was still writing it), "
    "so it was not sent"
)
SNAPSHOT_SUFFIX = ".snapshot"


def snapshot(spool_document: Path, sha256: str) -> bool:
    """Make ``spool_document`` a private copy of the bytes hashed at intake, so
    what is sent, and then filed in done/, is exactly those bytes.

    Intake renames the scanner's file into the spool: the same inode, which a
    writer that still holds it open can change at any moment (while the send
    waits for a token, or after it). The bytes are copied (mode 0600, mtime
    kept: it is the document's CreationDateTime) into a new file, checked
    against ``sha256`` (ChangedError when they differ: failed/ with the reason),
    made durable and renamed over the spool name. A late writer then writes to
    the old, unlinked inode and can change neither the send nor done/.

    A disk with no room for the copy (ENOSPC, EDQUOT) does not hold the send
    back: it goes out from the spool file as before, still checked against
    ``sha256`` just before it is read (returns False then).
    """
    tmp = spool_document.with_name(spool_document.name + SNAPSHOT_SUFFIX)
    tmp.unlink(missing_ok=True)  # a crash's leftover
    try:
        _copy_checked(spool_document, tmp, sha256)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return False
        raise
    fsync_dir(spool_document.parent)
    return True


def _copy_checked(spool_document: Path, tmp: Path, sha256: str) -> None:
    with open_document(spool_document) as src:
        st = os.fstat(src.fileno())
        digest = hashlib.sha256()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
                with contextlib.suppress(OSError):  # the staff group the inbox gave it
                    os.fchown(out.fileno(), -1, st.st_gid)
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise ChangedError(CHANGED)
            tmp.replace(spool_document)  # atomic, within the spool
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
