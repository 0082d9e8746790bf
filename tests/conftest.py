"""Shared fixtures: the real sandbox over HTTP on 127.0.0.1, real folders, a real
SQLite file, and the real daemon running in a background thread."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon import logs
from daemon.config import Destination, Settings, load_settings
from daemon.queue import Job, JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar
from daemon.sandbox import SandboxServer, SandboxState, generate_keypair
from daemon.service import Service

CLIENT_ID = "test-client"
KEY_ID = "test-kid"
DEST_ID = "af394f14-b34a-464f-8d24-895f370af4c9"


def load_schema(name: str) -> dict[str, Any]:
    """A Redox request-body JSON schema (draft-04) from tests/redox-schemas/."""
    data: dict[str, Any] = json.loads((Path(__file__).parent / "redox-schemas" / name).read_text())
    return data


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The daemon's structlog output as JSON lines, for tests that read its events."""
    stream = io.StringIO()
    logs.configure(fmt="json", stream=stream)
    yield stream
    structlog.reset_defaults()


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    """The logged events called ``name``, parsed."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == name]


def in_inbox(inbox: Path) -> list[str]:
    """Names in an inbox, sorted, without the daemon's own lock file
    (``.chartdrop.lock``, held while it watches the inbox)."""
    from daemon.inbox_lock import INBOX_LOCK_NAME

    return sorted(n for n in os.listdir(inbox) if n != INBOX_LOCK_NAME)


def destination(**fields: Any) -> Destination:
    """A Destination built by hand, its timing filled from the top-level defaults
    (as loading a config does)."""
    from daemon.config import TIMING_KEYS

    timing = {key: Settings.model_fields[key].default for key in TIMING_KEYS}
    return Destination(**(timing | fields))


@contextmanager
def mounted_tmpfs(root: Path, options: str) -> Iterator[Path]:
    """A real, separate tmpfs at ``root`` (made here) with mount ``options``,
    unmounted afterwards; the test is skipped where mounting is not allowed."""
    root.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(root)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``chartdrop ARGS`` in this process: the entry point's own code and exit code,
    its stdout and stderr, without a process start-up (about a second of imports).
    For tests about what a command says or refuses, not about it being a process;
    every command keeps tests that run it as a real subprocess. Not for ``run``,
    ``demo`` or ``sandbox``: they install signal handlers and configure logging."""
    from daemon import cli

    assert args[0] not in ("run", "demo", "sandbox"), "run these as a subprocess"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse: --help, --version, a usage error
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["chartdrop", *args], code, out.getvalue(), err.getvalue())


def counts_by_state(db_path: Path) -> dict[str, int]:
    """Every job state (zeros included) with its number of jobs: what the tests
    check the queue by, read straight from the database file (read-only)."""
    import sqlite3

    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    finally:
        conn.close()
    return dict.fromkeys(map(str, JobState), 0) | {state: n for state, n in rows}


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Sandbox:
    server: SandboxServer
    state: SandboxState
    private_key: Path
    fhir_secret: Path

    @property
    def url(self) -> str:
        return self.server.url

    def fhir_table(self, **extra: Any) -> dict[str, Any]:
        """The [fhir] table for the sandbox's FHIR server."""
        return {
            "base_url": f"{self.url}/fhir/r4",
            "token_url": f"{self.url}/fhir/oauth/token",
            "client_id": FHIR_CLIENT,
            "client_secret_file": str(self.fhir_secret),
            "patient_identifier_system": "urn:oid:2.16.840.1.113883.3.9999",
        } | extra


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    private, public = generate_keypair()
    key = tmp_path / "redox-key.pem"
    key.write_bytes(private)
    key.chmod(0o600)
    state = SandboxState(blob_dir=tmp_path / "sandbox-blobs")
    state.register_client(CLIENT_ID, KEY_ID, public)
    state.register_legacy_key(LEGACY_KEY, LEGACY_SECRET)
    state.register_fhir_client(FHIR_CLIENT, FHIR_SECRET)
    fhir_secret = tmp_path / "fhir-secret"
    fhir_secret.write_text(FHIR_SECRET + "\n")
    fhir_secret.chmod(0o600)
    with SandboxServer(state) as server:
        yield Sandbox(server=server, state=state, private_key=key, fhir_secret=fhir_secret)
    check_everything_received(state)


def check_everything_received(state: SandboxState) -> None:
    """Every body the sandbox accepted in a test, checked again independently: Redox
    bodies against Redox's JSON schemas, FHIR resources with fhir.resources."""
    import jsonschema
    from fhir.resources.R4B.media import Media

    for received in state.received():
        meta = received.body["Meta"]
        name = f"{meta['DataModel'].lower()}/{meta['EventType'].lower()}.json"
        jsonschema.Draft4Validator(load_schema(name)).validate(received.body)
    for fhir_received in state.fhir_received():
        Media.model_validate(fhir_received.body)


FHIR_CLIENT = "fhir-client"
FHIR_SECRET = "fhir-client-secret-value"
LEGACY_KEY = "legacy-api-key"
LEGACY_SECRET = "legacy-secret-value"

MODEL_DEFAULTS = {
    "Media": 'Media = { Availability = "Available" }',
    "Notes": "",
    "Results": "",
    "FHIR": "",
}


# A config whose Redox is unreachable (port 9): for commands that never send.
OFFLINE_CONFIG = """state_dir = "state"
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


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them are TOML too


def write_config(
    tmp_path: Path,
    sandbox: Sandbox,
    *,
    model: str = "Media",
    redox: dict[str, Any] | None = None,
    fhir: dict[str, Any] | None = None,
    dest: dict[str, Any] | None = None,
    defaults: str | None = None,
    tables: str = "",
    **top: Any,
) -> Path:
    """A config with one destination "consents" under tmp_path; ``top`` overrides
    top-level keys, ``redox``/``fhir``/``dest`` keys of those tables, ``defaults``
    is the body of [destination.defaults] and ``tables`` raw TOML appended last."""
    for sub in ("inbox", "done", "failed"):
        (tmp_path / "consents" / sub).mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "state_dir": "state",
        "workers": 2,
        "settle_seconds": 0.2,
        "rescan_seconds": 1,
        "sidecar_timeout_seconds": 30,
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.2,
        "log_format": "json",
    }
    values.update(top)
    redox_values: dict[str, Any] = {
        "api_url": sandbox.url,
        "upload_url": f"{sandbox.url}/upload",
        "client_id": CLIENT_ID,
        "key_id": KEY_ID,
        "private_key_file": str(sandbox.private_key),
        "source_id": "test-source",
        "test": True,
    } | (redox or {})
    dest_values: dict[str, Any] = {
        "name": "consents",
        "inbox": "consents/inbox",
        "done": "consents/done",
        "failed": "consents/failed",
        "model": model,
    }
    if model != "FHIR":
        dest_values["redox_destination_id"] = DEST_ID
    dest_values |= dest or {}
    lines = [f"{k} = {_toml(v)}" for k, v in values.items()]
    lines += ["[redox]", *(f"{k} = {_toml(v)}" for k, v in redox_values.items())]
    if fhir is not None:
        lines += ["[fhir]", *(f"{k} = {_toml(v)}" for k, v in fhir.items())]
    lines += ["[[destination]]", *(f"{k} = {_toml(v)}" for k, v in dest_values.items())]
    lines += ["[destination.defaults]", MODEL_DEFAULTS[model] if defaults is None else defaults]
    path = tmp_path / "chartdrop.toml"
    path.write_text("\n".join(lines) + "\n" + tables)
    return path


@dataclass
class Running:
    settings: Settings
    service: Service
    thread: threading.Thread
    root: Path
    results: list[int] = field(default_factory=list)

    @property
    def queue(self) -> Queue:
        assert self.service.queue is not None
        return self.service.queue

    @property
    def inbox(self) -> Path:
        return self.root / "consents" / "inbox"

    @property
    def done(self) -> Path:
        return self.root / "consents" / "done"

    @property
    def failed(self) -> Path:
        return self.root / "consents" / "failed"

    def drop(self, name: str, data: bytes, sidecar: dict[str, Any] | None = None) -> None:
        """Drop a pair atomically (temp name, then rename), sidecar first."""
        if sidecar is not None:
            tmp = self.inbox / f".{name}.json.part"
            tmp.write_text(json.dumps(sidecar))
            tmp.rename(self.inbox / f"{name}.json")
        tmp = self.inbox / f".{name}.part"
        tmp.write_bytes(data)
        tmp.rename(self.inbox / name)

    def jobs(self, *states: JobState) -> list[Job]:
        return self.queue.jobs(states=states, limit=10_000)

    def finished(self, n: int) -> list[Job]:
        return wait_until(
            lambda: (lambda js: js if len(js) >= n else None)(
                self.jobs(JobState.DONE, JobState.FAILED)
            )
        )

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the daemon did not stop"


@contextmanager
def running(config: Path) -> Iterator[Running]:
    """The daemon on ``config`` for the length of a ``with`` block; always stopped."""
    r = start_daemon(config)
    try:
        yield r
    finally:
        if r.thread.is_alive():
            r.stop()


def start_daemon(config: Path) -> Running:
    settings = load_settings(config)
    service = Service(settings)
    service.start()
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(service.run()), daemon=True)
    thread.start()
    return Running(settings, service, thread, config.parent, results)


@pytest.fixture
def daemon_factory(tmp_path: Path, sandbox: Sandbox) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def make(**top: Any) -> Running:
        running = start_daemon(write_config(tmp_path, sandbox, **top))
        started.append(running)
        return running

    yield make
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def pdf() -> bytes:
    return sample_pdf("Test document")


@pytest.fixture
def sidecar() -> dict[str, Any]:
    return sample_sidecar()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every thread a test starts (daemon workers, observers, the sandbox) must end."""
    before = set(threading.enumerate())
    yield

    def leaked() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    deadline = time.monotonic() + 10
    while leaked() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked(), f"threads left running: {[t.name for t in leaked()]}"


# The longest tests (about 10 s and more on a quiet 2-core machine), started first:
# xdist's load scheduling hands out the first quarter of the tests one at a time,
# round-robin, so these run side by side at the start instead of one of them
# ending the run alone on one worker. Order only: a stale name here costs time,
# never a result.
LONG_FIRST = (
    "test_crash.py::test_short_crash_soak",
    "test_service_systemd.py::test_a_wedged_worker_stops_the_watchdog_pings_until_it_recovers",
    "test_phi.py::test_no_canary_leaves_its_place",
    "test_faults_wal.py::test_spool_files_without_a_job_after_the_wal_is_deleted_are_reconciled",
    "test_killpoints.py::test_crash_at_kill_point_finishes_exactly_once",
    "test_queue.py::test_four_processes_claim_every_job_exactly_once",
    "test_inbox_lock.py::test_a_second_daemon_on_the_same_inbox_is_refused",
    "test_duplicates.py::test_a_duplicate_is_held_then_sent_when_allowed",
    "test_cli.py::test_run_refuses_a_second_daemon_and_stops_on_sigterm",
    "test_cli.py::test_drop_hands_a_pair_to_the_running_daemon",
    "test_keys_install.py::test_keys_new_writes_a_private_key_and_prints_a_matching_jwks",
    "test_intake_daemon.py::test_an_incomplete_file_held_in_the_inbox_costs_no_cpu",
    "test_disk.py::test_unreadable_documents_are_retried_then_reported",
    "test_status_check.py::",
    "test_faults_logging.py::",
    "test_queue_properties.py::",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.nodeid.rsplit("/", 1)[-1]
        return next((i for i, p in enumerate(LONG_FIRST) if name.startswith(p)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
