"""Patient data written as a sidecar's keys (not its values) stays out of what
staff and admins see, while the refusal still says where the problem is.

Every test runs the real daemon (in a thread, as conftest.running does) on real
temp folders against the real sandbox over 127.0.0.1, then searches everything
staff and admins can see (the daemon's log lines, the .error.txt notes,
`status`, `jobs`, `show`, `audit`, the events table) for canary values.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

from conftest import Sandbox, run_cli, running, write_config

from daemon.samples import sample_pdf

MRN = "CANARY-MRN-77123"
LAST = "Canaryfield"
FIRST = "Zqxwv"
CANARIES = (MRN, LAST, FIRST, "77123")


def _leaks(text: str) -> list[str]:
    low = text.lower()
    return [c for c in CANARIES if c.lower() in low]


def _everything_visible(config: Path, root: Path, log: str) -> dict[str, str]:
    seen = {"daemon log": log}
    seen["status"] = run_cli("status", "-c", str(config)).stdout
    seen["status --json"] = run_cli("status", "-c", str(config), "--json").stdout
    seen["jobs --json"] = run_cli("jobs", "-c", str(config), "--json").stdout
    for job in json.loads(seen["jobs --json"]):
        shown = run_cli("show", job["id"], "-c", str(config))
        seen[f"show {job['id']}"] = shown.stdout + shown.stderr
        shown = run_cli("show", job["id"], "-c", str(config), "--json")
        seen[f"show --json {job['id']}"] = shown.stdout
    seen["audit --csv"] = run_cli(
        "audit", "-c", str(config), "--since", "2000-01-01", "--csv"
    ).stdout
    conn = sqlite3.connect(f"file:{root / 'state' / 'chartdrop.sqlite3'}?mode=ro", uri=True)
    seen["events table"] = repr(conn.execute("SELECT * FROM events").fetchall())
    conn.close()
    for note in sorted((root / "consents" / "failed").glob("*.error.txt")):
        seen[f"note {note.stat().st_ino}"] = note.read_text()
    return seen


def _sidecar(identifiers: Any) -> dict[str, Any]:
    return {
        "Patient": {
            "Identifiers": identifiers,
            "Demographics": {"FirstName": "Timothy", "LastName": "Bixby", "DOB": "2008-01-06"},
        },
        "Visit": {"VisitNumber": "1234"},
        "Media": {"DocumentType": "Consent Form", "Provider": {"ID": "4356789876"}},
    }


def test_a_sidecar_whose_keys_hold_patient_data_does_not_leak_them(
    tmp_path: Path, sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    """A common integrator mistake: the identifier written as a map {MRN: type}, or
    the patient's name used as a key. The document is refused (right), but the
    refusal names the *unknown key*, and that key is the MRN / the name: it is
    copied verbatim into the .error.txt note, the job's last_error (`show`), the
    audit trail (`audit`, the events table's detail column)."""
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        # scan.pdf: a neutral file name, so only the sidecar's keys carry PHI
        r.drop("scan1.pdf", sample_pdf("one"), _sidecar([{MRN: "MR"}]))
        side = _sidecar([{"ID": "0000000001", "IDType": "MR"}])
        side["Patient"]["Demographics"] = {f"{FIRST} {LAST}": {"DOB": "1931-07-19"}}
        r.drop("scan2.pdf", sample_pdf("two"), side)
        jobs = r.finished(2)
        assert {j.error_kind for j in jobs} == {"invalid_sidecar"}
    seen = _everything_visible(config, tmp_path, log_stream.getvalue())
    found = {where: _leaks(text) for where, text in seen.items() if _leaks(text)}
    assert found == {}
    notes = "".join(text for where, text in seen.items() if where.startswith("note "))
    assert "Patient.Identifiers[0].(a key that is not a field name" in notes
    assert "Patient.Demographics.(a key that is not a field name" in notes
