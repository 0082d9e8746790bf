"""The PHI canary test: patient values and file names never leave their place.

Documents whose file names, sidecars and contents carry distinctive canary
values go through every path a document can take: delivered (embedded and
uploaded), retried (500, 429), refused by Redox with an error body that echoes
the whole request back, given up on, refused at intake (wrong types, broken
JSON), an orphan sidecar, a sidecar that never came, a link, a FIFO, an
unreadable file, and a daemon killed with SIGKILL mid-send and started again.
The daemon runs as real subprocesses; everything an admin or a log collector
can see is captured: every line the daemons wrote, `status`, `jobs`, `show`,
`audit` (JSON and CSV), the events table, the jobs table's non-PHI columns and
every .error.txt note. None may hold a canary, in any case, nor its base64 or
URL-encoded form. The canaries do reach Redox (the sandbox), which proves they
flowed and that the search would see them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, quote_plus

import pytest
from conftest import DEST_ID, Sandbox, wait_until, write_config

from daemon import cli
from daemon.errors import ConfigError
from daemon.queue import Job, JobState, Queue
from daemon.samples import sample_pdf

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))

FIRST, LAST = "Zqxwv", "Canaryfield"
DOB = "1931-07-19"
SSN = "987-65-4321"
MRN = "CANARY-MRN-77123"
STREET = "4417 Quillfeather Lane"
CITY = "Vrellingham"
PHONE = "+1 555 013 7731"
CANARIES = [
    FIRST, LAST, f"{FIRST} {LAST}", DOB, DOB.replace("-", ""), SSN, SSN.replace("-", ""),
    MRN, STREET, "Quillfeather", CITY, PHONE, "555 013 7731", "5550137731",
]  # fmt: skip
NAME = f"{FIRST}_{LAST}_{DOB}"  # scanner file names carry the patient's name
PHI_JOB_COLUMNS = ("original_name", "sidecar_name", "spool_document", "spool_sidecar", "final_path")


def needles() -> list[str]:
    """Every canary, with its base64 (at each of the 3 alignments) and URL-encoded forms."""
    found: set[str] = set()
    for canary in CANARIES:
        found |= {canary, quote(canary), quote_plus(canary), quote(canary, safe="")}
        for shift in range(3):
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                encoded = encode(b"\0" * shift + canary.encode()).decode()
                middle = encoded[4 if shift else 0 : -4]  # drop the characters the edges touch
                if len(middle) >= 8:
                    found.add(middle)
    return sorted(found, key=str.lower)


NEEDLES = needles()


def leaks(text: str) -> list[str]:
    low = text.lower()
    return [n for n in NEEDLES if n.lower() in low]


def canary_sidecar() -> dict[str, Any]:
    return {
        "Patient": {
            "Identifiers": [{"ID": MRN, "IDType": "MR"}, {"ID": SSN, "IDType": "SSN"}],
            "Demographics": {
                "FirstName": FIRST,
                "LastName": LAST,
                "DOB": DOB,
                "SSN": SSN,
                "Address": {"StreetAddress": STREET, "City": CITY},
                "PhoneNumber": {"Home": PHONE},
            },
        },
        "Visit": {"VisitNumber": "1234"},
        "Media": {
            "DocumentType": "Consent Form",
            "Provider": {"ID": "4356789876", "IDType": "NPI"},
        },
    }


_PAGES = itertools.count(1)


def canary_pdf(padding: int = 0) -> bytes:
    """A PDF full of canaries; each call other bytes (page n), so none is held as a
    duplicate of another (same bytes, same patient)."""
    return sample_pdf(f"{FIRST} {LAST} {DOB} {SSN} {MRN} page {next(_PAGES)}", padding=padding)


def put(inbox: Path, name: str, data: bytes | None, sidecar: bytes | None) -> None:
    """Drop a pair atomically, sidecar first (either may be missing)."""
    for final, content in ((inbox / f"{name}.json", sidecar), (inbox / name, data)):
        if content is not None:
            tmp = inbox / f".{final.name}.part"
            tmp.write_bytes(content)
            tmp.rename(final)


class Daemon:
    """`chartdrop run` as a real subprocess; everything it writes goes to ``log``."""

    def __init__(self, config: Path, log: IO[bytes], wrap: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*wrap, CHARTDROP, "run", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)


@contextlib.contextmanager
def daemon(config: Path, log: IO[bytes], wrap: list[str]) -> Iterator[Daemon]:
    d = Daemon(config, log, wrap)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.stop(signal.SIGKILL)


def jobs(db: Path) -> list[Job]:
    try:
        with Queue.open_readonly(db) as q:
            return q.jobs(limit=1000)
    except (FileNotFoundError, ConfigError):  # not created or not migrated yet
        return []


def job_named(db: Path, name: str, *states: JobState) -> Job | None:
    for job in jobs(db):
        if job.original_name == name and (not states or job.state in states):
            return job
    return None


def finished(db: Path, name: str) -> Job:
    return wait_until(  # type: ignore[no-any-return]
        lambda: job_named(db, name, JobState.DONE, JobState.FAILED), timeout=30
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(config: Path) -> str:
    import httpx

    from daemon.config import load_settings

    listen = load_settings(config).metrics.listen
    assert listen is not None
    return httpx.get(f"http://{listen}/metrics", timeout=10).text


def cli_output(*args: str, code: int = 0) -> str:
    """Run a command in-process (the same code as the installed entry point)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        got = cli.main(list(args))
    assert got == code, err.getvalue()
    return out.getvalue() + err.getvalue()


def no_dac_override() -> list[str]:
    """As root, file modes do not stop reads: run the daemon without the capabilities
    that bypass them, so an unreadable file is unreadable to it."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def test_no_canary_leaves_its_place(tmp_path: Path, sandbox: Sandbox) -> None:
    wrap = no_dac_override()
    config = write_config(
        tmp_path,
        sandbox,
        workers=1,
        sidecar_timeout_seconds=1.5,
        embed_max_bytes=2000,
        log_level="debug",
    )
    slow = tmp_path / "slow"
    for sub in ("inbox", "done", "failed"):
        (slow / sub).mkdir(parents=True)
    with config.open("a") as fh:  # a second destination that gives up fast
        fh.write(
            '[[destination]]\nname = "slow"\ninbox = "slow/inbox"\ndone = "slow/done"\n'
            f'failed = "slow/failed"\nredox_destination_id = "{DEST_ID}"\n'
            "give_up_after_hours = 0.0006\n"
            '[destination.defaults]\nMedia = { Availability = "Available" }\n'
            f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\ntextfile = "metrics.prom"\n'
            "textfile_seconds = 0.5\n"
        )
    inbox = tmp_path / "consents" / "inbox"
    db = tmp_path / "state" / "chartdrop.sqlite3"
    side = json.dumps(canary_sidecar()).encode()
    sandbox.state.set_faults(echo_body=True, retry_after="0")  # every error echoes the body
    logs = tmp_path / "daemon.log"

    with logs.open("wb") as log:
        with daemon(config, log, wrap) as first:
            wait_until(lambda: b"daemon.started" in logs.read_bytes())
            # refused at intake, all at once
            wrong = canary_sidecar()
            wrong["Patient"]["Demographics"]["DOB"] = int(DOB.replace("-", ""))
            wrong["Patient"]["Demographics"]["FirstName"] = [FIRST]
            put(inbox, f"{NAME}_wrong_types.pdf", canary_pdf(), json.dumps(wrong).encode())
            put(inbox, f"{NAME}_broken_json.pdf", canary_pdf(), side[: len(side) // 2])
            put(inbox, f"{NAME}_orphan.pdf", None, side)
            put(inbox, f"{NAME}_no_sidecar.pdf", canary_pdf(), None)
            target = tmp_path / f"{NAME}_target.pdf"
            target.write_bytes(canary_pdf())
            put(inbox, f"{NAME}_link.pdf", None, side)
            (inbox / f"{NAME}_link.pdf").symlink_to(target)
            put(inbox, f"{NAME}_fifo.pdf", None, side)
            os.mkfifo(inbox / f"{NAME}_fifo.pdf")
            put(inbox, f"{NAME}_unreadable.pdf", canary_pdf(), side)
            (inbox / f"{NAME}_unreadable.pdf").chmod(0)

            # through the network, one at a time
            for name, faults, data in (
                ("embedded", [], canary_pdf()),
                ("uploaded", [], canary_pdf(padding=5000)),
                ("retried", [500, 429], canary_pdf()),
                ("refused", [400], canary_pdf()),
            ):
                sandbox.state.set_faults(fail_next=faults)
                put(inbox, f"{NAME}_{name}.pdf", data, side)
                finished(db, f"{NAME}_{name}.pdf")
            sandbox.state.set_faults(outage=True)
            put(slow / "inbox", f"{NAME}_gave_up.pdf", canary_pdf(), side)
            finished(db, f"{NAME}_gave_up.pdf")
            sandbox.state.set_faults(outage=False, latency_seconds=3)
            put(inbox, f"{NAME}_crash.pdf", canary_pdf(), side)
            wait_until(lambda: job_named(db, f"{NAME}_crash.pdf", JobState.LEASED))
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # mid-send
        sandbox.state.set_faults(latency_seconds=0)
        with daemon(config, log, wrap) as second:
            crash = finished(db, f"{NAME}_crash.pdf")
            for kind in (
                "wrong_types", "broken_json", "orphan", "no_sidecar", "link", "fifo", "unreadable"
            ):  # fmt: skip
                finished(db, f"{NAME}_{kind}.pdf" + (".json" if kind == "orphan" else ""))
            scraped = scrape(config)
            assert second.stop() == 0

    # every path really happened
    outcomes = {(j.original_name.removeprefix(f"{NAME}_"), j.state, j.error_kind) for j in jobs(db)}
    assert outcomes == {
        ("embedded.pdf", JobState.DONE, None),
        ("uploaded.pdf", JobState.DONE, None),
        ("retried.pdf", JobState.DONE, None),
        ("crash.pdf", JobState.DONE, None),
        ("refused.pdf", JobState.FAILED, "remote_rejected"),
        ("gave_up.pdf", JobState.FAILED, "gave_up"),
        ("wrong_types.pdf", JobState.FAILED, "invalid_sidecar"),
        ("broken_json.pdf", JobState.FAILED, "invalid_sidecar"),
        ("orphan.pdf.json", JobState.FAILED, "orphan_sidecar"),
        ("no_sidecar.pdf", JobState.FAILED, "missing_sidecar"),
        ("link.pdf", JobState.FAILED, "not_a_regular_file"),
        ("fifo.pdf", JobState.FAILED, "not_a_regular_file"),
        ("unreadable.pdf", JobState.FAILED, "unreadable"),  # retried, then reported
    }
    assert job_named(db, f"{NAME}_retried.pdf").attempts == 3  # type: ignore[union-attr]
    assert sandbox.state.uploads()
    statuses = [a.status for a in sandbox.state.attempts]
    assert {500, 429, 400, 503} <= set(statuses)
    with Queue.open_readonly(db) as q:
        assert "lease reset at start-up" in {e["detail"] for e in q.events(crash.id)}
    log_text = logs.read_text()
    assert '"intake.error"' in log_text and "PermissionError" in log_text  # the unreadable one
    assert '"job.retry"' in log_text and '"job.rejected"' in log_text

    # the canaries did flow (to Redox, where they belong): the search can see them
    received = json.dumps([r.body for r in sandbox.state.received()])
    assert {FIRST, SSN, MRN, STREET, PHONE} <= set(leaks(received))
    assert any(n not in CANARIES for n in leaks(received))  # a base64 form, in FileContents

    # ... and nowhere else
    seen: dict[str, str] = {"daemon logs": log_text}
    seen["status"] = cli_output("status", "-c", str(config))
    seen["status --json"] = cli_output("status", "-c", str(config), "--json")
    seen["status --check"] = cli_output("status", "--check", "-c", str(config), code=2)
    seen["metrics (HTTP)"] = scraped
    seen["metrics (textfile)"] = (tmp_path / "metrics.prom").read_text()
    assert 'chartdrop_documents_total{destination="consents",outcome="failed"} 8.0' in scraped
    seen["jobs"] = cli_output("jobs", "-c", str(config))
    seen["jobs --json"] = cli_output("jobs", "-c", str(config), "--json")
    for job in jobs(db):
        seen[f"show {job.id}"] = cli_output("show", job.id, "-c", str(config))
    seen["audit --json"] = cli_output("audit", "-c", str(config), "--since", "2000-01-01", "--json")
    seen["audit --csv"] = cli_output("audit", "-c", str(config), "--since", "2000-01-01", "--csv")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    seen["events table"] = repr(conn.execute("SELECT * FROM events").fetchall())
    columns = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
    safe = [c for c in columns if c not in PHI_JOB_COLUMNS]
    seen["jobs table (non-PHI columns)"] = repr(
        conn.execute(f"SELECT {', '.join(safe)} FROM jobs").fetchall()
    )
    conn.close()
    failed_dirs = (tmp_path / "consents" / "failed", slow / "failed")
    notes = sorted(note for folder in failed_dirs for note in folder.glob("*.error.txt"))
    assert len(notes) == 9
    for note in notes:
        seen[f"note {notes.index(note)}"] = note.read_text()
    assert "Patient.Demographics.DOB" in "".join(seen[k] for k in seen if k.startswith("note"))

    found = {where: leaks(text) for where, text in seen.items() if leaks(text)}
    assert found == {}
    assert len(seen["daemon logs"].splitlines()) > 40
