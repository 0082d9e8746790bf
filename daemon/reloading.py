"""A reload that tells the truth: ``chartdrop reload`` (systemd's ``ExecReload=``)
sends SIGHUP to the daemon and waits for its answer, so ``systemctl reload``
fails, visibly, when the new config is refused.

The daemon writes ``state_dir/reload-result.json`` after every reload attempt
(``ok`` and the problems, which name config keys and folders, never documents);
the command waits until that file changes, then exits 0 if the config was
applied, 1 with every problem if it was refused (the running config is kept).

Also here: :func:`secret_fingerprints`, what tells a reload that a key or
secret *file* was replaced under the same name, so the API clients are rebuilt
and the new key is read.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from daemon.config import Settings
from daemon.errors import ChartdropError

RESULT_NAME = "reload-result.json"


def write_result(state_dir: Path, *, ok: bool, problems: list[str]) -> None:
    """The daemon's answer to one SIGHUP (a snapshot: temp file, then rename)."""
    path = state_dir / RESULT_NAME
    tmp = path.with_name(f".{RESULT_NAME}.{os.getpid()}.tmp")
    data = json.dumps({"at": time.time(), "ok": ok, "problems": problems})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    tmp.replace(path)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def request_reload(state_dir: Path, pid: int, *, timeout: float = 60.0) -> dict[str, Any]:
    """SIGHUP ``pid`` and return the daemon's answer (``ok``, ``problems``)."""
    path = state_dir / RESULT_NAME
    before = _stamp(path)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ChartdropError(f"no process {pid}: is chartdrop running?") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _stamp(path)
        if now is not None and now != before:
            try:
                answer: dict[str, Any] = json.loads(path.read_text())
                return answer
            except (OSError, ValueError):
                pass  # being replaced: look again
        time.sleep(0.1)
    raise ChartdropError(f"the daemon did not answer the reload within {timeout:g} s")


def secret_fingerprints(settings: Settings) -> tuple[object, ...]:
    """(path, inode, size, mtime) of every key and secret file: a file replaced under
    the same name changes this, so a reload rebuilds the clients that read it."""
    out: list[object] = []
    for path in (
        settings.redox.private_key_file,
        settings.redox.secret_file,
        settings.fhir.client_secret_file,
    ):
        if path is None:
            continue
        try:
            st = path.stat()
            out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), None))
    return tuple(out)
