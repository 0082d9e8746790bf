"""Files the daemon creates are private (0600 in 0700); what staff read in done/ and
failed/ gets the configured mode and group; documents are read only through
O_NOFOLLOW descriptors on the expected filesystem. Real folders, a real daemon
subprocess (its own umask), real mounts where this machine allows them."""

from __future__ import annotations

import grp
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, running, wait_until, write_config

from daemon.config import load_settings
from daemon.errors import ConfigError, NotRegularFileError
from daemon.fsutil import open_document, set_mode
from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))
ROOT = os.geteuid() == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def drop_open(inbox: Path, name: str, data: bytes, sidecar: dict[str, Any]) -> None:
    """Drop a pair the way a careless scanner does: world-readable (0666)."""
    for final, content in (
        (inbox / f"{name}.json", json.dumps(sidecar).encode()),
        (inbox / name, data),
    ):
        tmp = inbox / f".{final.name}.part"
        tmp.write_bytes(content)
        tmp.chmod(0o666)
        tmp.rename(final)


def _job_states(database: Path) -> list[JobState]:
    """The jobs' states, read without writing anything (no file of ours appears);
    none while the daemon is still making its schema."""
    try:
        with Queue.open_readonly(database) as queue:
            return [job.state for job in queue.jobs()]
    except ConfigError:  # not a current chartdrop queue yet
        return []


def test_everything_the_daemon_creates_is_private(tmp_path: Path, sandbox: Sandbox) -> None:
    """A real `chartdrop run` started with umask 000 and a state_dir left 0755."""
    config = write_config(tmp_path, sandbox)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    sandbox.state.set_faults(outage=True)  # the document waits in the spool
    proc = subprocess.Popen(
        [CHARTDROP, "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,
    )
    try:
        inbox = tmp_path / "consents" / "inbox"
        wait_until(lambda: (state / "chartdrop.sqlite3-wal").exists())
        drop_open(inbox, "Bixby_Timothy.pdf", sample_pdf("x"), sample_sidecar())
        spool = state / "spool"
        # Queued: the hand-over is over (the renamed files get their mode right after
        # the rename, inside the 0700 spool; the test must not look in between).
        wait_until(lambda: _job_states(state / "chartdrop.sqlite3") == [JobState.QUEUED])
        assert len(list(spool.iterdir())) == 2
        created = {
            state: 0o700,
            spool: 0o700,
            state / "chartdrop.sqlite3": 0o600,
            state / "chartdrop.sqlite3-wal": 0o600,
            state / "chartdrop.sqlite3-shm": 0o600,
            state / "chartdrop.lock": 0o600,
            state / "intake-status.json": 0o600,  # what `status` shows about the inboxes
        }
        created.update(dict.fromkeys(spool.iterdir(), 0o600))
        assert {str(p): oct(mode(p)) for p in created} == {
            str(p): oct(m) for p, m in created.items()
        }
        assert sorted(p.name for p in state.iterdir()) == sorted(
            p.name for p in created if p.parent == state
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.fixture
def staff_group() -> grp.struct_group | None:
    """A group other than ours, if we may give files to it (root may; others may use
    a supplementary group)."""
    mine = os.getegid()
    candidates = grp.getgrall() if ROOT else [grp.getgrgid(g) for g in os.getgroups()]
    return next((g for g in candidates if g.gr_gid != mine), None)


def test_done_and_failed_get_the_configured_mode_and_group(
    tmp_path: Path, sandbox: Sandbox, staff_group: grp.struct_group | None
) -> None:
    extra: dict[str, Any] = {"files_mode": 0o660, "dirs_mode": 0o770}
    if staff_group is not None:
        extra["files_group"] = staff_group.gr_name  # by name: resolved to its gid
    config = write_config(tmp_path, sandbox, **extra)
    failed_dir = tmp_path / "consents" / "failed"
    failed_dir.chmod(0o755)
    (tmp_path / "consents" / "done").chmod(0o2770)  # setgid, as tmpfiles makes it
    with running(config) as r:
        drop_open(r.inbox, "ok.pdf", sample_pdf("ok"), sample_sidecar())
        bad = sample_sidecar()
        del bad["Patient"]["Identifiers"]
        drop_open(r.inbox, "bad.pdf", sample_pdf("bad"), bad)
        jobs = {j.original_name: j for j in r.finished(2)}
    done = Path(jobs["ok.pdf"].final_path or "")
    failed = Path(jobs["bad.pdf"].final_path or "")
    assert jobs["ok.pdf"].state == JobState.DONE and jobs["bad.pdf"].state == JobState.FAILED
    files = [done, done.with_name("ok.pdf.json"), failed, failed.with_name("bad.pdf.json")]
    files.append(failed.with_name("bad.pdf.error.txt"))
    assert {p.name: oct(mode(p)) for p in files} == {p.name: "0o660" for p in files}
    assert oct(mode(done.parent)) == "0o2770"  # done/YYYY-MM-DD: dirs_mode, setgid kept
    assert oct(mode(failed_dir)) == "0o755"  # the admin's own folder is left alone
    if staff_group is not None:
        for path in [*files, done.parent]:
            assert path.stat().st_gid == staff_group.gr_gid, path.name


@pytest.mark.skipif(not ROOT, reason="needs root to hand a file to another owner")
def test_a_file_owned_by_someone_else_is_reported_not_forced(tmp_path: Path) -> None:
    doc = tmp_path / "d.pdf"
    doc.write_bytes(b"%PDF")
    doc.chmod(0o644)
    os.chown(doc, 12345, 12345)
    code = (
        "from pathlib import Path; from daemon.fsutil import set_mode; "
        f"print(set_mode(Path({str(doc)!r}), 0o640))"
    )
    without_fowner = ["setpriv", "--bounding-set=-fowner,-chown", "--inh-caps=-all"]
    result = subprocess.run(
        [*without_fowner, sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
    assert mode(doc) == 0o644


def test_set_mode_never_follows_links_or_opens_special_files(tmp_path: Path) -> None:
    outside = tmp_path / "outside.pdf"
    outside.write_bytes(b"%PDF")
    outside.chmod(0o600)
    link = tmp_path / "link.pdf"
    link.symlink_to(outside)
    assert set_mode(link, 0o644)
    assert mode(outside) == 0o600
    fifo = tmp_path / "pipe.pdf"
    os.mkfifo(fifo, 0o600)
    assert set_mode(fifo, 0o644)  # returns at once: never opened
    assert mode(fifo) == 0o600
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    dir_link = tmp_path / "dir-link"
    dir_link.symlink_to(folder)
    assert set_mode(dir_link, 0o755, directory=True)
    assert mode(folder) == 0o700
    assert set_mode(folder, 0o750, directory=True) and mode(folder) == 0o750


@pytest.mark.skipif(not ROOT, reason="bind mounts need root")
def test_a_file_mounted_from_another_filesystem_is_refused(tmp_path: Path) -> None:
    """A file bind-mounted into an inbox (here from /dev/shm) lives on another device
    than its folder: never read, whatever its name says."""
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem to mount from")
    source = other / f"chartdrop-test-{os.getpid()}.pdf"
    source.write_bytes(sample_pdf("elsewhere"))
    doc = tmp_path / "scan.pdf"
    doc.write_bytes(b"placeholder")
    mounted = subprocess.run(
        ["mount", "--bind", str(source), str(doc)], capture_output=True, check=False
    )
    try:
        if mounted.returncode != 0:
            pytest.skip("mount --bind is not permitted here")
        assert doc.stat().st_dev != tmp_path.stat().st_dev
        with pytest.raises(NotRegularFileError, match="different filesystem"):
            open_document(doc)
        with open_document(source) as fh:  # the same file where it really lives is fine
            assert fh.read(4) == b"%PDF"
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(doc)], check=True)
        source.unlink()


def test_a_symlinked_document_is_refused_and_its_target_never_read(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    secret = tmp_path / "secret.pdf"
    secret.write_bytes(sample_pdf("not for the inbox"))
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        (r.inbox / "link.pdf.json").write_text(json.dumps(sample_sidecar()))
        (r.inbox / "link.pdf").symlink_to(secret)
        (job,) = r.finished(1)
    assert (job.state, job.error_kind) == (JobState.FAILED, "not_a_regular_file")
    assert sandbox.state.attempts == []  # nothing was sent
    assert (r.failed / "link.pdf").is_symlink()  # the link itself moved, not its target
    assert secret.read_bytes().startswith(b"%PDF")
    with Queue.open_readonly(r.settings.database_path) as queue:
        assert queue.get(job.id).sha256 == ""  # type: ignore[union-attr]  # the target was never hashed


def test_mode_and_group_settings_are_checked(tmp_path: Path, sandbox: Sandbox) -> None:
    settings = load_settings(write_config(tmp_path, sandbox))
    assert (settings.files_mode, settings.dirs_mode, settings.files_gid) == (0o640, 0o750, None)
    assert settings.keep_done_days == 30
    group = grp.getgrgid(os.getegid())
    named = load_settings(write_config(tmp_path, sandbox, files_group=group.gr_name))
    assert named.files_gid == group.gr_gid
    assert load_settings(write_config(tmp_path, sandbox, files_group=4242)).files_gid == 4242
    bad = {
        "files_mode": (0o644, "gives other users access"),
        "dirs_mode": (0o640, "must give chartdrop (the owner) full access"),
        "files_group": ("no-such-group-here", "there is no group named"),
        "keep_done_days": (0, "must be at least 1"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)) as refused:
            load_settings(write_config(tmp_path, sandbox, **{key: value}))
        assert refused.value.problems[0].startswith(f"{key}:")
