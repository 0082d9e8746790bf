"""One daemon per inbox: each watched inbox is locked by the daemon that watches it.

Two daemons on one inbox (different state dirs, same folders) would split its
documents between two databases. So each daemon holds an ``flock`` on
``<inbox>/.chartdrop.lock`` for as long as it watches the inbox; a second one
is refused at start (and on reload), and ``chartdrop check`` reports it. The
kernel drops an ``flock`` when its holder dies, so a crash leaves no stale
lock. The name starts with a dot: intake ignores it (:func:`daemon.names.is_junk`).
The file holds who owns the lock (pid, host, state_dir) for the messages;
nothing about documents.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from daemon.errors import ConfigError

INBOX_LOCK_NAME = ".chartdrop.lock"


def _holder(fh: IO[bytes]) -> str:
    fh.seek(0)
    text = fh.read(512).decode("utf-8", "replace").strip()
    return text or "another chartdrop"


def lock_inbox(name: str, inbox: Path, state_dir: Path) -> IO[bytes]:
    """Take ``inbox``'s lock for destination ``name``; ConfigError if another
    daemon holds it. Keep the returned file open for as long as the inbox is watched."""
    path = inbox / INBOX_LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"destination {name!r} inbox ({inbox}): cannot create its lock file "
            f"{INBOX_LOCK_NAME} ({exc.strerror})"
        ) from None
    fh = os.fdopen(fd, "r+b")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fh)
        fh.close()
        raise ConfigError(
            f"destination {name!r} inbox ({inbox}) is already watched by {holder}; two "
            "daemons on one inbox would split its documents between two databases "
            "(stop the other one, or give this destination another inbox)"
        ) from None
    except BaseException:
        fh.close()
        raise
    fh.truncate(0)
    fh.seek(0)
    owner = f"chartdrop pid {os.getpid()} on {socket.gethostname()}, state_dir {state_dir}"
    fh.write(owner.encode())
    fh.flush()
    return fh


def inbox_conflict(name: str, inbox: Path, state_dir: Path) -> str | None:
    """For ``chartdrop check``: why this config cannot watch ``inbox`` (another
    daemon, with another state_dir, holds its lock), or None. The daemon of this
    very config (same state_dir) holding it is no conflict."""
    path = inbox / INBOX_LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # nobody has watched it, or it cannot be read (reported elsewhere)
    with os.fdopen(fd, "rb") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fh)
            if holder.endswith(f"state_dir {state_dir}"):
                return None
            return (
                f"destination {name!r} inbox ({inbox}) is already watched by {holder}; two "
                "daemons on one inbox would split its documents between two databases"
            )
        return None
