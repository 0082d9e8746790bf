"""A clinic install does not pull the sandbox's web framework; the sandbox says how to get it;
the wheel carries the sandbox's Redox schemas."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import requires
from pathlib import Path

import pytest

from daemon.sandbox.validation import SCHEMAS

SANDBOX_PACKAGES = ("starlette", "uvicorn", "python-multipart", "jsonschema")
ROOT = Path(__file__).resolve().parent.parent


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
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: imports fail, find_spec says None
from daemon.cli import main
sys.exit(main([{command!r}, '--dir', {folder!r}]))
"""


@pytest.mark.parametrize(
    "blocked", [("starlette", "uvicorn", "multipart", "jsonschema"), ("jsonschema",)]
)
def test_demo_without_the_extra_says_how_to_get_it(tmp_path, blocked) -> None:
    for command in ("demo", "sandbox"):
        code = BLOCKER.format(command=command, folder=str(tmp_path / command), blocked=blocked)
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 2, run.stderr
        assert "pip install 'chartdrop[sandbox]'" in run.stderr
        assert "Traceback" not in run.stderr
        assert not (tmp_path / command).exists()


FROM_THE_WHEEL = """
import json, sys
sys.path.insert(0, sys.argv[1])
import daemon
assert daemon.__file__.startswith(sys.argv[1]), daemon.__file__
from daemon.sandbox.validation import validate_body
for body in json.loads(sys.argv[2]):
    print(json.dumps(validate_body(body, blob_prefix='x', resolve_blob=bool)[2]))
"""


def test_the_wheel_carries_the_sandbox_schemas(tmp_path) -> None:
    """Built as a user would install it, the wheel holds every schema the sandbox
    loads and their licence, and the sandbox validates from the zipped wheel."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed: the wheel cannot be built here")
    build = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("chartdrop-*.whl")
    with zipfile.ZipFile(wheel) as zipped:
        names = set(zipped.namelist())
    shipped = {f"daemon/sandbox/schemas/{name}" for name in SCHEMAS.values()}
    assert shipped | {"daemon/sandbox/schemas/LICENSE"} <= names

    media = {"DataModel": "Media", "EventType": "Delete", "Destinations": [{"ID": "d"}]}
    bodies = [{"Meta": media, "Patient": {"Identifiers": []}}]
    run = subprocess.run(
        [sys.executable, "-c", FROM_THE_WHEEL, str(wheel), json.dumps(bodies)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["Media: Field required"]
