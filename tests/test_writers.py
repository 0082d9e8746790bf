"""Slow and strange writers against the real daemon: nothing is sent before the
file is complete, and then it is sent exactly once with exactly its bytes.

Each writer works on a real file in the inbox while the daemon runs; the
sandbox's received records are the proof (sha256 of what arrived)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Running, Sandbox, events, in_inbox, wait_until
from test_content import make_jpeg, make_png, make_tiff

from daemon import cli
from daemon.queue import JobState
from daemon.samples import sample_pdf, sample_sidecar

OLD = 978_307_200  # 2001-01-01T00:00:00Z


def received_documents(sandbox: Sandbox) -> list[bytes]:
    """The document bytes of every accepted send (embedded or through a blob)."""
    out = []
    for rec in sandbox.state.received():
        contents = rec.body["Media"]["FileContents"]
        if contents.startswith(sandbox.url):
            out.append(sandbox.state.blob_bytes(contents))
        else:
            out.append(base64.b64decode(contents))
    return out


def sent_once(r: Running, sandbox: Sandbox, data: bytes) -> None:
    """Exactly one job, done, and the only bytes that ever arrived are ``data``."""
    (job,) = r.finished(1)
    assert job.state == JobState.DONE, job.last_error
    assert job.sha256 == hashlib.sha256(data).hexdigest()
    assert [hashlib.sha256(d).hexdigest() for d in received_documents(sandbox)] == [job.sha256]
    assert in_inbox(r.inbox) == []


def nothing_taken(r: Running, sandbox: Sandbox) -> None:
    assert sandbox.state.attempts == []
    assert r.jobs() == []


def incremental_pdf(updates: int) -> list[bytes]:
    """A PDF and ``updates`` incremental updates: every prefix ends in ``%%EOF``."""
    parts = [sample_pdf("Page 1")]
    for i in range(2, updates + 2):
        parts.append(b"%% update %d\n" % i + b"x" * 400 + b"\n%%EOF\n")
    return parts


class Writer(threading.Thread):
    """Runs ``steps`` (callables) with ``gap`` seconds between them; ``check`` runs
    after every step while the file is still incomplete."""

    def __init__(self, steps: list[Callable[[], None]], gap: float) -> None:
        super().__init__(name="writer", daemon=True)
        self.steps, self.gap = steps, gap
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i, step in enumerate(self.steps):
                if i:
                    time.sleep(self.gap)
                step()
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive() and self.error is None, self.error


def test_pdf_growing_for_5_seconds_is_sent_once_complete(
    daemon_factory: Callable[..., Running], sandbox: Sandbox
) -> None:
    """A scanner adds a page every half second for 5 s; after each page the file
    ends in %%EOF (incremental updates), so only the settle timer holds it. The
    real-time smoke test; 20 s of such a writer run on a fake clock in
    tests/test_intake_loop.py."""
    parts = incremental_pdf(10)
    full = b"".join(parts)
    r = daemon_factory(settle_seconds=1.5)
    (r.inbox / "scan.pdf.json").write_text(json.dumps(sample_sidecar()))
    path = r.inbox / "scan.pdf"
    with path.open("wb") as fh:
        started = time.monotonic()
        for part in parts:
            fh.write(part)
            fh.flush()
            nothing_taken(r, sandbox)  # complete-looking at every step, but still growing
            time.sleep(0.5)
    assert time.monotonic() - started >= 5
    sent_once(r, sandbox, full)


def test_page_close_reopen_append_waits_for_the_end_marker(
    daemon_factory: Callable[..., Running], sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    """Scanner software closes the file after each page and reopens it to append;
    between pages the file settles but has no %%EOF: the content check holds it,
    and `chartdrop status` shows it as incomplete."""
    full = sample_pdf("Three pages", padding=3000)
    pages = [full[:1000], full[1000:2500], full[2500:]]
    r = daemon_factory(settle_seconds=0.3)
    (r.inbox / "scan.pdf.json").write_text(json.dumps(sample_sidecar()))
    path = r.inbox / "scan.pdf"
    for i, page in enumerate(pages):
        next_verdict = verdict_waiter(r, log_stream, "scan.pdf")
        with path.open("ab" if i else "wb") as fh:
            fh.write(page)
        if i < len(pages) - 1:
            next_verdict()
            assert status_of(r)["incomplete_in_inbox"] == 1
            nothing_taken(r, sandbox)
    sent_once(r, sandbox, full)
    assert status_of(r)["incomplete_in_inbox"] == 0


def status_of(r: Running) -> dict[str, Any]:
    """`chartdrop status --json` for the one destination (the CLI, in-process)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["status", "--json", "-c", str(r.root / "chartdrop.toml")]) == 0
    (row,) = json.loads(out.getvalue())
    assert isinstance(row, dict)
    return row


def _tiff() -> bytes:
    return make_tiff(1).data  # pixel data first, the directory at the end (as libtiff)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("scan.pdf", lambda: sample_pdf("Preallocated", padding=2000)),
        ("photo.jpg", make_jpeg),
        ("photo.png", lambda: make_png(64, 64)),
        ("fax.tif", _tiff),
    ],
)
def test_preallocated_then_filled_is_not_sent_until_filled(
    daemon_factory: Callable[..., Running],
    sandbox: Sandbox,
    log_stream: io.StringIO,
    name: str,
    make: Callable[[], bytes],
) -> None:
    """Windows copies over Samba set the full size first (zeros), then fill it in.
    The size never changes; pauses between writes outlast the settle time, so
    only the content check (end marker, TIFF structure) keeps it back."""
    data = make()
    r = daemon_factory(settle_seconds=0.2)
    (r.inbox / f"{name}.json").write_text(json.dumps(sample_sidecar()))
    path = r.inbox / name
    with path.open("wb") as fh:
        fh.truncate(len(data))  # sparse: all zeros
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    chunks = list(itertools.pairwise(cut))
    for i, (a, b) in enumerate(chunks):
        next_verdict = verdict_waiter(r, log_stream, name)
        with path.open("r+b") as fh:
            fh.seek(a)
            fh.write(data[a:b])
        if i < len(chunks) - 1:  # the daemon looked at the settled, part-filled file: no
            next_verdict()
            nothing_taken(r, sandbox)
    sent_once(r, sandbox, data)


def verdict_waiter(r: Running, log_stream: io.StringIO, name: str) -> Callable[[], None]:
    """Call before changing the file; the returned function waits for the daemon's
    next intake.incomplete verdict on it (the daemon logs once per file, so the
    once-flag is cleared here)."""
    assert r.service.intake is not None
    r.service.intake._reported.discard(("consents", name))
    seen = len(events(log_stream, "intake.incomplete"))
    return lambda: wait_until(lambda: len(events(log_stream, "intake.incomplete")) > seen)


def test_temp_name_then_rename_is_taken_only_after_the_rename(
    daemon_factory: Callable[..., Running], sandbox: Sandbox
) -> None:
    full = sample_pdf("Renamed", padding=1000)
    r = daemon_factory(settle_seconds=0.2, rescan_seconds=0.5)
    (r.inbox / "scan.pdf.json").write_text(json.dumps(sample_sidecar()))
    temp = r.inbox / "scan.pdf.part"
    with temp.open("wb") as fh:
        fh.write(full)  # complete, settled, but under a temp name for a while
    assert r.service.intake is not None
    rescans = r.service.intake._next_rescan["consents"]
    wait_until(lambda: r.service.intake._next_rescan["consents"] > rescans + 0.4)
    nothing_taken(r, sandbox)
    temp.rename(r.inbox / "scan.pdf")
    sent_once(r, sandbox, full)


def test_copy_keeping_an_old_mtime_is_held_by_size_changes(
    daemon_factory: Callable[..., Running], sandbox: Sandbox
) -> None:
    """A copy tool that stamps the original (old) mtime after every write: the
    mtime never changes and the file ends in %%EOF at every step, so only the
    size (watched on our own clock, not the file's age) holds it back."""
    parts = incremental_pdf(8)
    full = b"".join(parts)
    r = daemon_factory(settle_seconds=0.6)
    (r.inbox / "copy.pdf.json").write_text(json.dumps(sample_sidecar()))
    path = r.inbox / "copy.pdf"

    def append(part: bytes) -> Callable[[], None]:
        def step() -> None:
            with path.open("ab") as fh:
                fh.write(part)
            os.utime(path, (OLD, OLD))

        return step

    writer = Writer([append(p) for p in parts], gap=0.15)
    writer.start()
    while writer.is_alive():
        nothing_taken(r, sandbox)
        time.sleep(0.05)
    writer.finish()
    sent_once(r, sandbox, full)
    (rec,) = sandbox.state.received()
    assert rec.body["Media"]["CreationDateTime"].startswith("2001-01-01T00:00:00")


def test_file_that_stays_incomplete_is_reported_never_sent_never_dropped(
    daemon_factory: Callable[..., Running], sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    pdf = sample_pdf("Cut short")
    r = daemon_factory(settle_seconds=0.1, sidecar_timeout_seconds=0.5)
    (r.inbox / "cut.pdf.json").write_text(json.dumps(sample_sidecar()))
    (r.inbox / "cut.pdf").write_bytes(pdf[:-20])  # the copy was interrupted
    r.drop("good.pdf", pdf, sample_sidecar())
    wait_until(lambda: r.jobs(JobState.DONE))
    (line,) = wait_until(lambda: events(log_stream, "intake.incomplete"))
    assert line["reason"] == "the PDF is incomplete: it does not end with the %%EOF end marker"
    row = wait_until(lambda: (lambda s: s if s["incomplete_in_inbox"] == 1 else None)(status_of(r)))
    assert row["incomplete_since"] is not None
    time.sleep(1.0)  # twice the sidecar timeout: still not sent, not failed, not moved
    assert in_inbox(r.inbox) == ["cut.pdf", "cut.pdf.json"]
    assert [j.state for j in r.jobs()] == [JobState.DONE]
    assert len(sandbox.state.received()) == 1
    assert "cut.pdf" not in log_stream.getvalue()  # the reason, never the name


def test_empty_file_waits_for_its_writer_then_fails_if_it_stays_empty(
    daemon_factory: Callable[..., Running], sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    """A writer may create the file and only start writing seconds later: an empty
    file is incomplete, not refused. One that stays empty for the sidecar timeout
    goes to failed/ with a note."""
    pdf = sample_pdf("Late start")
    r = daemon_factory(settle_seconds=0.1, sidecar_timeout_seconds=2)
    (r.inbox / "late.pdf.json").write_text(json.dumps(sample_sidecar()))
    (r.inbox / "empty.pdf.json").write_text(json.dumps(sample_sidecar()))
    (r.inbox / "late.pdf").touch()
    (r.inbox / "empty.pdf").touch()
    verdicts = wait_until(
        lambda: (lambda e: e if len(e) == 2 else None)(events(log_stream, "intake.incomplete"))
    )
    assert {v["reason"] for v in verdicts} == {"the file is empty"}  # waiting, not refused
    (r.inbox / "late.pdf").write_bytes(pdf)
    jobs = r.finished(2)
    outcome = {j.original_name: (j.state, j.error_kind) for j in jobs}
    assert outcome == {
        "late.pdf": (JobState.DONE, None),
        "empty.pdf": (JobState.FAILED, "bad_content"),
    }
    assert "the file is empty" in (r.failed / "empty.pdf.error.txt").read_text()
    assert received_documents(sandbox) == [pdf]
