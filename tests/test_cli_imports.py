"""The read-only CLI commands (status, status --check, jobs, show) import only what
they need: not the HTTP clients, the Redox/FHIR models, the daemon's event
machinery nor sqlite-utils (only migrating needs it). Checked on the imports of
a fresh interpreter, not on time (most of `chartdrop status`'s time is imports)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.queue import Queue

HEAVY = ("redox", "fhir", "httpx", "httpcore", "watchdog", "sqlite_utils", "structlog")
HEAVY += ("daemon.redox", "daemon.fhir", "daemon.payload", "daemon.outgoing", "daemon.service")

CONFIG = """state_dir = "state"
[redox]
api_url = "http://127.0.0.1:9"
upload_url = "http://127.0.0.1:9/upload"
[[destination]]
name = "consents"
inbox = "f/inbox"
done = "f/done"
failed = "f/failed"
redox_destination_id = "af394f14-b34a-464f-8d24-895f370af4c9"
"""

PROBE = """
import json, sys
from daemon.cli import main
code = main(sys.argv[1:])
heavy = tuple(json.loads(sys.stdin.read()))
loaded = sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy)))
print("IMPORTED=" + json.dumps({"code": code, "loaded": loaded}))
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    for sub in ("state", "f/inbox", "f/done", "f/failed"):
        (tmp_path / sub).mkdir(parents=True)
    with Queue(tmp_path / "state" / "chartdrop.sqlite3"):  # created and migrated here
        pass
    path = tmp_path / "chartdrop.toml"
    path.write_text(CONFIG)
    return path


def imported_by(*argv: str) -> tuple[int, list[str]]:
    """Run ``chartdrop *argv`` in a new interpreter: its exit code and the heavy
    modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        input=json.dumps(HEAVY),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("IMPORTED=")]
    assert line, (done.stdout, done.stderr)
    found = json.loads(line[-1].removeprefix("IMPORTED="))
    return int(found["code"]), list(found["loaded"])


@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("status", "--json"),
        ("status", "--check"),
        ("jobs",),
        ("audit", "--since", "2020-01-01"),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_read_only_commands_skip_the_heavy_modules(config: Path, argv: tuple[str, ...]) -> None:
    code, loaded = imported_by(*argv, "-c", str(config))
    assert code in (0, 1, 2), code  # status --check: a monitoring state, not a crash
    assert loaded == []


def test_the_probe_sees_an_import(config: Path) -> None:
    """The probe itself works: ``check`` builds the HTTP clients (it must)."""
    _code, loaded = imported_by("check", "-c", str(config))
    assert {"daemon.service", "httpx"} <= set(loaded), loaded
