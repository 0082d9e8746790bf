"""Disk and permissions: a move that the disk refuses after a successful send is
retried, never resent; an unreadable document is retried for a while, then
reported; done/ or failed/ inside an inbox is refused at start."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Running,
    Sandbox,
    events,
    in_inbox,
    mounted_tmpfs,
    running,
    wait_until,
    write_config,
)

from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar
from daemon.service import Service

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """Make ``folder`` refuse new entries, even for root: chmod where that binds,
    else the immutable attribute (root is refused too). Yields the technique."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "chmod 555"
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root and chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("running as root and this filesystem has no immutable attribute")
    try:
        yield "chattr +i"
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def endpoint_attempts(sandbox: Sandbox) -> list[int]:
    return [a.status for a in sandbox.state.attempts if a.path == "/endpoint"]


def test_read_only_done_after_send_keeps_job_sent_and_retries_the_move_only(
    daemon_factory: Callable[..., Running],
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    log_stream: io.StringIO,
    pdf: bytes,
    sidecar: dict[str, Any],
) -> None:
    monkeypatch.setattr("daemon.service.MOVE_RETRY_SECONDS", 0.3)
    r = daemon_factory()
    with read_only(r.done):
        r.drop("scan.pdf", pdf, sidecar)
        (job,) = wait_until(lambda: r.jobs(JobState.SENT))
        # several move retries later: still sent, sent once, nothing lost
        wait_until(lambda: len(events(log_stream, "job.move_failed")) >= 3)
        assert [j.state for j in r.jobs()] == [JobState.SENT]
        assert endpoint_attempts(sandbox) == [200]
        assert len(list(r.settings.spool_dir.iterdir())) == 2  # the pair waits in the spool
    (done,) = r.finished(1)
    assert done.state == JobState.DONE
    assert endpoint_attempts(sandbox) == [200]
    states = [e["to_state"] for e in r.queue.events(job.id)]
    assert states.count("leased") == 1 and states.count("sent") == 1
    assert Path(done.final_path or "").read_bytes() == pdf
    (line, *_) = events(log_stream, "job.move_failed")
    assert line["job_id"] == job.id and line["error"] in (
        "Permission denied",
        "Operation not permitted",
    )


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, separate tmpfs with few inodes (root only), unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "disk", "size=8m,nr_inodes=200,mode=0755") as root:
        yield root


def fill(folder: Path) -> int:
    """Take every free inode on ``folder``'s filesystem; return how many files it took."""
    folder.mkdir()
    n = 0
    while True:
        try:
            (folder / f"f{n}").touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return n
        n += 1


def test_full_disk_after_send_leaves_jobs_waiting_to_move_never_resent(
    tiny_disk: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, pdf: bytes
) -> None:
    """The whole tree on a tmpfs; once the documents are queued, every free inode
    is taken: today's done/ folder and the failed/ note cannot be created."""
    monkeypatch.setattr("daemon.service.MOVE_RETRY_SECONDS", 0.3)
    config = write_config(tiny_disk, sandbox)
    bad = sample_sidecar()
    del bad["Patient"]
    sandbox.state.set_faults(outage=True)
    with running(config) as r:
        r.drop("good.pdf", pdf, sample_sidecar())
        (r.inbox / ".bad.pdf.json.part").write_text(json.dumps(bad))  # ignored names
        (r.inbox / ".bad.pdf.part").write_bytes(pdf)
        wait_until(lambda: r.jobs(JobState.QUEUED))
        assert fill(tiny_disk / "filler") > 0
        (r.inbox / ".bad.pdf.json.part").rename(r.inbox / "bad.pdf.json")  # needs no inode
        (r.inbox / ".bad.pdf.part").rename(r.inbox / "bad.pdf")
        sandbox.state.set_faults(outage=False)
        wait_until(lambda: {j.state for j in r.jobs()} == {JobState.SENT, JobState.REJECTED})
        assert not (r.failed / "bad.pdf.error.txt").exists()
        assert not any(r.done.iterdir())
        assert endpoint_attempts(sandbox)[-1] == 200
        shutil.rmtree(tiny_disk / "filler")
        jobs = r.finished(2)
    assert sorted(j.state for j in jobs) == [JobState.DONE, JobState.FAILED]
    assert endpoint_attempts(sandbox).count(200) == 1
    assert "Patient" in (r.failed / "bad.pdf.error.txt").read_text()


def test_done_or_failed_that_vanishes_keeps_the_job_sent_until_it_is_back(
    daemon_factory: Callable[..., Running],
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    log_stream: io.StringIO,
    pdf: bytes,
    sidecar: dict[str, Any],
) -> None:
    """done/ is never made again by chartdrop (it may be an unmounted share)."""
    monkeypatch.setattr("daemon.service.MOVE_RETRY_SECONDS", 0.3)
    r = daemon_factory()
    aside = r.done.with_name("done.away")
    r.done.rename(aside)
    r.drop("scan.pdf", pdf, sidecar)
    wait_until(lambda: len(events(log_stream, "job.move_failed")) >= 2)
    assert [j.state for j in r.jobs()] == [JobState.SENT]
    assert not r.done.exists()
    aside.rename(r.done)
    (job,) = r.finished(1)
    assert job.state == JobState.DONE
    assert endpoint_attempts(sandbox) == [200]


def _unreadable_by_daemon(cmd: list[str]) -> list[str]:
    """Run the daemon where mode 000 really means unreadable: as root, without the
    capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_unreadable_documents_are_retried_then_reported(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes, sidecar: dict[str, Any]
) -> None:
    """One document unreadable in the inbox, one whose spool copy becomes
    unreadable after it was queued, one good: the daemon (a real process) keeps
    going, the good one is filed, the others reach failed/ with a reason."""
    config = write_config(tmp_path, sandbox, sidecar_timeout_seconds=1)
    settings = load_settings(config)
    inbox = settings.destination[0].inbox
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen(
        _unreadable_by_daemon([CHARTDROP, "run", "-c", str(config)]), stdout=log, stderr=log
    )
    try:
        wait_until(lambda: "daemon.started" in (tmp_path / "daemon.log").read_text())
        sandbox.state.set_faults(outage=True)
        (inbox / "later.pdf.json").write_text(json.dumps(sidecar))
        (inbox / ".later.pdf.part").write_bytes(sample_pdf("later"))  # not a duplicate
        (inbox / ".later.pdf.part").rename(inbox / "later.pdf")
        queue = Queue.open_readonly(settings.database_path)
        job = wait_until(lambda: queue.jobs(states=(JobState.QUEUED,)))[0]
        Path(job.spool_document or "").chmod(0)  # e.g. a backup tool or a disk error
        sandbox.state.set_faults(outage=False)

        (inbox / "locked.pdf.json").write_text(json.dumps(sidecar))
        (inbox / ".locked.pdf.part").write_bytes(pdf)
        (inbox / ".locked.pdf.part").chmod(0)  # a scanner account's private file
        (inbox / ".locked.pdf.part").rename(inbox / "locked.pdf")
        (inbox / "good.pdf.json").write_text(json.dumps(sidecar))
        (inbox / ".good.pdf.part").write_bytes(pdf)
        (inbox / ".good.pdf.part").rename(inbox / "good.pdf")

        def outcomes() -> dict[str, tuple[str, str | None]] | None:
            jobs = queue.jobs()
            if len(jobs) == 3 and all(j.state in (JobState.DONE, JobState.FAILED) for j in jobs):
                return {j.original_name: (j.state, j.error_kind) for j in jobs}
            return None

        result = wait_until(outcomes, timeout=60)
        assert proc.poll() is None  # never crashed
        queue.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    assert proc.returncode == 0
    assert result == {
        "good.pdf": (JobState.DONE, None),
        "later.pdf": (JobState.FAILED, "local_error"),
        "locked.pdf": (JobState.FAILED, "unreadable"),
    }
    failed = settings.destination[0].failed
    assert "Permission denied" in (failed / "later.pdf.error.txt").read_text()
    assert "8 attempts in a row" in (failed / "later.pdf.error.txt").read_text()
    assert "permissions" in (failed / "locked.pdf.error.txt").read_text()
    assert [a.status for a in sandbox.state.attempts if a.path == "/endpoint"][-1] == 200
    assert len(sandbox.state.received()) == 1
    assert in_inbox(inbox) == []


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("done", "consents/inbox/done"),
        ("failed", "consents/inbox/failed"),
        ("done", "consents/inbox"),
    ],
)
def test_done_or_failed_inside_an_inbox_is_refused_at_start(
    tmp_path: Path, sandbox: Sandbox, key: str, where: str
) -> None:
    config = write_config(tmp_path, sandbox)
    (tmp_path / where).mkdir(exist_ok=True)
    text = config.read_text().replace(f'{key} = "consents/{key}"', f'{key} = "{where}"')
    config.write_text(text)
    service = Service(load_settings(config))
    with pytest.raises(ConfigError) as caught:
        service.start()
    assert f"destination 'consents' {key} must not be inside its inbox" in caught.value.problems
    assert not (tmp_path / "state").exists()  # refused before anything was created


def test_local_errors_give_up_after_a_bounded_number_of_attempts_in_a_row(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Unreadable spool copy (or any local failure) is not an outage: retried with
    backoff for LOCAL_ERROR_ATTEMPTS attempts in a row, then reported; a first local
    error after a long outage still gets its retries."""
    import dataclasses

    from daemon.decide import LOCAL_ERROR_ATTEMPTS, decide

    dest = load_settings(write_config(tmp_path, sandbox)).destination[0]
    with Queue(tmp_path / "q.sqlite3") as queue:
        row = queue.begin_intake(
            destination="consents",
            original_name="a.pdf",
            sidecar_name=None,
            spool_document=None,
            spool_sidecar=None,
        )
    exc = PermissionError(errno.EACCES, "Permission denied", "/spool/secret-name.pdf")
    now = row.created_at + 60
    local = dataclasses.replace(row, queued_at=row.created_at, error_kind="local_error")
    for attempts in range(LOCAL_ERROR_ATTEMPTS - 1):
        job = dataclasses.replace(local, attempts=attempts)
        assert decide(exc, job, dest, now=now).action == "retry"
    last = decide(exc, dataclasses.replace(local, attempts=LOCAL_ERROR_ATTEMPTS - 1), dest, now=now)
    assert last.action == "reject" and last.error_kind == "local_error"
    assert "Permission denied" in last.error and "secret-name" not in last.error
    after_outage = dataclasses.replace(local, attempts=40, error_kind="transient")
    assert decide(exc, after_outage, dest, now=now).action == "retry"
