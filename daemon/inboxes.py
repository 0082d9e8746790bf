"""Intake's view of each inbox for the admin: is the folder still there, and
what is stuck in it?

:class:`InboxGuard` notices an inbox that disappeared, was unmounted or was
replaced, so intake pauses that destination with a reason instead of reading
an empty folder as "nothing to do". A folder that is *gone* (deleted, renamed
away, replaced by a file or a link, or on another filesystem because a share
was unmounted) is accepted again as soon as a real folder is back on the
spool's filesystem. A folder silently swapped for a *different* one on the
same filesystem (an unmounted bind mount uncovers the folder beneath it) stays
paused until the original comes back or chartdrop is restarted.

:class:`IntakeReport` keeps ``state_dir/intake-status.json`` (counts and
reasons, no file names) for ``chartdrop status``, which reads it only while
the daemon holds its lock, so a stale file from a killed daemon is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path
from typing import Any

from daemon.config import LOCK_NAME
from daemon.fsutil import ensure_dir

REPORT_NAME = "intake-status.json"

MISSING = "the inbox folder is missing (deleted, renamed or unmounted)"
LINK = "the inbox is now a symbolic link, not the folder chartdrop was started with"
NOT_A_FOLDER = "the inbox is no longer a folder (something else has its name)"
OTHER_FS = (
    "the inbox is now on a different filesystem (a share was unmounted or something was "
    "mounted over it)"
)
REPLACED = (
    "the inbox was replaced by a different folder (an unmount, or moved away and made again); "
    "put the original back, or restart chartdrop to accept the new folder"
)


class InboxGuard:
    """One inbox's identity at start; :meth:`check` says whether intake may run there."""

    def __init__(self, inbox: Path, spool_dev: int | None) -> None:
        self.inbox = inbox
        self.spool_dev = spool_dev
        self.identity: tuple[int, int] | None = None
        self._was_gone = True  # the first good look is accepted as the identity
        self.check()

    def check(self) -> str | None:
        """None if the inbox is the usable folder it was, else the reason (no PHI)."""
        try:
            st = os.lstat(self.inbox)
        except (FileNotFoundError, NotADirectoryError):
            self._was_gone = True
            return MISSING
        except OSError as exc:  # EACCES, EIO, ESTALE on a dead network mount
            return f"the inbox folder cannot be examined ({exc.strerror})"
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            self._was_gone = True
            return LINK if stat.S_ISLNK(st.st_mode) else NOT_A_FOLDER
        if self.spool_dev is not None and st.st_dev != self.spool_dev:
            self._was_gone = True
            return OTHER_FS
        identity = (st.st_dev, st.st_ino)
        if identity != self.identity:
            if not self._was_gone:
                return REPLACED
            self.identity = identity
        self._was_gone = False
        return None


class IntakeReport:
    """Writes the report when (and only when) its content changes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / REPORT_NAME
        self._last: dict[str, Any] | None = None

    def update(self, destinations: dict[str, dict[str, Any]], *, now: float) -> bool:
        """Replace the report if ``destinations`` changed; True if it was written."""
        if destinations == self._last:
            return False
        ensure_dir(self.path.parent)
        tmp = self.path.with_name(f".{REPORT_NAME}.{os.getpid()}.tmp")
        data = json.dumps({"updated_at": now, "destinations": destinations}, indent=1)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        tmp.replace(self.path)  # a snapshot: no fsync, the next change rewrites it
        self._last = json.loads(json.dumps(destinations))
        return True


def daemon_running(state_dir: Path) -> bool:
    """True if a daemon holds the state directory's lock (checked without creating it)."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_report(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Per destination, the running daemon's intake report; empty if none is running."""
    if not daemon_running(state_dir):
        return {}
    try:
        data = json.loads((state_dir / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return {}
    dests = data.get("destinations") if isinstance(data, dict) else None
    return dests if isinstance(dests, dict) else {}
