"""Named kill points: where a crash hurts most, so tests can crash exactly there.

TEST-ONLY. ``killpoint("after_send")`` does nothing at all unless the
environment variable ``CHARTDROP_TEST_KILLPOINT`` equals ``"after_send"``;
then the process SIGKILLs itself on the spot, as a power cut or an OOM kill
would, without running any cleanup. Never set this variable on a real
installation. ``tests/test_killpoints.py`` sets it on a ``chartdrop run``
subprocess, drops a document, and checks that the restarted daemon finishes
the job exactly once.

The points (each is one call at the moment it names):

    intake_after_row   intake: job row committed, files not yet in the spool
    intake_mid_rename  intake: document in the spool, sidecar still in the inbox
    mid_upload         redox: part of the file streamed to the blob endpoint
    after_send         delivery: HTTP 2xx received, ``sent`` not yet committed
    after_commit       delivery: ``sent`` committed, files not yet moved
    mid_move           filing: document in done/ or failed/, sidecar not yet moved
    mid_note           failed/ note: its hidden temp file written, not yet renamed

The variable is read on every call, so a test can set it per subprocess.
"""

from __future__ import annotations

import os
import signal
from typing import IO, Any, cast

ENV = "CHARTDROP_TEST_KILLPOINT"

POINTS = frozenset(
    {
        "intake_after_row",
        "intake_mid_rename",
        "mid_upload",
        "after_send",
        "after_commit",
        "mid_move",
        "mid_note",
    }
)


def armed(name: str) -> bool:
    """True if the test-only variable names this kill point."""
    return os.environ.get(ENV) == name


def killpoint(name: str) -> None:
    """SIGKILL this process if the test-only variable names ``name``; else nothing."""
    if armed(name):
        os.kill(os.getpid(), signal.SIGKILL)


class _KillAfterFirstChunk:
    """A file wrapper whose second ``read`` kills the process: by then the first
    chunk has been handed to the HTTP transport, so the upload is half-streamed."""

    def __init__(self, fh: IO[bytes], name: str) -> None:
        self._fh = fh
        self._name = name
        self._reads = 0

    def read(self, size: int = -1) -> bytes:
        self._reads += 1
        if self._reads > 1:
            killpoint(self._name)
        return self._fh.read(size)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._fh, attr)


def reading(fh: IO[bytes], name: str) -> IO[bytes]:
    """``fh`` itself, or (only when the kill point is armed) a wrapper that kills
    the process once the first chunk of it was read."""
    if not armed(name):
        return fh
    return cast(IO[bytes], _KillAfterFirstChunk(fh, name))
