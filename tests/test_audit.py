"""The audit trail: a real daemon run, then `chartdrop audit` (a real subprocess on
the read-only queue) answers "was this document sent, when, and what did Redox
say" from the document's SHA-256 alone."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, running, wait_until, write_config

from daemon.audit import FIELDS, outcome, parse_when
from daemon.config import load_settings
from daemon.errors import ChartdropError
from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def audit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, "audit", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One daemon run, shared by the tests below: accepted, retried, refused."""
    from conftest import CLIENT_ID, KEY_ID

    from daemon.sandbox import SandboxServer, SandboxState, generate_keypair

    tmp_path = tmp_path_factory.mktemp("audit")
    private, public = generate_keypair()
    key = tmp_path / "redox-key.pem"
    key.write_bytes(private)
    key.chmod(0o600)
    state = SandboxState(blob_dir=tmp_path / "blobs")
    state.register_client(CLIENT_ID, KEY_ID, public)
    docs = {name: sample_pdf(f"audit {name}") for name in ("accepted", "retried", "refused")}
    started = time.time()
    with SandboxServer(state) as server:
        sandbox = Sandbox(server=server, state=state, private_key=key, fhir_secret=key)
        config = write_config(tmp_path, sandbox)
        with running(config) as r:
            for name, fault in (("accepted", []), ("retried", [503]), ("refused", [400])):
                state.set_faults(fail_next=fault, retry_after="0")
                r.drop(f"{name}.pdf", docs[name], sample_sidecar())
                wait_until(
                    lambda n=name: any(
                        j.original_name == f"{n}.pdf"
                        for j in r.jobs(JobState.DONE, JobState.FAILED)
                    )
                )
            # the audit reads the database while the daemon still runs
            live = audit(config, "--since", date.today().isoformat(), "--json")
        received = {body.body["Media"]["FileName"]: body.log_id for body in state.received()}
    return config, docs, received, started, live


def test_audit_answers_was_it_sent_when_and_what_redox_said(history: Any) -> None:
    config, docs, received, started, live = history
    assert live.returncode == 0, live.stderr
    result = audit(
        config, "--since", date.today().isoformat(), "--json", "--sha256", sha(docs["accepted"])
    )
    rows = json.loads(result.stdout)
    (sent,) = [r for r in rows if r["outcome"] == "accepted"]
    assert sent["http_status"] == 200
    assert sent["remote_id"] == received["accepted.pdf"]  # the Redox log ID
    assert started <= datetime.fromisoformat(sent["at"]).timestamp() <= time.time()
    assert [r["outcome"] for r in rows] == [
        "received",
        "queued",
        "claimed",
        "accepted",
        "filed_in_done",
    ]
    assert {r["job_id"] for r in rows} == {sent["job_id"]}
    assert rows[0]["sha256"] is None  # the hand-over starts before the document is hashed
    assert all(r["sha256"] == sha(docs["accepted"]) for r in rows[1:])
    assert all(r["size"] == len(docs["accepted"]) for r in rows[1:])
    assert rows[0]["document_id"] == sent["document_id"]


def test_retries_and_refusals_carry_their_status_and_log_id(history: Any) -> None:
    docs, live = history[1], history[4]
    rows = json.loads(live.stdout)
    retried = [r for r in rows if r["sha256"] == sha(docs["retried"])]
    shown = [r for r in retried if r["outcome"] not in ("received", "claimed")]
    assert [(r["outcome"], r["http_status"]) for r in shown] == [
        ("queued", None),
        ("retry", 503),
        ("accepted", 200),
        ("filed_in_done", 200),
    ]
    retry = next(r for r in retried if r["outcome"] == "retry")
    assert retry["remote_id"] and retry["error_kind"] == "transient"
    assert all(r["http_status"] is None for r in retried if r["outcome"] == "claimed")
    refused = [r for r in rows if r["sha256"] == sha(docs["refused"])]
    by_outcome = {r["outcome"]: r for r in refused}
    assert by_outcome["refused"]["http_status"] == 400
    assert by_outcome["refused"]["remote_id"]  # Redox's log ID for the refusal
    assert by_outcome["refused"]["error_kind"] == "remote_rejected"
    assert by_outcome["filed_in_failed"]["remote_id"] == by_outcome["refused"]["remote_id"]


def test_csv_and_filters(history: Any) -> None:
    config, _, _, _, live = history
    today = date.today().isoformat()
    everything = json.loads(audit(config, "--since", today, "--json").stdout)
    assert len(everything) >= len(json.loads(live.stdout)) >= 15
    result = audit(config, "--since", today, "--csv")
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert tuple(table[0]) == FIELDS
    assert [r["job_id"] for r in table] == [r["job_id"] for r in everything]
    assert {r["outcome"] for r in table} >= {"accepted", "retry", "refused", "filed_in_failed"}
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    with Queue.open_readonly(load_settings(config).database_path) as queue:

        def count(**filters: Any) -> int:
            return len(list(queue.audit_rows(**filters)))

        since, until = parse_when(yesterday), parse_when(yesterday, end=True)
        assert count(since=since, until=until) == 0
        assert count(since=since, destination="other") == 0
        assert count(since=since, destination="consents") == len(everything)
        assert count(since=since, batch=4) == len(everything)  # paging keeps every row


def test_bad_dates_are_one_clear_sentence(history: Any) -> None:
    config = history[0]
    result = audit(config, "--since", "last tuesday")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is not a date" in result.stderr
    with pytest.raises(ChartdropError):
        parse_when("2024-13-01")
    assert parse_when("2024-03-01", end=True) - parse_when("2024-03-01") in (82_800, 86_400, 90_000)
    assert parse_when("2024-03-01T10:00:00+00:00") == 1_709_287_200


def test_outcome_words() -> None:
    def event(a: str | None, b: str, kind: str | None = None) -> dict[str, Any]:
        return {"from_state": a, "to_state": b, "error_kind": kind}

    assert outcome(event("leased", "queued", "transient")) == "retry"
    assert outcome(event("leased", "queued")) == "released"
    assert outcome(event("done", "done")) == "retention"
    assert outcome(event("leased", "sent")) == "accepted"
