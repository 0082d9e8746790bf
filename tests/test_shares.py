"""Network shares: the polling observer, the rescan as the source of truth, a
real inotify queue overflow, and an inbox that disappears or is unmounted."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Running, Sandbox, events, running, start_daemon, wait_until, write_config
from watchdog.events import FileSystemEvent

from daemon.inboxes import MISSING, NOT_A_FOLDER, OTHER_FS, REPLACED, InboxGuard
from daemon.intake import InboxEvents
from daemon.queue import JobState


def config_with(tmp_path: Path, sandbox: Sandbox, dest_keys: str, **top: Any) -> Path:
    """write_config plus keys in the [[destination]] table."""
    config = write_config(tmp_path, sandbox, **top)
    text = config.read_text().replace(
        "[destination.defaults]", dest_keys + "\n[destination.defaults]"
    )
    config.write_text(text)
    return config


class Deaf(InboxEvents):
    """An observer handler that never passes anything on (a share where no events arrive)."""

    def on_any_event(self, event: FileSystemEvent) -> None:
        return


def test_polling_inbox_finds_files_without_inotify_or_rescan(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    from watchdog.observers.polling import PollingEmitter

    config = config_with(tmp_path, sandbox, "polling = true", rescan_seconds=3600)
    with running(config) as r:
        observer, _watch = r.service._watches["consents"]
        assert all(isinstance(e, PollingEmitter) for e in observer.emitters)
        r.drop("polled.pdf", pdf, sidecar)  # after the start-up rescan: only polling sees it
        (job,) = r.finished(1)
        assert job.state == JobState.DONE


def test_rescan_alone_finds_files_when_no_events_arrive(
    daemon_factory: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
    pdf: bytes,
    sidecar: dict[str, Any],
) -> None:
    monkeypatch.setattr("daemon.service.InboxEvents", Deaf)
    r = daemon_factory(rescan_seconds=0.5)
    r.drop("unseen.pdf", pdf, sidecar)
    (job,) = r.finished(1)
    assert job.state == JobState.DONE


def test_inotify_queue_overflow_triggers_a_rescan(
    daemon_factory: Callable[..., Running],
    sandbox: Sandbox,
    log_stream: io.StringIO,
    pdf: bytes,
    sidecar: dict[str, Any],
) -> None:
    """A real kernel overflow: the test holds watchdog's reader back while more
    events than fs.inotify.max_queued_events pile up. Nothing else would find
    the document (events are lost, the next rescan is an hour away)."""
    r = daemon_factory(rescan_seconds=3600)
    wait_until(lambda: r.service.intake and r.service.intake._next_rescan["consents"] > 0)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    reader = r.service._observers[0]._inotify_fd  # type: ignore[attr-defined]
    with reader._lock:  # watchdog's reader thread cannot take events now
        # create + close-after-write: 2 events each (the watch asks for no opens: see
        # daemon.intake.events.WATCHED_EVENTS), beyond the kernel's queue even if the
        # reader had one last buffer (2048 events) in flight
        for i in range((limit + 2048) // 2 + 200):
            os.close(os.open(r.inbox / f".noise-{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        r.drop("lost.pdf", pdf, sidecar)  # its events are the ones the kernel drops
    (job,) = r.finished(1)
    assert job.state == JobState.DONE
    assert events(log_stream, "intake.events_lost")


def test_overflow_listener_ignores_other_watchdog_warnings(
    daemon_factory: Callable[..., Running], log_stream: io.StringIO
) -> None:
    import logging

    r = daemon_factory(rescan_seconds=3600)
    logging.getLogger("watchdog.observers.inotify_c").warning("something else happened")
    assert not events(log_stream, "intake.events_lost")
    assert r.service._events_lost in logging.getLogger("watchdog.observers.inotify_c").handlers
    r.stop()
    assert r.service._events_lost not in logging.getLogger("watchdog.observers.inotify_c").handlers


def _can_mount(where: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return False
    subprocess.run(["umount", str(where)], check=True)
    return True


def test_inbox_that_disappears_pauses_intake_and_resumes_when_back(
    tmp_path: Path, sandbox: Sandbox, log_stream: io.StringIO, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    """Deleted, renamed away, replaced by a file, unmounted (another filesystem):
    each pauses intake with a reason (a `folder_missing` pause and a log line);
    queued documents still go out; when the folder is back, intake resumes and
    the folder is watched again (the rescan is an hour away, so only the
    re-armed watch can find the next document)."""
    config = write_config(tmp_path, sandbox, rescan_seconds=3600)
    r = start_daemon(config)
    try:
        inbox, aside = r.inbox, r.inbox.with_name("inbox.moved")

        def folder_pauses() -> list[str]:
            return [p.reason for p in r.queue.pauses() if p.kind == "folder_missing"]

        def paused(reason: str) -> None:
            wait_until(lambda: folder_pauses() == [f"intake paused: {reason}"])

        def resumes(n: int) -> None:
            wait_until(lambda: folder_pauses() == [])
            r.drop(f"after-{n}.pdf", pdf, sidecar)
            r.finished(n)

        # renamed away (a queued document still goes out meanwhile), then back
        sandbox.state.set_faults(outage=True)
        r.drop("queued.pdf", pdf, sidecar)
        wait_until(lambda: r.jobs(JobState.QUEUED))
        inbox.rename(aside)
        paused(MISSING)
        sandbox.state.set_faults(outage=False)
        wait_until(lambda: r.jobs(JobState.DONE))
        aside.rename(inbox)
        resumes(2)

        # deleted, then made again (a new folder: accepted, watched afresh)
        shutil.rmtree(inbox)
        paused(MISSING)
        inbox.mkdir()
        resumes(3)

        # replaced by a file of the same name
        inbox.rename(aside)
        inbox.write_bytes(b"not a folder")
        paused(NOT_A_FOLDER)
        inbox.unlink()
        aside.rename(inbox)
        resumes(4)

        # a share mounted over it / unmounted: another filesystem
        probe = tmp_path / "probe"
        probe.mkdir()
        mounted = _can_mount(probe)
        if mounted:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inbox)], check=True
            )
            try:
                paused(OTHER_FS)
                (inbox / "hidden.pdf").write_bytes(pdf)  # never taken while paused
                (inbox / "hidden.pdf.json").write_text(json.dumps(sidecar))
            finally:
                subprocess.run(["umount", str(inbox)], check=True)
            resumes(5)
        assert r.thread.is_alive()
    finally:
        r.stop()
    assert r.results == [0]
    assert not events(log_stream, "daemon.tick_failed")
    lines = events(log_stream, "intake.folder_missing")
    reasons = [MISSING, MISSING, NOT_A_FOLDER] + ([OTHER_FS] if mounted else [])
    assert [line["reason"] for line in lines] == reasons
    assert all(line["destination"] == "consents" for line in lines)
    assert len(events(log_stream, "intake.folder_back")) == len(lines)
    assert sandbox.state.attempts and all(a.status in (200, 503) for a in sandbox.state.attempts)


def test_guard_refuses_a_folder_silently_swapped_for_another(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    guard = InboxGuard(inbox, inbox.stat().st_dev)
    assert guard.check() is None
    inbox.rename(tmp_path / "original")
    inbox.mkdir()  # swapped between two looks (an unmounted bind mount looks like this)
    assert guard.check() == REPLACED
    inbox.rmdir()
    assert guard.check() == MISSING
    (tmp_path / "original").rename(inbox)
    assert guard.check() is None
    assert InboxGuard(inbox, inbox.stat().st_dev + 1).check() == OTHER_FS
