"""`chartdrop retry`: failed jobs back from failed/ under the same job and
DocumentID, run as a subprocess beside a real daemon on the real sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import Running, Sandbox, run_cli, running, wait_until, write_config

from daemon.queue import Job, JobState
from daemon.samples import sample_pdf, sample_sidecar

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def retry(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, "retry", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_refused_by_the_destination_then_retried_with_the_same_document_id(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        sandbox.state.set_faults(fail_next=[400])
        r.drop("CANARY_Bixby.pdf", sample_pdf("x"), sample_sidecar(mrn="CANARYMRN"))
        (job,) = r.finished(1)
        assert job.state == JobState.FAILED
        assert sorted(p.name for p in r.failed.iterdir()) == [
            "CANARY_Bixby.pdf",
            "CANARY_Bixby.pdf.error.txt",
            "CANARY_Bixby.pdf.json",
        ]
        result = retry(config, job.id[:4])
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"requeued {job.id}" in result.stdout
        assert job.document_id in result.stdout
        assert "CANARY" not in result.stdout + result.stderr
        assert list(r.failed.iterdir()) == []  # the pair left and the note is gone
        wait_until(lambda: r.queue.get(job.id).state == JobState.DONE)  # type: ignore[union-attr]
        (rec,) = sandbox.state.received()
        assert rec.body["Media"]["DocumentID"] == job.document_id
        assert len(r.queue.jobs()) == 1  # the same job, not a new one
        assert [a.document_id for a in sandbox.state.attempts] == [job.document_id] * 2
        done = list((r.done).rglob("*.pdf"))
        assert [p.name for p in done] == ["CANARY_Bixby.pdf"]


def test_fixed_sidecar_in_failed_is_taken_and_invalid_one_refused_with_every_problem(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        bad = sample_sidecar(last="CANARYLAST")
        del bad["Patient"]["Identifiers"]
        bad["Media"]["Bogus"] = "x"
        r.drop("CANARY_bad.pdf", sample_pdf("y"), bad)
        (job,) = r.finished(1)
        # the refusals in-process (what retry says); the retry that works is the process
        refused = run_cli("retry", "-c", str(config), job.id)
        assert refused.returncode == 1
        assert f"not retried {job.id}" in refused.stdout
        problems = [line for line in refused.stdout.splitlines() if line.startswith("  - ")]
        assert len(problems) >= 2, refused.stdout  # every problem, not the first one
        assert "CANARY" not in refused.stdout
        assert (r.failed / "CANARY_bad.pdf.error.txt").exists()  # nothing moved
        # staff fix the sidecar where it is, in failed/
        (r.failed / "CANARY_bad.pdf.json").write_text(json.dumps(sample_sidecar()))
        ok = retry(config, "--failed", "-d", "consents", "--since", "today")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        wait_until(lambda: r.queue.get(job.id).state == JobState.DONE)  # type: ignore[union-attr]
        (rec,) = sandbox.state.received()
        assert rec.body["Media"]["DocumentID"] == job.document_id
        # a done job is not failed: refused with the reason
        again = run_cli("retry", "-c", str(config), job.id)
        assert again.returncode == 1 and "the job is done, not failed" in again.stdout


def test_refused_when_the_files_left_failed_or_the_document_changed(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        sandbox.state.set_faults(fail_next=[400, 400])
        r.drop("a.pdf", sample_pdf("a"), sample_sidecar())
        r.drop("b.pdf", sample_pdf("b"), sample_sidecar())
        jobs = {j.original_name: j for j in r.finished(2)}
    (r.failed / "a.pdf").rename(tmp_path / "a.pdf")
    (r.failed / "b.pdf").write_bytes(sample_pdf("something else"))
    result = retry(config, "--failed")
    assert result.returncode == 1
    assert f"not retried {jobs['a.pdf'].id}" in result.stdout
    assert "no longer in failed/" in result.stdout
    assert f"not retried {jobs['b.pdf'].id}" in result.stdout
    assert "not the one this job had" in result.stdout
    assert (r.failed / "b.pdf.error.txt").exists()


def test_bad_arguments_are_one_sentence(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config):
        pass
    for args, text in (
        ((), "name the jobs to retry, or use --failed"),
        (("abc",), "give at least 4 characters"),
        (("abcd",), "no job with id abcd"),
        (("--failed", "-d", "nosuch"), "no destination named 'nosuch'"),
    ):
        # in-process (what it says, not that it is a process): the other tests run retry
        result = run_cli("retry", "-c", str(config), *args)
        assert result.returncode == 2, args
        assert text in result.stderr and "Traceback" not in result.stderr


def _gave_up_with_unknown_outcome(r: Running, sandbox: Sandbox) -> Job:
    """CANARY_slow.pdf in failed/: every send timed out after the request went out
    (the config's 0.5 s read timeout against 1.5 s of latency) until it gave up."""
    sandbox.state.set_faults(latency_seconds=1.5)
    r.drop("CANARY_slow.pdf", sample_pdf("slow"), sample_sidecar())
    (job,) = r.finished(1)
    assert (job.state, job.error_kind) == (JobState.FAILED, "gave_up")
    sandbox.state.set_faults(latency_seconds=0)
    return job


def test_a_pair_moved_back_by_hand_after_an_unknown_outcome_keeps_its_document_id(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox, read_timeout_seconds=0.5, give_up_after_hours=0.0003)
    with running(config) as r:
        job = _gave_up_with_unknown_outcome(r, sandbox)
        # staff move the pair back by hand (the documented way), leaving the note
        (r.failed / "CANARY_slow.pdf.json").rename(r.inbox / "CANARY_slow.pdf.json")
        (r.failed / "CANARY_slow.pdf").rename(r.inbox / "CANARY_slow.pdf")
        done = wait_until(lambda: r.jobs(JobState.DONE))
        assert done[0].id != job.id
        assert done[0].document_id == job.document_id
        assert {rec.body["Media"]["DocumentID"] for rec in sandbox.state.received()} == {
            job.document_id
        }
        assert list(r.failed.iterdir()) == []  # the stale note went with it
        # a different document of the same size is not taken for the same one
        other = sample_pdf("slOw")
        assert len(other) == len(sample_pdf("slow"))
        r.drop("other.pdf", other, sample_sidecar())
        new = wait_until(
            lambda: [j for j in r.jobs(JobState.DONE) if j.original_name == "other.pdf"]
        )
        assert new[0].document_id != job.document_id


def test_a_hard_link_back_after_an_unknown_outcome_is_refused_without_holding_others_back(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Staff link the document back instead of moving it: the inbox file is then
    hard-linked (refused, never opened) while its size matches the failed job's.
    It goes to failed/ with its reason, and a document dropped beside it is sent."""
    config = write_config(tmp_path, sandbox, read_timeout_seconds=0.5, give_up_after_hours=0.0003)
    with running(config) as r:
        _gave_up_with_unknown_outcome(r, sandbox)
        (r.inbox / "CANARY_linked.pdf.json").write_text(json.dumps(sample_sidecar()))
        os.link(r.failed / "CANARY_slow.pdf", r.inbox / "CANARY_linked.pdf")
        r.drop("beside.pdf", sample_pdf("beside"), sample_sidecar())
        jobs = r.finished(3)  # held back, the linked one and beside.pdf would never finish
        by_name = {j.original_name: j for j in jobs}
        assert by_name["beside.pdf"].state == JobState.DONE
        linked = by_name["CANARY_linked.pdf"]
        assert (linked.state, linked.error_kind) == (JobState.FAILED, "not_a_regular_file")
        note = (r.failed / "CANARY_linked.pdf.error.txt").read_text()
        assert "link" in note
        # both failed jobs' copies are now one hard-linked file: retry refuses each
        # in words, and goes on to the next after the first
        result = retry(config, "--failed")
        assert result.returncode != 0
        assert result.stdout.count("not retried") == 2, result.stdout + result.stderr
        assert "link" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr


def test_retry_never_gives_a_document_a_stem_sidecar_another_document_in_failed_shares(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """failed/ holds scan.pdf (its sidecar never came) and, later, scan.png with its
    own stem-style sidecar scan.json (patient B; refused once by the destination).
    Retrying scan.pdf must not take scan.json as its sidecar (intake's rule: a stem
    sidecar pairs only when one document answers to it): it is refused in words and
    stays in failed/, and scan.png goes to patient B with its own sidecar."""
    import time

    from test_content import make_png

    config = write_config(tmp_path, sandbox, sidecar_timeout_seconds=1)
    with running(config) as r:
        r.drop("scan.pdf", sample_pdf("patient unknown"))  # no sidecar: failed/ after 1 s
        (lonely,) = r.finished(1)
        assert (lonely.state, lonely.error_kind) == (JobState.FAILED, "missing_sidecar")
        sandbox.state.set_faults(fail_next=[400])  # B's pair is refused once
        tmp = r.inbox / ".scan.json.part"  # stem style: scan.json pairs with scan.png
        tmp.write_text(json.dumps(sample_sidecar(mrn="B-0000002", last="Other")))
        tmp.rename(r.inbox / "scan.json")
        r.drop("scan.png", make_png())
        wait_until(lambda: len(r.finished(2)) == 2)
        names = sorted(p.name for p in r.failed.iterdir())
        assert {"scan.png", "scan.pdf", "scan.json"} <= set(names), names
        result = retry(config, "--failed")
        assert "cannot be told whose it is" in result.stdout + result.stderr, result
        wait_until(lambda: not r.jobs(JobState.QUEUED, JobState.LEASED, JobState.SENT))
        time.sleep(0.5)
        sent = [
            (rec.body["Patient"]["Identifiers"][0]["ID"], rec.body["Media"]["FileName"])
            for rec in sandbox.state.received()  # the accepted ones
        ]
        assert ("B-0000002", "scan.pdf") not in sent, sent
        assert ("B-0000002", "scan.png") in sent, sent
        assert (r.failed / "scan.pdf").exists()
        assert r.queue.get(lonely.id).state == JobState.FAILED


def test_a_send_slower_than_the_lease_is_not_sent_again_from_under_its_worker(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A request still at the peer when the job's lease runs out (a long upload on a
    slow line, longer than ``lease_seconds``): the lease is not expired from under
    the live worker, so no other worker claims the job and sends it a second time
    after the first was answered 200 (found by a review: it was)."""
    import time

    config = write_config(tmp_path, sandbox, lease_seconds=2)
    sandbox.state.set_faults(latency_seconds=3.5)  # longer than the lease
    with running(config) as r:
        r.drop("slow.pdf", sample_pdf("slow"), sample_sidecar())
        (job,) = wait_until(lambda: r.jobs(JobState.LEASED))
        time.sleep(3.0)  # past the lease, with the request still at the peer
        assert r.queue.get(job.id).state == JobState.LEASED
        sandbox.state.set_faults(latency_seconds=0.0)
        (done,) = r.finished(1)
        assert done.state == JobState.DONE
        time.sleep(1.0)  # any second send has had time to arrive
        statuses = [a.status for a in sandbox.state.attempts if a.path == "/endpoint"]
        assert statuses == [200], statuses
        assert not any(e["detail"] == "lease expired" for e in r.queue.events(job.id))


def test_the_same_bytes_for_another_patient_never_take_a_failed_jobs_document_id(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A job for patient A gave up after timeouts (unknown outcome: it may be in A's
    chart under DocumentID X). The same bytes dropped later for patient B (a printed
    form, a fax page sent again) are a new document for another chart: a new ID,
    never X (found by a review: B's document went out as X)."""
    config = write_config(tmp_path, sandbox, read_timeout_seconds=0.5, give_up_after_hours=0.0003)
    with running(config) as r:
        sandbox.state.set_faults(latency_seconds=1.5)
        r.drop("a.pdf", sample_pdf("same form"), sample_sidecar(mrn="0000000001"))
        (first,) = r.finished(1)
        assert (first.state, first.error_kind) == (JobState.FAILED, "gave_up")
        sandbox.state.set_faults(latency_seconds=0)
        r.drop("b.pdf", sample_pdf("same form"), sample_sidecar(mrn="0000000002"))
        (other,) = wait_until(lambda: r.jobs(JobState.DONE))
        by_patient: dict[str, set[str]] = {}
        for rec in sandbox.state.received():  # A's timed-out sends did arrive: X is in A's chart
            mrn = rec.body["Patient"]["Identifiers"][0]["ID"]
            by_patient.setdefault(mrn, set()).add(rec.body["Media"]["DocumentID"])
        # (A's timed-out sends usually arrive, so X is in A's chart; on a loaded
        # machine they may not have, which changes nothing below)
        assert by_patient.get("0000000001", set()) <= {first.document_id}
        assert by_patient["0000000002"] == {other.document_id}
        assert other.document_id != first.document_id


def test_fhir_the_same_bytes_for_another_patient_reach_that_patients_chart(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The same on a FHIR destination, where reusing A's DocumentID made the server
    answer B's conditional create with A's existing Media: B's document was filed
    in done/ and never reached B's chart."""
    config = write_config(
        tmp_path, sandbox, model="FHIR", fhir=sandbox.fhir_table(),
        read_timeout_seconds=0.5, give_up_after_hours=0.0003,
    )  # fmt: skip
    with running(config) as r:
        sandbox.state.set_faults(latency_seconds=1.5)
        r.drop("a.pdf", sample_pdf("same form"), sample_sidecar(mrn="0000000001", model="FHIR"))
        (first,) = r.finished(1)
        assert (first.state, first.error_kind) == (JobState.FAILED, "gave_up")
        sandbox.state.set_faults(latency_seconds=0)
        r.drop("b.pdf", sample_pdf("same form"), sample_sidecar(mrn="0000000002", model="FHIR"))
        (b_job,) = wait_until(lambda: r.jobs(JobState.DONE))
        assert b_job.original_name == "b.pdf"
        subjects = [m["subject"]["identifier"]["value"] for m in sandbox.state.fhir_resources()]
        assert "0000000002" in subjects, subjects  # (A's Media, if A's send arrived)
