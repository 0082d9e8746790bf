"""The read-only CLI commands (status, status --check, jobs, show) import only what
they need: not the HTTP clients, the Redox/FHIR models, the daemon's event
machinery nor sqlite-utils (only migrating needs it). ``import daemon.cli`` (what
the ``chartdrop`` script does first), ``--help`` and ``--version`` import not even
the config's models (pydantic). Checked on the imports of a fresh interpreter,
not on time (most of `chartdrop status`'s time is imports)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OFFLINE_CONFIG

from daemon.queue import Queue

HEAVY = ("redox", "fhir", "httpx", "httpcore", "watchdog", "sqlite_utils", "structlog")
HEAVY += ("cryptography", "jwt", "prometheus_client", "starlette", "uvicorn")
HEAVY += ("daemon.redox", "daemon.fhir", "daemon.payload", "daemon.outgoing", "daemon.service")
HEAVY += ("daemon.sandbox", "daemon.intake", "daemon.delivery", "daemon.metrics", "daemon.logs")
MODELS = ("pydantic", "pydantic_core", "pydantic_settings", "daemon.config")  # the parser's not


LOADED = """
heavy = tuple(json.loads(sys.stdin.read()))
loaded = sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy)))
print("IMPORTED=" + json.dumps({"code": code, "loaded": loaded}))
"""
PROBE = "import json, sys\nfrom daemon.cli import main\ncode = main(sys.argv[1:])\n" + LOADED
PARSER_PROBE = (
    """import json, sys
import daemon.cli
code = 0
if sys.argv[1:]:
    try:
        daemon.cli.main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
"""
    + LOADED
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    for sub in ("state", "f/inbox", "f/done", "f/failed"):
        (tmp_path / sub).mkdir(parents=True)
    with Queue(tmp_path / "state" / "chartdrop.sqlite3"):  # created and migrated here
        pass
    path = tmp_path / "chartdrop.toml"
    path.write_text(OFFLINE_CONFIG)
    return path


def imported_by(
    *argv: str, probe: str = PROBE, heavy: tuple[str, ...] = HEAVY
) -> tuple[int, list[str]]:
    """Run ``chartdrop *argv`` in a new interpreter: its exit code and the heavy
    modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        input=json.dumps(heavy),
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


@pytest.mark.parametrize("argv", [(), ("--help",), ("--version",), ("status", "--help")])
def test_the_parser_alone_loads_no_models(argv: tuple[str, ...]) -> None:
    code, loaded = imported_by(*argv, probe=PARSER_PROBE, heavy=HEAVY + MODELS)
    assert code == 0
    assert loaded == []


def test_the_probe_sees_an_import(config: Path) -> None:
    """The probe itself works: ``check`` builds the HTTP clients (it must)."""
    _code, loaded = imported_by("check", "-c", str(config))
    assert {"daemon.service", "httpx"} <= set(loaded), loaded
    _code, loaded = imported_by("status", "-c", str(config), probe=PARSER_PROBE, heavy=MODELS)
    assert {"pydantic", "daemon.config"} <= set(loaded), loaded


def test_the_daemon_leaves_unconfigured_redox_models_out() -> None:
    """The Notes and Results models are ~15 MB of memory: ``chartdrop run`` imports
    them only for a destination of that model (``daemon.service.load_models``)."""
    probe = """
import json, sys
import daemon.service
from daemon.payload import REDOX_MODELS
before = sorted(m for m in sys.modules if m.startswith(("redox.notes", "redox.results")))
REDOX_MODELS[("Notes", "New")]  # what a Notes destination's first document does
after = sorted(m for m in sys.modules if m.startswith(("redox.notes", "redox.results")))
print("IMPORTED=" + json.dumps([before, after]))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("IMPORTED=")]
    assert line, (done.stdout, done.stderr)
    before, after = json.loads(line[-1].removeprefix("IMPORTED="))
    assert before == []
    assert "redox.notes.new" in after
