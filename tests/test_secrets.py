"""Secrets (the Redox private key, access tokens) never reach logs, errors, `check`
output or the database; `check` warns about a key file others can read."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import (
    CLIENT_ID,
    FHIR_SECRET,
    KEY_ID,
    LEGACY_KEY,
    LEGACY_SECRET,
    Sandbox,
    running,
    wait_until,
    write_config,
)

from daemon import cli, logs
from daemon.queue import JobState
from daemon.samples import sample_pdf, sample_sidecar
from daemon.sandbox import generate_keypair

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, "check", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def key_pieces(pem: bytes) -> list[str]:
    """The key's base64 lines: any of them in an output would be a leak."""
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def cli_run(*args: str) -> tuple[int, str]:
    """A command in-process (the entry point's own code): exit code, stdout + stderr."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(list(args))
    return code, out.getvalue()


def cli_output(*args: str) -> str:
    code, out = cli_run(*args)
    assert code == 0, out
    return out


@pytest.mark.parametrize("auth", ["jwt", "legacy", "fhir"])
def test_keys_secrets_and_tokens_appear_nowhere(
    tmp_path: Path, sandbox: Sandbox, auth: str
) -> None:
    """A daemon run per kind of credential, with a token renewal (a 401) in it."""
    model = "FHIR" if auth == "fhir" else "Media"
    kw: dict[str, Any] = {}
    if auth == "legacy":
        secret = tmp_path / "redox-secret"
        secret.write_text(LEGACY_SECRET + "\n")
        secret.chmod(0o600)
        kw["redox"] = {"auth": "legacy", "api_key": LEGACY_KEY, "secret_file": str(secret)}
    if auth == "fhir":
        kw["fhir"] = sandbox.fhir_table()
    config = write_config(tmp_path, sandbox, model=model, log_level="debug", **kw)
    stream = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=stream)
    tokens: set[str] = set()
    try:
        with running(config) as r:
            r.drop("first.pdf", sample_pdf("1"), sample_sidecar(model=model))
            r.finished(1)
            tokens |= set(sandbox.state.issued_tokens())
            sandbox.state.revoke_tokens()  # the next send gets a 401 and a new token
            r.drop("second.pdf", sample_pdf("2"), sample_sidecar(model=model))
            jobs = r.finished(2)
            tokens |= set(sandbox.state.issued_tokens())
    finally:
        structlog.reset_defaults()
    assert {j.state for j in jobs} == {JobState.DONE}, [j.last_error for j in jobs]
    assert len(tokens) >= 2
    secrets = [*tokens, *key_pieces(sandbox.private_key.read_bytes()), LEGACY_SECRET, FHIR_SECRET]

    outputs = {"daemon logs": stream.getvalue()}
    if auth == "jwt":  # once as the installed command, to see everything it prints
        online = check(config, "--online")
        assert online.returncode == 0, online.stderr
        outputs["check --online"] = online.stdout + online.stderr
    else:
        outputs["check --online"] = cli_output("check", "-c", str(config), "--online")
    assert "online: authenticated" in outputs["check --online"]
    for args in (("status",), ("jobs", "--json"), ("audit", "--since", "2000-01-01", "--csv")):
        outputs[" ".join(args)] = cli_output(*args, "-c", str(config))
    for job in jobs:
        outputs[f"show {job.id}"] = cli_output("show", job.id, "-c", str(config))
    db = sqlite3.connect(r.settings.database_path)
    for table in ("jobs", "events", "pauses"):  # every column, names and paths included
        outputs[table] = repr(db.execute(f"SELECT * FROM {table}").fetchall())
    db.close()
    assert "job.sent" in outputs["daemon logs"]
    found = {where: [s[:8] for s in secrets if s in text] for where, text in outputs.items()}
    assert {where: hits for where, hits in found.items() if hits} == {}


def test_an_unusable_key_is_reported_without_its_content(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    sandbox.private_key.write_text(
        "-----BEGIN PRIVATE KEY-----\nSECRETCANARYc2VjcmV0IGtleSBtYXRlcmlhbA==\n"
        "-----END PRIVATE KEY-----\n"
    )
    code, out = cli_run("check", "-c", str(config), "--online")
    assert code == 2
    assert out.count("\n") == 1 and "is not a PEM private key" in out  # offline, before --online
    assert "SECRETCANARY" not in out and "c2VjcmV0" not in out


def test_check_warns_when_a_secret_file_is_readable_by_others(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    legacy = tmp_path / "redox-secret"
    legacy.write_text(LEGACY_SECRET)
    configs = {
        sandbox.private_key: write_config(tmp_path / "jwt", sandbox),
        legacy: write_config(
            tmp_path / "legacy",
            sandbox,
            redox={"auth": "legacy", "api_key": LEGACY_KEY, "secret_file": str(legacy)},
        ),
        sandbox.fhir_secret: write_config(
            tmp_path / "fhir", sandbox, model="FHIR", fhir=sandbox.fhir_table()
        ),
    }
    for secret, config in configs.items():
        content = secret.read_text()
        for mode, warned in ((0o600, False), (0o400, False), (0o640, True), (0o604, True)):
            secret.chmod(mode)
            code, out = cli_run("check", "-c", str(config))
            assert code == 0, out
            assert (f"warning: {secret}" in out and "chmod 600" in out) is warned, oct(mode)
            assert not [p for p in [*key_pieces(content.encode()), content.strip()] if p in out]


def test_a_refused_assertion_leaves_an_auth_pause_not_what_the_server_said(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    sandbox.state.register_client(CLIENT_ID, KEY_ID, generate_keypair()[1])  # not our key
    stream = io.StringIO()
    logs.configure(fmt="json", stream=stream)
    try:
        with running(config) as r:
            r.drop("waits.pdf", sample_pdf("w"), sample_sidecar())
            (pause,) = wait_until(lambda: [p for p in r.queue.pauses() if p.kind == "auth"])
            (job,) = r.jobs()
            events = r.queue.events(job.id)
            status = cli_output("status", "-c", str(config))
    finally:
        structlog.reset_defaults()
    assert job.state in (JobState.QUEUED, JobState.LEASED)  # it waits: the credentials are wrong
    assert "HTTP 401" in pause.reason
    text = stream.getvalue() + json.dumps(events) + pause.reason + status
    assert "destination.paused" in text and "PAUSED" in status
    assert "invalid_client" not in text and "does not verify" not in text
