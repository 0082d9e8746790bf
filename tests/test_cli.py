"""The command line as a user runs it: real subprocesses of the installed entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, run_cli, running, wait_until, write_config
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def run(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )


def test_bad_config_is_listed_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('workers = "x"\n[[destination]]\nname = "a"\n')
    result = run("check", "-c", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "workers:" in result.stderr
    assert '[[destination]] "a" inbox: is required but missing' in result.stderr


def test_missing_config_is_one_sentence(tmp_path: Path) -> None:
    result = run("status", "-c", str(tmp_path / "none.toml"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "does not exist" in result.stderr


def test_check_validates_folders_and_authenticates(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    result = run("check", "-c", str(config), "--online")
    assert result.returncode == 0, result.stderr
    assert "authenticated" in result.stdout
    assert sandbox.state.token_requests == 1
    (tmp_path / "consents" / "done").rmdir()
    result = run("check", "-c", str(config))
    assert result.returncode == 2
    assert "done" in result.stderr and "does not exist" in result.stderr


def test_check_refuses_plain_http_to_another_host(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    text = config.read_text().replace(sandbox.url, "http://redox.example.org")
    config.write_text(text)
    result = run("check", "-c", str(config))
    assert result.returncode == 2
    assert "https://" in result.stderr


def test_check_online_with_wrong_key_fails_clearly(tmp_path: Path, sandbox: Sandbox) -> None:
    from daemon.sandbox import generate_keypair

    config = write_config(tmp_path, sandbox)
    sandbox.private_key.write_bytes(generate_keypair()[0])  # a key Redox does not know
    result = run("check", "-c", str(config), "--online")
    assert result.returncode == 2
    assert "refused the credentials (HTTP 401)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("make_key", "expected"),
    [
        (lambda: b"not a key at all\n", "is not a PEM private key"),
        (
            lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            ),
            "is not an RSA private key (Redox signs with RS384)",
        ),
        (
            lambda: rsa.generate_private_key(65537, 2048).private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw")
            ),
            "is encrypted with a passphrase",
        ),
        (
            lambda: rsa.generate_private_key(65537, 1024).private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            ),
            "is an RSA key of 1024 bits; Redox needs at least 2048",
        ),
    ],
)
def test_check_offline_refuses_a_key_file_that_cannot_sign(
    tmp_path: Path, sandbox: Sandbox, make_key: Callable[[], bytes], expected: str
) -> None:
    config = write_config(tmp_path, sandbox)
    sandbox.private_key.write_bytes(make_key())
    result = run_cli("check", "-c", str(config))  # in-process: the tests above run the process
    assert result.returncode == 2, result.stdout
    assert f"redox.private_key_file ({sandbox.private_key}) {expected}" in result.stderr
    assert "Traceback" not in result.stderr
    assert sandbox.state.token_requests == 0  # offline


def test_validate_lists_every_error(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(sample_sidecar()))
    assert run("validate", str(good), "-d", "consents", "-c", str(config)).returncode == 0
    bad_data: dict[str, Any] = sample_sidecar(first="CANARYFIRST")
    del bad_data["Patient"]["Identifiers"]
    bad_data["Media"]["Provider"] = "not an object"
    bad_data["Extra"] = 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_data))
    result = run("validate", str(bad), "-d", "consents", "-c", str(config))
    assert result.returncode == 1
    assert (
        "Patient.Identifiers (the patient's ID numbers, e.g. the MRN) is required but missing"
        in result.stdout
    )
    assert "Media.Provider (the responsible provider) must be an object" in result.stdout
    # a key that is neither a field nor a misspelling of one is located, not named
    assert "  - (a key that is not a field name: not shown" in result.stdout
    assert "Extra" not in result.stdout
    assert "CANARYFIRST" not in result.stdout


def test_drop_hands_a_pair_to_the_running_daemon(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    doc = tmp_path / "fax.pdf"
    side = tmp_path / "fax-meta.json"
    side.write_text(json.dumps(sample_sidecar()))
    with running(config) as r:
        for i in range(2):  # two faxes under one name (the same bytes twice would be held)
            doc.write_bytes(sample_pdf(f"fax {i}"))
            result = run(
                "drop", str(doc), "--sidecar", str(side), "-d", "consents", "-c", str(config)
            )
            assert result.returncode == 0, result.stderr
        jobs = r.finished(2)
        assert {j.state for j in jobs} == {JobState.DONE}
        names = sorted(Path(j.final_path or "").name for j in jobs)
        assert names == ["fax (1).pdf", "fax.pdf"]  # a name taken in done/ gets a suffix


def test_status_jobs_and_show_report_without_phi(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        r.drop("CANARY_Bixby_Timothy.pdf", sample_pdf("x"), sample_sidecar(mrn="CANARYMRN77"))
        bad = sample_sidecar(last="CANARYLAST")
        del bad["Patient"]["Identifiers"]
        r.drop("CANARY_bad.pdf", sample_pdf("y"), bad)
        r.finished(2)
    status = run("status", "-c", str(config), "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["destination"] == "consents"
    assert row["done_today"] == 1 and row["failed"] == 1 and row["queued"] == 0
    table = run("status", "-c", str(config))
    assert "consents" in table.stdout
    jobs = run("jobs", "-c", str(config), "--json")
    listed = json.loads(jobs.stdout)
    assert len(listed) == 2
    show = run("show", listed[0]["id"][:8], "-c", str(config), "--json")
    assert show.returncode == 0
    assert json.loads(show.stdout)["events"]
    for out in (status.stdout, table.stdout, jobs.stdout, show.stdout):
        assert "CANARY" not in out


def test_run_refuses_a_second_daemon_and_stops_on_sigterm(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    proc = subprocess.Popen(
        [CHARTDROP, "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        db = tmp_path / "state" / "chartdrop.sqlite3"
        wait_until(db.exists)
        second = run("run", "-c", str(config), timeout=30)
        assert second.returncode == 2
        assert "already running" in second.stderr
        inbox = tmp_path / "consents" / "inbox"
        (inbox / "a.pdf.json").write_text(json.dumps(sample_sidecar()))
        (inbox / "a.pdf").write_bytes(sample_pdf("a"))
        queue = Queue(db)
        wait_until(lambda: queue.jobs(states=[JobState.DONE]))
        queue.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "daemon.started" in events and "job.sent" in events and "daemon.stopped" in events


@pytest.mark.timeout(180)
def test_demo_exits_zero_when_idle(tmp_path: Path) -> None:
    env = dict(os.environ)
    result = subprocess.run(
        [CHARTDROP, "demo", "--exit-when-idle"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Redox log ID") == 3  # two Media, one Notes
    assert result.stdout.count("FHIR Media/") == 1
    assert "invalid_sidecar" in result.stdout
    demo = tmp_path / "chartdrop-demo"
    assert len(list((demo / "consents" / "done").rglob("*.pdf"))) == 2
    assert len(list((demo / "consents" / "failed").glob("*.error.txt"))) == 1
    assert len(list((demo / "letters" / "done").rglob("*.pdf"))) == 1
    assert len(list((demo / "gateway" / "done").rglob("*.pdf"))) == 1


def test_folders_on_two_filesystems_are_refused(tmp_path: Path, sandbox: Sandbox) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) on this machine")
    config = write_config(tmp_path, sandbox)
    other = Path(tempfile.mkdtemp(dir=shm))
    try:
        config.write_text(config.read_text().replace('done = "consents/done"', f'done = "{other}"'))
        for command in ("check", "run"):
            result = run(command, "-c", str(config), timeout=30)
            assert result.returncode == 2
            assert "must be on one filesystem" in result.stderr
    finally:
        other.rmdir()


def test_done_inside_the_inbox_is_refused(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    (tmp_path / "consents" / "inbox" / "done").mkdir()
    text = config.read_text().replace('done = "consents/done"', 'done = "consents/inbox/done"')
    config.write_text(text)
    result = run("check", "-c", str(config))
    assert result.returncode == 2
    assert "must not be inside its inbox" in result.stderr


def test_sandbox_command_serves_and_prints_what_to_configure(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [CHARTDROP, "sandbox", "--port", "0", "--dir", str(tmp_path / "sb")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("sandbox listening on http://127.0.0.1:")
        url = first.split()[-1]
        import httpx

        assert httpx.get(f"{url}/_sandbox/health", timeout=5).json() == {"ok": True}
        assert (tmp_path / "sb" / "redox-key.pem").stat().st_mode & 0o777 == 0o600
        lines = [proc.stdout.readline() for _ in range(5)]
        assert lines[-1].strip() == "Ctrl-C to stop."
        assert f"base_url = '{url}/fhir/r4', token_url = '{url}/fhir/oauth/token'" in lines[2]
        secret_file = tmp_path / "sb" / "fhir-client-secret"
        assert f"client_id = 'chartdrop-demo', client_secret_file = '{secret_file}'" in lines[3]
        assert secret_file.stat().st_mode & 0o777 == 0o600
        form = {"grant_type": "client_credentials", "client_id": "chartdrop-demo"}
        form["client_secret"] = secret_file.read_text()
        token = httpx.post(f"{url}/fhir/oauth/token", data=form, timeout=5)
        assert token.status_code == 200, token.text
        assert token.json()["token_type"] == "Bearer"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
