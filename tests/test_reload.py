"""A reload that tells the truth: `chartdrop reload` (the unit's ExecReload=)
exits non-zero when the daemon refuses the new config, and a key file replaced
under the same name is read on reload, against a real daemon subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Sandbox, wait_until, write_config
from daemonproc import daemon_process

from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar
from daemon.sandbox import generate_keypair

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def reload(config: Path, pid: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, "reload", "-c", str(config), "--pid", str(pid), "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_refused_config_fails_the_reload_and_a_good_one_passes(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    with daemon_process(config) as d:
        wait_until(lambda: d.logs("daemon.started"))
        good = config.read_text().replace("workers = 2", "workers = 3")
        config.write_text(good)
        ok = reload(config, d.proc.pid)
        assert ok.returncode == 0, ok.stderr
        assert "reloaded" in ok.stdout
        assert d.logs("daemon.reloaded")[-1]["workers"] == 3
        # a file that does not even parse: refused before the daemon is disturbed
        config.write_text(good.replace("workers = 3", "workers = 'many'"))
        unparsable = reload(config, d.proc.pid)
        assert unparsable.returncode == 2 and "workers" in unparsable.stderr
        # one only the daemon can judge (its folders): its answer is the exit status
        config.write_text(good.replace('inbox = "consents/inbox"', 'inbox = "nosuch/inbox"'))
        bad = reload(config, d.proc.pid)
        assert bad.returncode == 1, bad.stderr
        assert "refused the new config" in bad.stderr and "nosuch" in bad.stderr
        assert "Traceback" not in bad.stderr
        assert d.logs("daemon.reload_refused")
        assert d.proc.poll() is None  # still running, with the old config
        assert d.stop() == 0


def test_a_key_file_replaced_under_the_same_name_is_read_on_reload(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    key = tmp_path / "installed-key.pem"
    wrong, _public = generate_keypair()
    key.write_bytes(wrong)
    key.chmod(0o600)
    config = write_config(tmp_path, sandbox, redox={"private_key_file": str(key)})
    db = tmp_path / "state" / "chartdrop.sqlite3"
    with daemon_process(config) as d:
        wait_until(lambda: d.logs("daemon.started"))
        inbox = tmp_path / "consents" / "inbox"
        (inbox / "a.pdf.json").write_text(json.dumps(sample_sidecar()))
        (inbox / "a.pdf").write_bytes(sample_pdf("a"))
        wait_until(lambda: any(p["kind"] == "auth" for p in d.logs("destination.paused")))
        # the admin installs the right key under the same name
        new = tmp_path / "new-key.pem"
        new.write_bytes(sandbox.private_key.read_bytes())
        new.chmod(0o600)
        new.replace(key)
        result = reload(config, d.proc.pid)
        assert result.returncode == 0, result.stderr
        assert d.logs("daemon.reloaded")[-1]["client_rebuilt"] is True

        def done() -> bool:
            with Queue.open_readonly(db) as q:
                return [j.state for j in q.jobs()] == [JobState.DONE]

        # the auth pause is tried again at once, not after its backoff
        wait_until(done, timeout=15)
        assert d.stop() == 0


def test_reload_of_a_process_that_is_gone_is_one_sentence(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    result = reload(config, 2**22 + 12345)
    assert result.returncode == 2
    assert "is chartdrop running?" in result.stderr and "Traceback" not in result.stderr
