"""Two daemons on one inbox: real ``chartdrop run`` subprocesses with different
state dirs on the same folders. The second is refused (and ``check`` says why),
the lock file is ignored by intake, and a crashed daemon leaves no stale lock."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Sandbox, counts_by_state, run_cli, running, wait_until, write_config
from daemonproc import CHARTDROP, daemon_process

from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.inbox_lock import INBOX_LOCK_NAME, lock_inbox
from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar
from daemon.service import Service


def _configs(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, Path]:
    first = tmp_path / "first.toml"
    write_config(tmp_path, sandbox, state_dir="state-1").rename(first)
    second = tmp_path / "second.toml"
    write_config(tmp_path, sandbox, state_dir="state-2").rename(second)
    return first, second


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    """In-process (the lock is another process's all the same): test_cli runs
    ``check`` as a subprocess."""
    return run_cli("check", "-c", str(config))


def test_a_second_daemon_on_the_same_inbox_is_refused(tmp_path: Path, sandbox: Sandbox) -> None:
    first, second = _configs(tmp_path, sandbox)
    inbox = tmp_path / "consents" / "inbox"
    with daemon_process(first) as one:
        wait_until(lambda: one.logs("daemon.started"), timeout=30)
        two = subprocess.run(
            [CHARTDROP, "run", "-c", str(second)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert two.returncode == 2, two.stderr
        assert f"destination 'consents' inbox ({inbox}) is already watched by" in two.stderr
        assert f"chartdrop pid {one.proc.pid}" in two.stderr
        assert f"state_dir {tmp_path / 'state-1'}" in two.stderr
        assert not (tmp_path / "state-2" / "chartdrop.sqlite3").exists()

        refused = _check(second)
        assert refused.returncode == 2
        assert "is already watched by" in refused.stderr
        own = _check(first)  # the daemon of this config holding it is no conflict
        assert own.returncode == 0, own.stderr

        # The lock file is never taken for a document; documents still flow.
        (inbox / "scan.pdf.json").write_text(json.dumps(sample_sidecar()))
        (inbox / "scan.pdf").write_bytes(sample_pdf("locked"))
        done = tmp_path / "consents" / "done"
        wait_until(lambda: list(done.glob("*/scan.pdf")), timeout=30)
        # the move comes before the job's done commit: wait for that too before the kill
        db = tmp_path / "state-1" / "chartdrop.sqlite3"
        wait_until(lambda: counts_by_state(db)[str(JobState.DONE)] == 1, timeout=30)
        assert (inbox / INBOX_LOCK_NAME).exists()

        one.signal(signal.SIGKILL)  # a crash: the kernel drops the lock with the process
        one.proc.wait(10)
    with Queue(tmp_path / "state-1" / "chartdrop.sqlite3") as queue:
        jobs = queue.jobs()
    assert [j.original_name for j in jobs] == ["scan.pdf"]
    assert _check(second).returncode == 0
    with daemon_process(second) as again:
        wait_until(lambda: again.logs("daemon.started"), timeout=30)
    assert [j.state for j in jobs] == [JobState.DONE]
    assert list((tmp_path / "consents" / "failed").iterdir()) == []


def test_reload_onto_a_watched_inbox_is_refused_and_moves_release_the_old_lock(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """reload() as the main loop calls it (this thread: run() is not running)."""
    first, _ = _configs(tmp_path, sandbox)
    for folder in ("letters", "letters2"):
        for sub in ("inbox", "done", "failed"):
            (tmp_path / folder / sub).mkdir(parents=True)
    letters = {f"{sub}": f"letters/{sub}" for sub in ("inbox", "done", "failed")}
    second = tmp_path / "second.toml"
    write_config(tmp_path, sandbox, state_dir="state-2", dest={"name": "letters", **letters})
    (tmp_path / "chartdrop.toml").rename(second)
    text = second.read_text()
    with running(first):
        service = Service(load_settings(second), config_path=second)
        service.start()
        try:
            second.write_text(text.replace('"letters/inbox"', '"consents/inbox"'))
            assert service.reload() is False  # daemon one watches consents/inbox
            assert service.settings.destination[0].inbox == tmp_path / "letters" / "inbox"
            with pytest.raises(ConfigError, match="is already watched by"):
                lock_inbox("x", tmp_path / "letters" / "inbox", tmp_path / "other")

            second.write_text(text.replace('"letters/inbox"', '"letters2/inbox"'))
            assert service.reload()
            lock_inbox("x", tmp_path / "letters" / "inbox", tmp_path / "other").close()  # freed
            with pytest.raises(ConfigError, match="is already watched by"):
                lock_inbox("x", tmp_path / "letters2" / "inbox", tmp_path / "other")
        finally:
            service.shutdown()
    lock_inbox("x", tmp_path / "letters2" / "inbox", tmp_path / "other").close()  # and at exit
