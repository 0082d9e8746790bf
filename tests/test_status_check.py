"""`chartdrop status --check` (monitoring-plugin exit codes) and plain `status`,
run as subprocesses against a real daemon on the real sandbox."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OFFLINE_CONFIG, Sandbox, run_cli, running, wait_until, write_config

from daemon.cli_common import QuickCheck
from daemon.config import load_settings
from daemon.queue import Queue
from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, *args], capture_output=True, text=True, timeout=60, check=False
    )


def check(config: Path) -> tuple[int, str]:
    result = run("status", "--check", "-c", str(config))
    assert result.stdout.count("\n") == 1, result.stdout + result.stderr
    return result.returncode, result.stdout.strip()


def turns(config: Path, code: int) -> bool:
    """``status --check`` in-process has exit code ``code``: for waiting until the
    state changes (a subprocess per poll would start the CLI a dozen times, a second
    of imports each); the tests then assert that state with the real command."""
    return run_cli("status", "--check", "-c", str(config)).returncode == code


def alerts(**values: float) -> str:
    return "\n[alerts]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def test_ok_while_running_then_critical_once_stopped(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        r.drop("CANARY_Bixby.pdf", sample_pdf("x"), sample_sidecar(mrn="CANARYMRN"))
        r.finished(1)
        code, line = check(config)
        assert code == 0, line
        assert line.startswith("CHARTDROP OK - ")
        assert "| queued=0 " in line and "failed_24h=0" in line
        plain = run("status", "-c", str(config))
        assert "NOT RUNNING" not in plain.stdout
    code, line = check(config)
    assert code == 2, line
    assert line.startswith("CHARTDROP CRITICAL - chartdrop is not running")
    plain = run("status", "-c", str(config))
    assert plain.returncode == 0
    assert "chartdrop is NOT RUNNING" in plain.stdout
    assert (
        json.loads(run("status", "--json", "-c", str(config)).stdout)[0]["daemon_running"] is False
    )
    assert "CANARY" not in line + plain.stdout


def test_failure_in_the_window_warns_and_status_counts_it(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        bad = sample_sidecar(last="CANARYLAST")
        del bad["Patient"]["Identifiers"]
        r.drop("CANARY_bad.pdf", sample_pdf("y"), bad)
        r.finished(1)
        code, line = check(config)
        assert code == 1, line
        assert "consents: 1 failed in the last 24 h" in line
        assert "failed_24h=1" in line and "in_failed=1" in line
        (row,) = json.loads(run("status", "--json", "-c", str(config)).stdout)
        assert (row["failed_24h"], row["in_failed_folder"]) == (1, 1)
        # staff fixed it by hand and removed the note: the folder count follows
        for p in r.failed.iterdir():
            p.unlink()
        (row,) = json.loads(run("status", "--json", "-c", str(config)).stdout)
        assert (row["failed_24h"], row["in_failed_folder"]) == (1, 0)
        assert "CANARY" not in line


def test_a_pause_warns_then_goes_critical(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        tables=alerts(paused_warning_minutes=0.001, paused_critical_minutes=0.15),
    )
    with running(config) as r:
        sandbox.state.set_faults(outage=True)
        r.drop("a.pdf", sample_pdf("a"), sample_sidecar())
        wait_until(lambda: r.queue.pauses())
        code, line = check(config)
        assert code == 1, line
        assert "consents paused (" in line
        wait_until(lambda: turns(config, 2), timeout=20, interval=0.25)
        code, line = check(config)
        assert code == 2 and "consents paused" in line, line
        sandbox.state.set_faults(outage=False)
        r.finished(1)
        wait_until(lambda: turns(config, 0), timeout=10, interval=0.25)
        assert check(config)[0] == 0


def test_old_backlog_warns_then_goes_critical(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        tables=alerts(
            oldest_warning_minutes=0.001,
            oldest_critical_minutes=0.15,
            paused_warning_minutes=60,
            paused_critical_minutes=120,
        ),
    )
    with running(config) as r:
        sandbox.state.set_faults(outage=True)
        r.drop("a.pdf", sample_pdf("a"), sample_sidecar())
        wait_until(lambda: r.queue.jobs())
        wait_until(lambda: turns(config, 1), interval=0.25)
        assert "consents: oldest waiting document" in check(config)[1]
        wait_until(lambda: turns(config, 2), timeout=20, interval=0.25)
        code, line = check(config)
        assert code == 2 and "oldest waiting document" in line, line
        sandbox.state.set_faults(outage=False)
        r.finished(1)


def test_unreadable_config_is_unknown(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = 'many'\n")
    code, line = check(bad)
    assert code == 3
    assert line.startswith("CHARTDROP UNKNOWN - ")


def test_plain_status_shows_documents_without_sidecar_and_removed_destinations(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        sandbox.state.set_faults(outage=True)
        r.drop("a.pdf", sample_pdf("a"), sample_sidecar())
        wait_until(lambda: r.queue.pauses())
    # the same state_dir under a config that renamed the destination
    text = config.read_text().replace('name = "consents"', 'name = "renamed"')
    config.write_text(text)
    with running(config) as r:
        (r.inbox / "CANARY_no_sidecar.pdf").write_bytes(sample_pdf("z"))
        out = run("status", "-c", str(config)).stdout
        assert "WAITING renamed: 1 document(s) in the inbox have no sidecar yet" in out
        assert "NOT CONFIGURED consents: 1 job(s) wait for a destination" in out
        rows = {
            row["destination"]: row
            for row in json.loads(run("status", "--json", "-c", str(config)).stdout)
        }
        c = rows["consents"]
        assert c["configured"] is False and c["queued"] + c["retrying"] == 1
        assert rows["renamed"]["awaiting_sidecar"] == 1
        code, line = check(config)
        assert code == 1 and "1 job(s) wait for consents, which is no longer configured" in line
        assert "CANARY" not in out + line
        (r.inbox / "CANARY_no_sidecar.pdf").unlink()


def test_a_user_who_may_not_read_the_lock_gets_unknown_not_a_false_critical(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    import os
    import shutil

    import pytest

    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that bypass modes
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    config = write_config(tmp_path, sandbox)
    with running(config):
        lock = tmp_path / "state" / "chartdrop.lock"
        lock.chmod(0)
        result = subprocess.run(
            [*prefix, CHARTDROP, "status", "--check", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lock.chmod(0o600)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("CHARTDROP UNKNOWN - no permission to read")


def test_quick_check_starts_early_on_the_database_the_settings_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` starts SQLite's quick_check before the config's models are imported,
    on the database the file names (relative to the file; ``CHARTDROP_STATE_DIR``
    wins). When the loaded settings name another file, that one is checked."""
    root = tmp_path / "cfg"
    for sub in ("state", "other", "f/inbox", "f/done", "f/failed"):
        (root / sub).mkdir(parents=True)
    for state in ("state", "other"):
        with Queue(root / state / "chartdrop.sqlite3"):
            pass
    (root / "chartdrop.toml").write_text(OFFLINE_CONFIG)
    monkeypatch.chdir(tmp_path)
    relative = "cfg/chartdrop.toml"
    early = QuickCheck.early(relative)
    assert early is not None and early.path == load_settings(Path(relative)).database_path
    QuickCheck.wait(early, early.path)  # a healthy file passes
    monkeypatch.setenv("chartdrop_state_dir", str(root / "other"))
    moved = QuickCheck.early(relative)
    other = load_settings(Path(relative)).database_path
    assert moved is not None and moved.path == other == root / "other" / "chartdrop.sqlite3"
    other.write_bytes(b"not a database" * 512)
    with pytest.raises(sqlite3.DatabaseError):  # the early run was on state/: not trusted
        QuickCheck.wait(early, other)
