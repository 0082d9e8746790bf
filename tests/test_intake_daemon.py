"""Intake against the real daemon and sandbox: every naming case pairs and is
sent; a pair is taken one settle window after it was dropped; a file held as
incomplete costs (almost) no CPU while it waits."""

from __future__ import annotations

import json
import os
import statistics
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Running, Sandbox, in_inbox, wait_until, write_config
from daemonproc import daemon_process

from daemon.queue import JobState
from daemon.samples import sample_pdf, sample_sidecar

D = unicodedata.normalize("NFD", "Müller")  # as macOS writes it
C = unicodedata.normalize("NFC", "Müller")


def drop_pair(inbox: Path, document: str, sidecar: str, data: bytes) -> None:
    """Sidecar first, then the document, each renamed into place."""
    tmp = inbox / ".sidecar.part"
    tmp.write_text(json.dumps(sample_sidecar()))
    tmp.rename(inbox / sidecar)
    tmp = inbox / ".document.part"
    tmp.write_bytes(data)
    tmp.rename(inbox / document)


@pytest.mark.parametrize(
    ("document", "sidecar"),
    [
        ("scan.pdf", "scan.pdf.JSON"),
        ("scan.pdf", "scan.JSON"),
        (f"{D}.pdf", f"{C}.pdf.json"),
        (f"{C}.pdf", f"{D}.pdf.json"),
        (f"{D}.pdf", f"{C}.json"),
    ],
    ids=["upper-exact", "upper-stem", "decomposed-doc", "decomposed-sidecar", "decomposed-stem"],
)
def test_naming_case_pairs_and_is_sent(
    daemon_factory: Callable[..., Running], sandbox: Sandbox, document: str, sidecar: str
) -> None:
    r = daemon_factory()
    data = sample_pdf("Pairing")
    drop_pair(r.inbox, document, sidecar, data)
    (job,) = r.finished(1)
    assert job.state == JobState.DONE, job.last_error
    assert (job.original_name, job.sidecar_name) == (document, sidecar)
    assert len(sandbox.state.received()) == 1
    assert in_inbox(r.inbox) == []
    assert os.listdir(r.failed) == []
    (day,) = os.listdir(r.done)
    # filed as the same pair (the sidecar's name takes the document's Unicode form)
    filed = sorted(unicodedata.normalize("NFC", n) for n in os.listdir(r.done / day))
    assert filed == sorted(unicodedata.normalize("NFC", n) for n in (document, sidecar))
    assert document in os.listdir(r.done / day)


def test_pickup_is_one_settle_window(daemon_factory: Callable[..., Running]) -> None:
    """drop -> queued is settle_seconds (plus a little), not twice it."""
    settle = 1.0
    r = daemon_factory(settle_seconds=settle, rescan_seconds=60)
    delays = []
    for i in range(3):
        dropped = time.monotonic()
        drop_pair(r.inbox, f"scan{i}.pdf", f"scan{i}.pdf.json", sample_pdf(f"Settle {i}"))
        wait_until(lambda n=i + 1: len(r.jobs()) >= n, interval=0.01)  # type: ignore[misc]
        delays.append(time.monotonic() - dropped)
    assert min(delays) >= settle
    # 2 x settle before; settle + 0.5 while watchdog held renames (unhold_moves)
    assert statistics.median(delays) < settle + 0.35, delays


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_incomplete_file_held_in_the_inbox_costs_no_cpu(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A PDF without %%EOF held for seconds: the daemon stays idle (it burned more
    than a core before: judging opened the file, the open woke the loop again)."""
    config = write_config(tmp_path, sandbox, settle_seconds=0.2, rescan_seconds=1)
    inbox = tmp_path / "consents" / "inbox"
    pdf = sample_pdf("Held", padding=50_000)
    with daemon_process(config) as daemon:
        wait_until(lambda: daemon.logs("daemon.started"))
        drop_pair(inbox, "scan.pdf", "scan.pdf.json", pdf[: pdf.rindex(b"%%EOF")])
        wait_until(lambda: daemon.logs("intake.incomplete"))
        before = cpu_seconds(daemon.proc.pid)
        time.sleep(3.0)  # the measurement window, not a wait for a condition
        used = cpu_seconds(daemon.proc.pid) - before
        assert daemon.proc.poll() is None
        assert used < 0.5, f"{used:.2f} CPU-seconds in 3 s while holding one file"
        assert in_inbox(inbox) == ["scan.pdf", "scan.pdf.json"]
        with (inbox / "scan.pdf").open("ab") as fh:  # the writer finishes: taken
            fh.write(pdf[pdf.rindex(b"%%EOF") :])
        wait_until(lambda: daemon.logs("job.sent"))
