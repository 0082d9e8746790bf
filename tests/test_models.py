"""End to end, per Redox data model, event type and auth method, against the
sandbox over HTTP: what the sandbox received validates (the redox package's
models and the JSON schemas), the file bytes decoded from it (or fetched by
URI) equal the original, the DocumentID is the same on every resend, and a
wrong credential pauses the destination instead of failing documents."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import (
    LEGACY_KEY,
    LEGACY_SECRET,
    Sandbox,
    load_schema,
    running,
    wait_until,
    write_config,
)
from fhir.resources.R4B.media import Media as FhirMedia
from redox.media.replace import Replace as MediaReplace
from redox.notes.delete import Delete as NotesDelete
from redox.notes.new import New as NotesNew
from redox.results.new import New as ResultsNew

from daemon.cli import main as cli_main
from daemon.errors import PermanentDeliveryError
from daemon.queue import JobState
from daemon.samples import sample_pdf, sample_sidecar
from daemon.sandbox import generate_keypair


def _only_body(sandbox: Sandbox) -> dict[str, Any]:
    (received,) = sandbox.state.received()
    return received.body


def _status(config: Path) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["status", "-c", str(config)]) == 0
    return out.getvalue()


def test_notes_embedded(tmp_path: Path, sandbox: Sandbox, pdf: bytes) -> None:
    config = write_config(tmp_path, sandbox, model="Notes")
    with running(config) as r:
        r.drop("consent.pdf", pdf, sample_sidecar(model="Notes"))
        (job,) = r.finished(1)
    assert job.state == JobState.DONE, job.last_error
    body = _only_body(sandbox)
    NotesNew.model_validate(body, strict=True)
    jsonschema.Draft4Validator(load_schema("notes/new.json")).validate(body)
    note = body["Note"]
    assert note["ContentType"] == "Base64 Encoded"
    assert base64.b64decode(note["FileContents"]) == pdf
    assert note["DocumentID"] == job.document_id and note["FileName"] == "consent.pdf"
    assert job.remote_id == sandbox.state.received()[0].log_id


def test_notes_uploaded_file_is_referenced_by_its_uri(tmp_path: Path, sandbox: Sandbox) -> None:
    big = sample_pdf("large", padding=50_000)
    config = write_config(tmp_path, sandbox, model="Notes", embed_max_bytes=10_000)
    with running(config) as r:
        r.drop("large.pdf", big, sample_sidecar(model="Notes"))
        (job,) = r.finished(1)
    assert job.state == JobState.DONE, job.last_error
    note = _only_body(sandbox)["Note"]
    # Redox: "still populate the ContentType field with the Base64 Encoded value".
    assert note["ContentType"] == "Base64 Encoded"
    assert note["FileContents"] == job.blob_uri
    assert sandbox.state.blob_bytes(note["FileContents"]) == big


def test_results_carry_the_file_as_encapsulated_data(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    defaults = (
        'Orders = [{ Status = "Resulted", Results = [{ Code = "PDF Report", Status = "Final" }] }]'
    )
    config = write_config(tmp_path, sandbox, model="Results", defaults=defaults)
    sidecar = sample_sidecar(model="Results")
    sidecar["Orders"] = [{"ID": "ORD-77"}]  # the rest comes from the destination's defaults
    with running(config) as r:
        r.drop("lab.pdf", pdf, sidecar)
        (job,) = r.finished(1)
    assert job.state == JobState.DONE, job.last_error
    body = _only_body(sandbox)
    ResultsNew.model_validate(body, strict=True)
    jsonschema.Draft4Validator(load_schema("results/new.json")).validate(body)
    order = body["Orders"][0]
    assert order["ID"] == "ORD-77" and order["Status"] == "Resulted"
    result = order["Results"][0]
    assert result["ValueType"] == "Encapsulated Data" and result["FileType"] == "PDF"
    assert result["Code"] == "PDF Report" and result["Status"] == "Final"
    assert base64.b64decode(result["Value"]) == pdf


def test_results_missing_order_fields_fail_with_their_names(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    config = write_config(tmp_path, sandbox, model="Results")
    sidecar = sample_sidecar(model="Results")
    sidecar["Orders"] = [{"ID": "ORD-77", "Results": [{"Code": "x"}]}]
    with running(config) as r:
        r.drop("lab.pdf", pdf, sidecar)
        (job,) = r.finished(1)
        note = (r.failed / "lab.pdf.error.txt").read_text()
    assert job.state == JobState.FAILED
    assert "Orders[0].Status (the order's status, e.g. Resulted) is required but missing" in note
    assert "Orders[0].Results[0].Status (the result's status, e.g. Final) is required" in note
    assert sandbox.state.received() == []


def test_media_replace(tmp_path: Path, sandbox: Sandbox, pdf: bytes) -> None:
    config = write_config(tmp_path, sandbox)
    sidecar = sample_sidecar() | {"EventType": "Replace"}
    sidecar["Media"]["OriginalDocumentID"] = "b169267c-10c9-4fe3-91ae-9ckf5703e90l"
    with running(config) as r:
        r.drop("corrected.pdf", pdf, sidecar)
        (job,) = r.finished(1)
    assert job.state == JobState.DONE, job.last_error
    body = _only_body(sandbox)
    assert body["Meta"]["EventType"] == "Replace" and "EventType" not in body
    MediaReplace.model_validate(body, strict=True)
    jsonschema.Draft4Validator(load_schema("media/replace.json")).validate(body)
    assert base64.b64decode(body["Media"]["FileContents"]) == pdf


def test_notes_delete_is_a_sidecar_dropped_alone(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox, model="Notes")
    sidecar = sample_sidecar(model="Notes") | {"EventType": "Delete"}
    sidecar["Note"]["DocumentID"] = "doc-to-delete-1"
    with running(config) as r:
        tmp = r.inbox / ".delete.json.part"
        tmp.write_text(json.dumps(sidecar))
        tmp.rename(r.inbox / "old-consent.pdf.json")
        (job,) = r.finished(1)
        filed = sorted(p.name for p in r.done.rglob("*") if p.is_file())
    assert job.state == JobState.DONE, job.last_error
    assert filed == ["old-consent.pdf.json"]
    body = _only_body(sandbox)
    assert body["Meta"]["EventType"] == "Delete"
    NotesDelete.model_validate(body, strict=True)
    jsonschema.Draft4Validator(load_schema("notes/delete.json")).validate(body)
    assert body["Note"]["DocumentID"] == "doc-to-delete-1"
    assert "FileContents" not in body["Note"]


def test_delete_with_a_document_is_refused(tmp_path: Path, sandbox: Sandbox, pdf: bytes) -> None:
    config = write_config(tmp_path, sandbox)
    with running(config) as r:
        r.drop("x.pdf", pdf, sample_sidecar() | {"EventType": "Delete"})
        (job,) = r.finished(1)
        note = (r.failed / "x.pdf.error.txt").read_text()
    assert job.state == JobState.FAILED
    assert "EventType Delete takes no document: drop the sidecar alone, without the file" in note


def test_every_resend_carries_the_same_document_id(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    sandbox.state.set_faults(fail_next=[503, 502], retry_after="0")
    config = write_config(tmp_path, sandbox, model="Notes")
    with running(config) as r:
        r.drop("consent.pdf", pdf, sample_sidecar(model="Notes"))
        (job,) = r.finished(1)
    assert job.state == JobState.DONE and job.attempts == 3
    tries = [a for a in sandbox.state.attempts if a.path == "/endpoint"]
    assert [a.status for a in tries] == [503, 502, 200]
    assert {a.document_id for a in tries} == {job.document_id}


# -- sidecar-less scanners ---------------------------------------------------------

PATTERN = {
    "filename_pattern": r"(?P<mrn>[0-9]+)_(?P<doctype>[a-z]+)_[0-9]{8}\.pdf",
}
FROM_FILENAME = """
[destination.from_filename]
mrn = "Patient.Identifiers[0].ID"
doctype = "Media.DocumentType"
"""
PATTERN_DEFAULTS = (
    'Media = { Availability = "Available", Provider = { ID = "4356789876" } }\n'
    'Patient = { Identifiers = [{ IDType = "MR" }] }'
)


def test_filename_pattern_replaces_the_sidecar(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        dest=PATTERN,
        defaults=PATTERN_DEFAULTS,
        tables=FROM_FILENAME,
        sidecar_timeout_seconds=1,
    )
    with running(config) as r:
        r.drop("0012345_consent_20261121.pdf", pdf)
        r.drop("Smith John.pdf", pdf)
        jobs = {j.original_name: j for j in r.finished(2)}
        note = (r.failed / "Smith John.pdf.error.txt").read_text()
    good = jobs["0012345_consent_20261121.pdf"]
    assert good.state == JobState.DONE, good.last_error
    body = _only_body(sandbox)
    assert body["Patient"]["Identifiers"] == [{"ID": "0012345", "IDType": "MR"}]
    assert body["Media"]["DocumentType"] == "consent"
    assert base64.b64decode(body["Media"]["FileContents"]) == pdf
    assert jobs["Smith John.pdf"].state == JobState.FAILED
    assert "its file name does not match the pattern this folder expects" in note


# -- file types ------------------------------------------------------------------------

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00"
    b"\x00\x00IEND\xaeB`\x82"
)


def test_file_type_comes_from_content_and_must_agree_with_name_and_destination(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    config = write_config(tmp_path, sandbox, dest={"accepted_types": ["PDF", "PNG", "TXT"]})
    text = b"Referral letter\r\nPlease see the attached.\r\n"
    with running(config) as r:
        r.drop("photo.png", PNG, sample_sidecar())
        r.drop("letter.txt", text, sample_sidecar())
        r.drop("scan.pdf", PNG, sample_sidecar())  # a PNG named .pdf
        r.drop("fax.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", sample_sidecar())
        jobs = {j.original_name: j for j in r.finished(4)}
        mismatch = (r.failed / "scan.pdf.error.txt").read_text()
        refused = (r.failed / "fax.gif.error.txt").read_text()
    assert jobs["photo.png"].state == JobState.DONE
    assert jobs["letter.txt"].state == JobState.DONE
    sent = {b["Media"]["FileName"]: b["Media"] for b in (x.body for x in sandbox.state.received())}
    assert sent["photo.png"]["FileType"] == "PNG"
    assert sent["letter.txt"]["FileType"] == "TXT"
    assert base64.b64decode(sent["letter.txt"]["FileContents"]) == text
    assert "the file's name ends in .pdf but its content is a PNG file" in mismatch
    assert "the file is a GIF file; this folder takes only PDF, PNG, TXT" in refused


# -- auth methods and wrong credentials ----------------------------------------------


def test_legacy_api_key_auth(tmp_path: Path, sandbox: Sandbox, pdf: bytes) -> None:
    secret = tmp_path / "redox-secret"
    secret.write_text(LEGACY_SECRET + "\n")
    secret.chmod(0o600)
    redox = {"auth": "legacy", "api_key": LEGACY_KEY, "secret_file": str(secret)}
    config = write_config(tmp_path, sandbox, redox=redox)
    with running(config) as r:
        r.drop("a.pdf", pdf, sample_sidecar())
        r.drop("b.pdf", pdf, sample_sidecar(mrn="0000000002"))  # another patient: no duplicate
        jobs = r.finished(2)
    assert {j.state for j in jobs} == {JobState.DONE}
    assert sandbox.state.token_requests == 1  # one token, cached for both documents
    bodies = [x.body for x in sandbox.state.received()]
    assert sorted(base64.b64decode(b["Media"]["FileContents"]) for b in bodies) == [pdf, pdf]


def test_wrong_legacy_secret_pauses_then_resumes_when_fixed(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    secret = tmp_path / "redox-secret"
    secret.write_text("not-the-secret")
    redox = {"auth": "legacy", "api_key": LEGACY_KEY, "secret_file": str(secret)}
    config = write_config(tmp_path, sandbox, redox=redox)
    with running(config) as r:
        r.drop("a.pdf", pdf, sample_sidecar())
        wait_until(lambda: r.queue.pauses())
        (pause,) = r.queue.pauses()
        assert pause.kind == "auth"
        assert pause.reason == "Redox authenticate refused the credentials (HTTP 401)"
        status = _status(config)
        assert "PAUSED consents (auth" in status
        assert "refused the credentials (HTTP 401)" in status
        assert "Documents wait in the queue." in status
        assert "not-the-secret" not in status
        (job,) = r.jobs()
        assert job.state in (JobState.QUEUED, JobState.LEASED) and job.attempts == 0
        assert not any(r.failed.iterdir())
        # The admin fixes the credential: the next probe succeeds and the queue drains.
        sandbox.state.register_legacy_key(LEGACY_KEY, "not-the-secret")
        (job,) = r.finished(1)
        assert job.state == JobState.DONE
        wait_until(lambda: not r.queue.pauses())


def test_wrong_jwt_key_pauses_the_destination(tmp_path: Path, sandbox: Sandbox, pdf: bytes) -> None:
    unregistered, _ = generate_keypair()
    key = tmp_path / "other-key.pem"
    key.write_bytes(unregistered)
    key.chmod(0o600)
    config = write_config(tmp_path, sandbox, redox={"private_key_file": str(key)})
    with running(config) as r:
        r.drop("a.pdf", pdf, sample_sidecar())
        wait_until(lambda: r.queue.pauses())
        status = _status(config)
        (job,) = r.jobs()
    assert "PAUSED consents (auth" in status
    assert "Redox token endpoint refused the credentials (HTTP 401)" in status
    # The pause re-probes every 0.1 s here: the job may be leased for a probe right now.
    assert job.state in (JobState.QUEUED, JobState.LEASED) and job.attempts == 0
    assert sandbox.state.received() == []
    assert not any((tmp_path / "consents" / "failed").iterdir())


# -- FHIR R4 Media --------------------------------------------------------------------


def _fhir_config(tmp_path: Path, sandbox: Sandbox, **kw: Any) -> Path:
    fhir = sandbox.fhir_table(log_cdata="site=test-clinic", log_cdata_format="kv")
    return write_config(tmp_path, sandbox, model="FHIR", fhir=fhir | kw.pop("fhir", {}), **kw)


def test_fhir_media_end_to_end(tmp_path: Path, sandbox: Sandbox, pdf: bytes) -> None:
    config = _fhir_config(tmp_path, sandbox)
    with running(config) as r:
        r.drop("consent.pdf", pdf, sample_sidecar(model="FHIR"))
        (job,) = r.finished(1)
    assert job.state == JobState.DONE, job.last_error
    (received,) = sandbox.state.fhir_received()
    resource = received.body
    media = FhirMedia.model_validate(resource)  # a real FHIR model library
    assert media.status == "completed"
    assert media.subject.identifier.value == "0000000001"
    assert media.subject.identifier.system == "urn:oid:2.16.840.1.113883.3.0"  # the sidecar's URI
    assert media.identifier[0].value == f"urn:uuid:{job.document_id}"
    content = resource["content"]
    data = base64.b64decode(content["data"])
    assert data == pdf and content["size"] == len(pdf)
    assert base64.b64decode(content["hash"]) == hashlib.sha1(pdf, usedforsecurity=False).digest()
    assert content["contentType"] == "application/pdf" and content["title"] == "Consent Form"
    assert received.headers["if-none-exist"].startswith("identifier=urn:ietf:rfc:3986")
    assert received.headers["log-cdata"] == "site=test-clinic"
    assert received.headers["log-cdata-format"] == "kv"
    assert received.headers["content-type"].startswith("application/fhir+json")
    assert job.remote_id == received.resource_id
    assert sandbox.state.fhir_token_requests == 1


def test_fhir_takes_the_full_redox_sidecar(tmp_path: Path, sandbox: Sandbox, pdf: bytes) -> None:
    """The sidecar a scanner writes for Redox Media (Demographics, Visit, Provider)
    files on a FHIR destination: encounter, operator and type come from it, the
    demographics are checked but not sent; a misspelt key still fails, by name."""
    fhir = {"visit_identifier_system": "urn:oid:1.2.3.4.5"}
    config = _fhir_config(tmp_path, sandbox, fhir=fhir)
    full = sample_sidecar(model="Media", first="CANARYFIRST", last="CANARYLAST")
    typo = sample_sidecar(model="Media")
    typo["Visit"] = {"VisitNumbr": "1234"}
    with running(config) as r:
        r.drop("consent.pdf", pdf, full)
        r.drop("typo.pdf", pdf, typo)
        jobs = {j.original_name: j for j in r.finished(2)}
        note = (r.failed / "typo.pdf.error.txt").read_text()
    assert jobs["consent.pdf"].state == JobState.DONE, jobs["consent.pdf"].last_error
    assert jobs["typo.pdf"].state == JobState.FAILED
    assert "Visit.VisitNumbr is not a field Redox knows (check its spelling)" in note
    (received,) = sandbox.state.fhir_received()
    media = FhirMedia.model_validate(received.body)
    assert media.encounter.identifier.system == "urn:oid:1.2.3.4.5"
    assert media.encounter.identifier.value == "1234"
    assert media.operator.identifier.system == "http://hl7.org/fhir/sid/us-npi"
    assert media.operator.identifier.value == "4356789876"
    assert media.type.text == "Consent Form" and media.content.title == "Consent Form"
    # IDType "MR" is not a URI: the admin's patient_identifier_system is used
    assert media.subject.identifier.system == "urn:oid:2.16.840.1.113883.3.9999"
    text = json.dumps(received.body)
    assert "CANARY" not in text and "2008-01-06" not in text


def test_fhir_resend_after_unknown_outcome_creates_no_second_resource(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    """A 504 makes chartdrop resend with the same identifier; and a resend of a
    resource the server did store (its answer lost) finds it via If-None-Exist."""
    config = _fhir_config(tmp_path, sandbox)
    sandbox.state.set_faults(fail_next=[504], retry_after="0")
    with running(config) as r:
        r.drop("consent.pdf", pdf, sample_sidecar(model="FHIR"))
        (job,) = r.finished(1)
    assert job.state == JobState.DONE and job.attempts == 2
    ident = f"urn:uuid:{job.document_id}"
    tries = [a for a in sandbox.state.attempts if a.path == "/fhir/r4/Media"]
    assert [(a.status, a.document_id) for a in tries] == [(504, ident), (201, ident)]

    def stored() -> list[dict[str, Any]]:
        return [x for x in sandbox.state.fhir_resources() if x["identifier"][0]["value"] == ident]

    assert len(stored()) == 1
    from daemon.config import load_settings
    from daemon.fhir import FhirClient
    from daemon.http import make_http_client

    settings = load_settings(config)
    resource = {k: v for k, v in stored()[0].items() if k not in ("id", "meta")}
    with make_http_client(settings) as http:
        again = FhirClient(settings.fhir, http).create_media(settings.destination[0], resource)
    assert (again.status, again.log_id) == (200, job.remote_id)
    assert len(stored()) == 1


def test_fhir_wrong_client_secret_pauses_the_destination(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-it")
    config = _fhir_config(tmp_path, sandbox, fhir={"client_secret_file": str(wrong)})
    with running(config) as r:
        r.drop("a.pdf", pdf, sample_sidecar(model="FHIR"))
        wait_until(lambda: r.queue.pauses())
        status = _status(config)
        (job,) = r.jobs()
    assert "PAUSED consents (auth" in status
    assert "FHIR token endpoint refused the credentials (HTTP 401)" in status
    assert "not-it" not in status
    assert job.attempts == 0 and job.state in (JobState.QUEUED, JobState.LEASED)
    assert sandbox.state.fhir_received() == []
    assert not any((tmp_path / "consents" / "failed").iterdir())


def test_fhir_sidecar_with_unknown_key_fails_naming_it(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    config = _fhir_config(tmp_path, sandbox)
    sidecar = sample_sidecar(model="FHIR")
    sidecar["Media"]["DocumentTyp"] = "typo"
    with running(config) as r:
        r.drop("a.pdf", pdf, sidecar)
        (job,) = r.finished(1)
        note = (r.failed / "a.pdf.error.txt").read_text()
    assert job.state == JobState.FAILED
    assert "Media.DocumentTyp is not a field Redox knows (check its spelling)" in note


def test_legacy_token_is_renewed_with_the_refresh_token_then_by_authenticating(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes
) -> None:
    from daemon.config import load_settings
    from daemon.http import make_http_client
    from daemon.redox import RedoxClient

    secret = tmp_path / "redox-secret"
    secret.write_text(LEGACY_SECRET)
    redox = {"auth": "legacy", "api_key": LEGACY_KEY, "secret_file": str(secret)}
    settings = load_settings(write_config(tmp_path, sandbox, redox=redox))
    with make_http_client(settings) as http:
        client = RedoxClient(settings.redox, http)
        first = client.token()
        assert sandbox.state.token_requests == 1 and sandbox.state.refresh_requests == 0
        sandbox.state.revoke_tokens()  # the access token is rejected: a 401 renews it
        client.invalidate(first)
        second = client.token()
        assert second != first
        assert sandbox.state.refresh_requests == 1 and sandbox.state.token_requests == 1
        sandbox.state.revoke_tokens()
        sandbox.state.revoke_refresh_tokens()  # refresh token refused too: authenticate again
        client.invalidate(second)
        client.token()
        assert sandbox.state.refresh_requests == 2 and sandbox.state.token_requests == 2
        # And a real send with a token the server forgot: 401, renewed once, delivered.
        body = {"Meta": {"DataModel": "Media"}}
        sandbox.state.revoke_tokens()
        with pytest.raises(PermanentDeliveryError):  # the renewed token works; the body is refused
            client.send(body)
        assert sandbox.state.refresh_requests == 3
