"""Destinations that feed each other are refused at ``check`` and at start
(issue 12, item 9): one destination's failed/ or done/ being another's inbox
would send its documents again elsewhere; two sharing an inbox would race."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Sandbox, run_cli, write_config
from crash_harness import CHARTDROP


def _second(inbox: str, done: str = "other/done", failed: str = "other/failed") -> str:
    return (
        "[[destination]]\n"
        'name = "other"\n'
        f'inbox = "{inbox}"\ndone = "{done}"\nfailed = "{failed}"\n'
        'model = "Media"\nredox_destination_id = "other-destination"\n'
    )


CASES = {
    "failed is another's inbox": (_second("consents/failed"), "'consents' failed"),
    "done is another's inbox": (_second("consents/done"), "'consents' done"),
    "another's failed is this inbox": (
        _second("other/inbox", failed="consents/inbox"),
        "'other' failed",
    ),
    "shared inbox": (_second("consents/inbox"), "share the inbox"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_destinations_feeding_each_other_are_refused_by_check_and_run(
    tmp_path: Path, sandbox: Sandbox, case: str
) -> None:
    table, expected = CASES[case]
    for sub in ("inbox", "done", "failed"):
        (tmp_path / "other" / sub).mkdir(parents=True)
    config = write_config(tmp_path, sandbox, tables=table)
    check = run_cli("check", "-c", str(config))  # in-process: test_cli runs check as a process
    assert check.returncode != 0
    assert expected in check.stdout + check.stderr
    run = subprocess.run(
        [CHARTDROP, "run", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0
    assert expected in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "state" / "spool").exists() or not any(
        (tmp_path / "state" / "spool").iterdir()
    )


def test_separate_destinations_are_accepted(tmp_path: Path, sandbox: Sandbox) -> None:
    for sub in ("inbox", "done", "failed"):
        (tmp_path / "other" / sub).mkdir(parents=True)
    config = write_config(tmp_path, sandbox, tables=_second("other/inbox"))
    check = run_cli("check", "-c", str(config))
    assert check.returncode == 0, check.stderr
