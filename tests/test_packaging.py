"""A clinic install does not pull the sandbox's web framework; the sandbox says how to get it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires

SANDBOX_PACKAGES = ("starlette", "uvicorn", "python-multipart")


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower()


def test_sandbox_framework_is_only_an_optional_extra() -> None:
    reqs = requires("chartdrop") or []
    for package in SANDBOX_PACKAGES:
        lines = [r for r in reqs if _name(r) == package]
        assert lines, f"{package} is not declared at all"
        assert all("extra ==" in r and "sandbox" in r for r in lines), lines
    core = [_name(r) for r in reqs if "extra ==" not in r]
    assert "httpx" in core and "watchdog" in core
    assert not set(core) & set(SANDBOX_PACKAGES)


BLOCKER = """
import sys
for name in ('starlette', 'uvicorn', 'multipart'):
    sys.modules[name] = None  # as if not installed: imports fail, find_spec says None
from daemon.cli import main
sys.exit(main([{command!r}, '--dir', {folder!r}]))
"""


def test_demo_without_the_extra_says_how_to_get_it(tmp_path) -> None:
    for command in ("demo", "sandbox"):
        code = BLOCKER.format(command=command, folder=str(tmp_path / command))
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 2, run.stderr
        assert "pip install 'chartdrop[sandbox]'" in run.stderr
        assert "Traceback" not in run.stderr
        assert not (tmp_path / command).exists()
