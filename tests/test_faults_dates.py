"""Dates in a sidecar are real dates in the format Redox documents (issue 12, item
10, second half): the real daemon (in this process) refuses a DOB of 31/02/2008 or a
*DateTime that does not exist, with a note naming the field (never its value),
and sends nothing to the sandbox; real dates go through (the daemon as a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, running, wait_until
from crash_harness import daemon, soak_config

from daemon.samples import sample_pdf, sample_sidecar


def _with(model: str, path: tuple[str, ...], value: str) -> dict[str, Any]:
    side = sample_sidecar(model=model)
    node = side
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return side


CASES = [
    ("Media", ("Patient", "Demographics", "DOB"), "31/02/2008", "Patient.Demographics.DOB"),
    ("Media", ("Patient", "Demographics", "DOB"), "2008-02-31", "Patient.Demographics.DOB"),
    ("Media", ("Media", "ServiceDateTime"), "2017-13-22T19:30:04Z", "Media.ServiceDateTime"),
    ("FHIR", ("Media", "CreationDateTime"), "2017-06-31T10:00:00Z", "Media.CreationDateTime"),
]


@pytest.mark.parametrize(("model", "path", "value", "field"), CASES)
def test_a_date_that_does_not_exist_goes_to_failed_naming_the_field(
    tmp_path: Path, sandbox: Sandbox, model: str, path: tuple[str, ...], value: str, field: str
) -> None:
    extra: dict[str, Any] = {"model": model}
    if model == "FHIR":
        extra["fhir"] = sandbox.fhir_table()
    config = soak_config(tmp_path, sandbox, workers=1, **extra)
    inbox, failed = tmp_path / "consents" / "inbox", tmp_path / "consents" / "failed"
    side = _with(model, path, value)
    # the daemon in-process (what it does with the date; the next test runs the process)
    with running(config):
        (inbox / "CANARY dated.pdf.json").write_text(json.dumps(side))
        (inbox / "CANARY dated.pdf").write_bytes(sample_pdf("dated"))
        note = wait_until(lambda: next(failed.glob("*.error.txt"), None), timeout=30)
    text = note.read_text()
    assert field in text and "real date" in text
    assert value not in text
    assert sandbox.state.received() == [] and sandbox.state.fhir_resources() == []
    assert sandbox.state.attempts == []


def test_real_dates_in_the_documented_format_are_sent(tmp_path: Path, sandbox: Sandbox) -> None:
    config = soak_config(tmp_path, sandbox, workers=1)
    inbox, done = tmp_path / "consents" / "inbox", tmp_path / "consents" / "done"
    side = _with("Media", ("Patient", "Demographics", "DOB"), "2008-02-29")
    side["Media"]["ServiceDateTime"] = "2017-06-22T17:00:00.387Z"
    with daemon(config, tmp_path / "logs") as d:
        d.start()
        assert d.wait_started()
        (inbox / "CANARY ok.pdf.json").write_text(json.dumps(side))
        (inbox / "CANARY ok.pdf").write_bytes(sample_pdf("ok"))
        wait_until(lambda: next(done.rglob("*.pdf"), None), timeout=30)
        assert d.terminate() == 0
    (received,) = sandbox.state.received()
    assert received.body["Patient"]["Demographics"]["DOB"] == "2008-02-29"
