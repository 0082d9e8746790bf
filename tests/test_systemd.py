"""The systemd files parse and point at the installed entry point."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"


def test_unit_runs_the_installed_entry_point_without_a_shell() -> None:
    unit = (SYSTEMD / "chartdrop.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.split("=", 1)[1].split()[:2] == ["/opt/chartdrop/venv/bin/chartdrop", "run"]
    assert "sh -c" not in unit
    for directive in (
        "User=chartdrop",
        "StateDirectory=chartdrop",
        "UMask=0077",
        "LoadCredential=",
    ):
        assert directive in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(SYSTEMD / "chartdrop.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable" not in line  # not installed on this machine
    ]
    assert problems == []


def test_sysusers_and_tmpfiles_declare_the_user_and_folders() -> None:
    assert (SYSTEMD / "chartdrop.sysusers.conf").read_text().count("u chartdrop") == 1
    tmpfiles = (SYSTEMD / "chartdrop.tmpfiles.conf").read_text()
    for folder in ("inbox", "done", "failed"):
        assert f"/srv/chartdrop/consents/{folder}" in tmpfiles
