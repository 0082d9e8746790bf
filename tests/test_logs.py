"""Logs for journald: syslog priorities on every line when stderr is the journal,
job.failed at warning, daemon problems at error, and PHI-free tracebacks."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from conftest import Sandbox, events, running, wait_until, write_config

from daemon import logs
from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


@pytest.fixture
def restore_hooks() -> Iterator[None]:
    hooks = (threading.excepthook, sys.excepthook)
    yield
    threading.excepthook, sys.excepthook = hooks
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_StdlibToStructlog":
            root.removeHandler(handler)


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_lines_carry_their_priority_on_the_journal_stream(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    err = tmp_path / "journal.txt"
    with err.open("w") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen(
            [CHARTDROP, "run", "-c", str(config)], stderr=fh, stdout=subprocess.DEVNULL, env=env
        )
        try:
            wait_until(lambda: any("daemon.started" in line for line in _lines(err)))
            inbox = tmp_path / "consents" / "inbox"
            bad = sample_sidecar(last="CANARYLAST")
            del bad["Patient"]["Identifiers"]
            (inbox / "CANARY.pdf.json").write_text(json.dumps(bad))
            (inbox / "CANARY.pdf").write_bytes(sample_pdf("x"))
            wait_until(lambda: any("job.failed" in line for line in _lines(err)))
            config.write_text(config.read_text().replace("workers = 2", "workers = 'many'"))
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: any("daemon.reload_refused" in line for line in _lines(err)))
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    by_event = {}
    for line in _lines(err):
        assert line[0] == "<" and line[2] == ">", line
        by_event[json.loads(line[3:])["event"]] = (int(line[1]), json.loads(line[3:]))
    assert by_event["daemon.started"][0] == 6
    assert by_event["job.failed"][0] == 4
    assert by_event["job.failed"][1]["level"] == "warning"
    assert by_event["daemon.reload_refused"][0] == 3
    assert "CANARY" not in err.read_text()


def test_without_the_journal_lines_are_plain_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")  # someone else's stream, not ours
    stream = io.StringIO()
    logs.configure(fmt="json", stream=stream)
    try:
        structlog.get_logger().info("job.failed", job_id="x")
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["level"] == "warning"  # raised, but no <N> prefix off the journal


def test_an_uncaught_thread_exception_is_logged_with_frames_only(
    restore_hooks: None,
) -> None:
    stream = io.StringIO()
    logs.configure(fmt="json", stream=stream)

    def boom() -> None:
        raise ValueError("CANARY_Bixby_Timothy.pdf could not be read")

    try:
        t = threading.Thread(target=boom, name="worker-9")
        t.start()
        t.join()
        logging.getLogger("httpx").warning("HTTP Request: POST CANARY_url")
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "CANARY" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    (crash,) = [x for x in lines if x["event"] == "daemon.unexpected_exception"]
    assert crash["exc_type"] == "ValueError" and crash["thread"] == "worker-9"
    assert crash["level"] == "error"
    assert crash["frames"][-1].startswith("tests/test_logs.py:")
    assert crash["frames"][-1].endswith(":boom")
    (lib,) = [x for x in lines if x["event"] == "library.log"]
    assert (lib["logger"], lib["level"]) == ("httpx", "warning")


def test_job_failed_is_a_warning_in_the_running_daemon(
    tmp_path: Path, sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        bad = sample_sidecar()
        del bad["Patient"]["Identifiers"]
        r.drop("x.pdf", sample_pdf("x"), bad)
        r.finished(1)
    (failed,) = events(log_stream, "job.failed")
    assert failed["level"] == "warning"
    (done,) = events(log_stream, "daemon.started")
    assert done["level"] == "info"
