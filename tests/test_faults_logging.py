"""The log never stops the daemon (issue 12, items 5 and 6), on the real daemon
(a subprocess) against the real sandbox.

* A log sink that fails (``/dev/full``, a pipe whose reader is gone) does not kill
  the daemon: documents are still delivered and SIGTERM still exits 0.
* Signals arriving while the main thread is in the middle of writing a log line
  (its stderr pipe full) do not deadlock it: the handlers only set flags.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

import pytest
from conftest import Sandbox, wait_until
from crash_harness import CHARTDROP, db_jobs, soak_config

from daemon.errors import ConfigError
from daemon.samples import sample_pdf, sample_sidecar

F_SETPIPE_SZ = 1031


def _drop(inbox: Path, n: int = 1, *, bad: bool = False) -> None:
    for i in range(n):
        side = sample_sidecar(mrn=f"{i:010d}")
        if bad:
            del side["Patient"]["Identifiers"]
        (inbox / f"CANARY {i}.pdf.json").write_text(json.dumps(side))
        (inbox / f"CANARY {i}.pdf").write_bytes(sample_pdf(f"log sink {i}"))


def _run(config: Path, stderr: int | IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CHARTDROP, "run", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    try:
        return proc.wait(timeout) if proc.poll() is not None else _term(proc, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _term(proc: subprocess.Popen[bytes], timeout: float) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def _done(db: Path) -> int:
    try:
        return len(db_jobs(db).get("done", []))
    except (OSError, ConfigError):  # not created yet
        return 0


def _delivers_and_exits_cleanly(tmp_path: Path, sandbox: Sandbox, stderr: int) -> None:
    config = soak_config(tmp_path, sandbox, workers=1)
    db = tmp_path / "state" / "chartdrop.sqlite3"
    proc = _run(config, stderr)
    try:
        _drop(tmp_path / "consents" / "inbox", 3)
        wait_until(lambda: proc.poll() is not None or _done(db) == 3, 30)
        assert proc.poll() is None, f"the daemon died with exit code {proc.returncode}"
        assert len(sandbox.state.received()) == 3
        assert len(list((tmp_path / "consents" / "done").rglob("*.pdf"))) == 3
    finally:
        code = _stop(proc)
    assert code == 0


def test_a_full_log_sink_does_not_stop_the_daemon(tmp_path: Path, sandbox: Sandbox) -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        _delivers_and_exits_cleanly(tmp_path, sandbox, fd)
    finally:
        os.close(fd)


def test_a_log_pipe_with_no_reader_does_not_stop_the_daemon(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    read, write = os.pipe()
    os.close(read)  # nobody will ever read: every write is EPIPE
    try:
        _delivers_and_exits_cleanly(tmp_path, sandbox, write)
    finally:
        os.close(write)


def _main_thread_in_pipe_write(pid: int) -> bool:
    try:
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_signals_while_a_log_line_is_being_written_do_not_deadlock(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    # Documents refused at intake are logged by the main thread alone; a tiny
    # stderr pipe nobody reads makes it block in the middle of writing one.
    config = soak_config(tmp_path, sandbox, workers=1)
    read, write = os.pipe()
    fcntl.fcntl(write, F_SETPIPE_SZ, 4096)
    proc = _run(config, write)
    os.close(write)
    try:
        started = b""
        while b"daemon.started" not in started:
            chunk = os.read(read, 65536)
            assert chunk, "the daemon exited during start-up"
            started += chunk
        _drop(tmp_path / "consents" / "inbox", 40, bad=True)
        wait_until(lambda: _main_thread_in_pipe_write(proc.pid), timeout=30, interval=0.01)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # the second one, as systemd or an admin repeats it
        time.sleep(0.2)
        os.set_blocking(read, False)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                os.read(read, 65536)  # drain: the blocked write can finish now
            except BlockingIOError:
                time.sleep(0.05)
        assert proc.poll() is not None, "the daemon deadlocked on a signal during a log write"
        assert proc.returncode == 0
    finally:
        _stop(proc)
        os.close(read)
