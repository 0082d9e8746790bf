"""The command line's rough edges, each as a user meets it (real subprocesses; the
refusals of ``jobs`` and ``show`` in-process, through the same entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Sandbox, run_cli, running, write_config

from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, *args], capture_output=True, text=True, timeout=60, check=False, input=stdin
    )


def _one_sentence(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0


def test_jobs_show_and_audit(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    c = ("-c", str(config))
    with running(config) as r:
        sandbox.state.set_faults(fail_next=[503], retry_after="0")
        r.drop("CANARY_a.pdf", sample_pdf("a"), sample_sidecar(mrn="CANARYMRN"))
        (job,) = r.finished(1)
    bogus = run_cli("jobs", "--state", "bogus", *c)
    _one_sentence(bogus)
    assert "invalid choice: 'bogus'" in bogus.stderr
    assert run_cli("jobs", "--state", "retrying", *c).stdout.strip() == "no jobs"
    nosuch = run_cli("jobs", "-d", "nosuch", *c)
    _one_sentence(nosuch)
    assert "no destination named 'nosuch'" in nosuch.stderr
    assert job.id in run("jobs", "--state", "done", "-d", "consents", *c).stdout

    show = run("show", job.id[:4], *c)
    assert show.returncode == 0, show.stderr
    assert f"id:           {job.id}" in show.stdout
    assert f"document id:  {job.document_id}" in show.stdout
    assert "history:" in show.stdout and "HTTP 503" in show.stdout
    assert "T" in show.stdout.split("created:")[1].split()[0]  # a local ISO time, not epoch
    assert "{" not in show.stdout
    assert json.loads(run_cli("show", job.id[:6], "--json", *c).stdout)["id"] == job.id
    short = run_cli("show", job.id[:3], *c)
    _one_sentence(short)
    assert "at least 4 characters" in short.stderr
    assert "CANARY" not in show.stdout

    today = run("audit", "--since", "today", "--csv", *c)
    assert today.returncode == 0, today.stderr
    assert job.id in today.stdout
    # `audit | head -1`: the reader stops early; no "Broken pipe", exit 0
    piped = subprocess.run(
        f"'{CHARTDROP}' audit --since 2000-01-01 -c '{config}' | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Broken pipe" not in piped.stderr and "Traceback" not in piped.stderr


def test_drop_validates_first_and_says_where_the_file_went(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    inbox = tmp_path / "consents" / "inbox"
    doc = tmp_path / "fax.pdf"
    doc.write_bytes(sample_pdf("fax"))
    bad = sample_sidecar()
    del bad["Patient"]["Identifiers"]
    bad["Media"]["Bogus"] = 1
    side = tmp_path / "fax-meta.json"
    side.write_text(json.dumps(bad))
    result = run("drop", str(doc), "--sidecar", str(side), "-d", "consents", "-c", str(config))
    assert result.returncode == 1
    assert len([x for x in result.stdout.splitlines() if x.startswith("  - ")]) >= 2
    assert list(inbox.iterdir()) == []  # nothing copied
    side.write_text(json.dumps(sample_sidecar()))
    ok = run("drop", str(doc), "--sidecar", str(side), "-d", "consents", "-c", str(config))
    assert ok.returncode == 0, ok.stderr
    assert f"as {inbox / 'fax.pdf'}" in ok.stdout
    assert sorted(p.name for p in inbox.iterdir()) == ["fax.pdf", "fax.pdf.json"]


def test_validate_takes_fields_from_the_file_name(tmp_path: Path, sandbox: Sandbox) -> None:
    pattern = r"(?P<mrn>[0-9]+)_(?P<doctype>[A-Za-z]+)\.pdf"
    config = write_config(
        tmp_path,
        sandbox,
        dest={"filename_pattern": pattern},
        tables='[destination.from_filename]\nmrn = "Patient.Identifiers[0].ID"\n'
        'doctype = "Media.DocumentType"\n',
        defaults='Patient = { Identifiers = [{ IDType = "MR" }] }\n'
        'Media = { Availability = "Available", Provider = { ID = "4356789876" } }',
    )
    side = sample_sidecar()
    del side["Patient"]["Identifiers"]  # the file name gives the MRN
    del side["Media"]["DocumentType"]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(side))
    args = ("validate", str(path), "-d", "consents", "-c", str(config))
    with_name = run(*args, "--file-name", "0012345_consent.pdf")
    assert with_name.returncode == 0, with_name.stdout + with_name.stderr
    without = run(*args, "--file-name", "scan.pdf")
    assert without.returncode == 1
    assert "Identifiers" in without.stdout


def test_version_and_help_without_markup() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("chartdrop ")
    help_ = run("--help")
    assert "``" not in help_.stdout
    assert "retry" in help_.stdout and "reload" in help_.stdout
