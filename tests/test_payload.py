"""Building and validating the Redox bodies (Media, Notes, Results; New, Replace,
Delete) and the FHIR Media resource; a second, independent check against the
Redox JSON schemas (tests/redox-schemas/) and fhir.resources' R4B Media."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import destination, load_schema
from fhir.resources.R4B.media import Media as FhirMedia

from daemon import fhir
from daemon.config import Destination, FhirSettings, RedoxSettings, Settings
from daemon.errors import SidecarError
from daemon.outgoing import check_sidecar, effective_sidecar
from daemon.payload import (
    FileFacts,
    attach,
    build_redox,
    merge,
    sidecar_from_filename,
    validate_redox,
)
from daemon.samples import sample_sidecar

FACTS = FileFacts("scan.pdf", "PDF", datetime(2026, 11, 21, 9, 30, tzinfo=UTC))
REDOX = RedoxSettings(source_id="src-1", test=True)
SCHEMAS = {
    ("Media", "New"): "media/new.json",
    ("Media", "Replace"): "media/replace.json",
    ("Media", "Delete"): "media/delete.json",
    ("Notes", "New"): "notes/new.json",
    ("Notes", "Replace"): "notes/replace.json",
    ("Notes", "Delete"): "notes/delete.json",
    ("Results", "New"): "results/new.json",
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "Media": {"Media": {"Availability": "Available"}},
    "Notes": {},
    "Results": {},
    "FHIR": {},
}


def _dest(model: str = "Media", **extra: Any) -> Destination:
    fields: dict[str, Any] = {
        "name": "consents",
        "inbox": Path("/in"),
        "done": Path("/done"),
        "failed": Path("/failed"),
        "model": model,
        "defaults": DEFAULTS[model],
    }
    if model != "FHIR":
        fields["redox_destination_id"] = "dest-1"
    return destination(**(fields | extra))


def _settings(model: str = "Media", **extra: Any) -> Settings:
    dest = _dest(model, **extra).model_dump()
    return Settings(
        redox=REDOX,
        fhir=FhirSettings(
            base_url="http://127.0.0.1:1/fhir",
            token_url="http://127.0.0.1:1/token",
            client_secret_file=Path("/nonexistent"),
        ),
        destination=[dest],
    )


def _body(model: str, sidecar: dict[str, Any], facts: FileFacts | None = FACTS) -> dict[str, Any]:
    return build_redox(
        dest=_dest(model), redox=REDOX, sidecar=sidecar, document_id="doc-1", facts=facts
    )


def _problems(model: str, sidecar: dict[str, Any], **kw: Any) -> list[str]:
    settings = _settings(model, **kw.pop("dest", {}))
    with pytest.raises(SidecarError) as info:
        check_sidecar(
            dest=settings.destination[0],
            settings=settings,
            sidecar=sidecar,
            file_name=kw.pop("file_name", "x.pdf"),
            **kw,
        )
    assert "CANARY" not in str(info.value)
    return info.value.problems


def test_merge_sidecar_wins_objects_and_lists_of_objects_merge() -> None:
    defaults = {
        "Media": {"Availability": "Available", "Provider": {"ID": "1", "IDType": "NPI"}},
        "Orders": [{"Status": "Resulted", "Results": [{"Status": "Final"}]}],
    }
    sidecar = {
        "Media": {"Provider": {"ID": "2"}},
        "Visit": {"VisitNumber": "9"},
        "Orders": [{"ID": "o1", "Results": [{"Code": "c"}, {"Code": "d"}]}],
    }
    assert merge(defaults, sidecar) == {
        "Media": {"Availability": "Available", "Provider": {"ID": "2", "IDType": "NPI"}},
        "Visit": {"VisitNumber": "9"},
        "Orders": [
            {
                "ID": "o1",
                "Status": "Resulted",
                "Results": [{"Code": "c", "Status": "Final"}, {"Code": "d"}],
            }
        ],
    }
    assert defaults["Media"]["Provider"]["ID"] == "1"  # inputs untouched


def test_media_filled_fields() -> None:
    body = _body("Media", sample_sidecar())
    validate_redox(body, sample_sidecar(), "Media")
    meta = body["Meta"]
    assert meta["DataModel"] == "Media" and meta["EventType"] == "New"
    assert meta["Test"] is True
    assert meta["Source"] == {"ID": "src-1"}
    assert meta["Destinations"] == [{"ID": "dest-1"}]
    assert meta["EventDateTime"].endswith("Z")
    media = body["Media"]
    assert media["FileType"] == "PDF" and media["FileName"] == "scan.pdf"
    assert media["DocumentID"] == "doc-1"
    assert media["CreationDateTime"] == "2026-11-21T09:30:00.000Z"


def test_notes_fill_content_type_and_contents_not_file_type() -> None:
    body = _body("Notes", sample_sidecar(model="Notes"))
    attach(body, "Notes", "aGVsbG8=")
    validate_redox(body, sample_sidecar(model="Notes"), "Notes")
    note = body["Note"]
    assert note["ContentType"] == "Base64 Encoded"
    assert note["FileContents"] == "aGVsbG8="
    assert note["FileName"] == "scan.pdf" and note["DocumentID"] == "doc-1"
    assert "FileType" not in note  # Redox's Notes schema has no FileType


def test_results_carry_the_file_as_encapsulated_data() -> None:
    body = _body("Results", sample_sidecar(model="Results"))
    attach(body, "Results", "aGVsbG8=")
    validate_redox(body, sample_sidecar(model="Results"), "Results")
    result = body["Orders"][0]["Results"][0]
    assert result == {
        "Code": "11502-2",
        "Codeset": "LOINC",
        "Status": "Final",
        "Value": "aGVsbG8=",
        "ValueType": "Encapsulated Data",
        "FileType": "PDF",
    }


def test_results_required_fields_can_come_from_defaults() -> None:
    sidecar = sample_sidecar(model="Results")
    sidecar["Orders"] = [{"ID": "ORD-9"}]
    defaults = {"Orders": [{"Status": "Resulted", "Results": [{"Code": "PDF", "Status": "Final"}]}]}
    settings = _settings("Results", defaults=defaults)
    check_sidecar(
        dest=settings.destination[0], settings=settings, sidecar=sidecar, file_name="lab.pdf"
    )
    problems = _problems("Results", sidecar)
    assert (
        "Orders[0].Status (the order's status, e.g. Resulted) is required but missing" in problems
    )
    assert any(p.startswith("Orders[0].Results[0].Code (the result's code") for p in problems)


@pytest.mark.parametrize(("model", "event"), sorted(SCHEMAS))
def test_every_model_and_event_validates_against_its_json_schema(model: str, event: str) -> None:
    sidecar = sample_sidecar(model=model)
    if event != "New":
        sidecar["EventType"] = event
    section = {"Media": "Media", "Notes": "Note"}.get(model)
    if event == "Replace" and section:
        sidecar[section]["OriginalDocumentID"] = "doc-0"
    if event == "Delete" and model == "Media":
        sidecar["Media"].update(FileType="PDF", FileName="scan.pdf")
    facts = None if event == "Delete" else FACTS
    body = _body(model, sidecar, facts)
    if facts is not None:
        attach(body, model, "aGVsbG8=")
    validate_redox(body, sidecar, model, has_file=facts is not None)
    assert body["Meta"]["EventType"] == event and "EventType" not in body
    validator = jsonschema.Draft4Validator(load_schema(SCHEMAS[model, event]))
    validator.validate(body)
    if section:
        body[section].pop("DocumentID")
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(body)


# -- one test per bad-sidecar class, with the text staff would see -------------


@pytest.mark.parametrize(
    ("model", "mutate", "expected"),
    [
        (
            "Media",
            lambda s: s["Patient"].pop("Identifiers"),
            "Patient.Identifiers (the patient's ID numbers, e.g. the MRN) is required but missing",
        ),
        (
            "Notes",
            lambda s: s["Note"]["Provider"].pop("ID"),
            "Note.Provider.ID (the responsible provider's ID, e.g. the NPI) "
            "is required but missing",
        ),
        (
            "Media",
            lambda s: s["Patient"]["Identifiers"][0].update(ID=1),
            "Patient.Identifiers[0].ID (the patient's ID number, e.g. the MRN) must be text",
        ),
        (
            "Media",
            lambda s: s["Media"].update(Provider="CANARY"),
            "Media.Provider (the responsible provider) must be an object { ... }",
        ),
        (
            "Media",
            lambda s: s.update(Visits={}),
            "Visits is not a field Redox knows (check its spelling)",
        ),
        (
            "Notes",
            lambda s: s["Note"].update(DocType="x"),
            "Note.DocType is not a field Redox knows (check its spelling)",
        ),
        (  # patient data written as a key (an MRN, a name): located, never shown
            "Media",
            lambda s: s["Patient"]["Identifiers"][0].update({"0000000001": "MR"}),
            "Patient.Identifiers[0].(a key that is not a field name: not shown, it may hold"
            " patient data) is not a field Redox knows (check its spelling)",
        ),
        (
            "Media",
            lambda s: s["Patient"]["Demographics"].update(Timothy={}),
            "Patient.Demographics.(a key that is not a field name: not shown, it may hold"
            " patient data) is not a field Redox knows (check its spelling)",
        ),
        (
            "Media",
            lambda s: s["Patient"]["Demographics"].update(Bixby="x"),
            "Patient.Demographics.(a key that is not a field name: not shown, it may hold"
            " patient data) is not a field Redox knows (check its spelling)",
        ),
        (
            "Media",
            lambda s: s.update(EventType="Replace"),
            "Media.OriginalDocumentID (the DocumentID of the document this one replaces) "
            "is required but missing",
        ),
        (
            "Notes",
            lambda s: s.update(EventType="Replace"),
            "Note.OriginalDocumentID (the DocumentID of the note this one replaces) "
            "is required but missing",
        ),
        (
            "Media",
            lambda s: s.update(EventType="Delete"),
            "EventType Delete takes no document: drop the sidecar alone, without the file",
        ),
        (
            "Media",
            lambda s: s.update(EventType="Update"),
            "EventType must be one of New, Replace or Delete",
        ),
        (
            "Results",
            lambda s: s.update(EventType="Replace"),
            "EventType Replace is not possible for Results destinations (only New)",
        ),
        (
            "Media",
            lambda s: s["Media"].update(FileContents="x"),
            "Media.FileContents is filled in by chartdrop from the file; "
            "remove it from the sidecar",
        ),
        (
            "Results",
            lambda s: s["Orders"][0]["Results"][0].update(Value="x"),
            "Orders[0].Results[0].Value is filled in by chartdrop from the file; "
            "remove it from the sidecar",
        ),
        (
            "Media",
            lambda s: s.update(Meta={}),
            "Meta is filled in by chartdrop; remove it from the sidecar",
        ),
        (
            "FHIR",
            lambda s: s["Patient"].update(Demographic={"FirstName": "CANARY"}),
            "Patient.Demographic is not a field Redox knows (check its spelling)",
        ),
        (
            "FHIR",
            lambda s: s["Patient"].update(Demographics={"DOB": "06/01/2008"}),
            'Patient.Demographics.DOB must be a date written "YYYY-MM-DD"',
        ),
        (
            "FHIR",
            lambda s: s["Media"].update(CreationDateTime="2026-02-30T10:00:00Z"),
            "Media.CreationDateTime must be a date and time with its zone, "
            'e.g. "2026-11-21T14:30:00Z"',
        ),
        (
            "FHIR",
            lambda s: s.update(Visit={"VisitNumber": 1234}),
            "Visit.VisitNumber must be text",
        ),
        (
            "FHIR",
            lambda s: s["Media"].update(Provider={"ID": "123", "IDType": "EPIC"}),
            "Media.Provider.IDType must be NPI or the identifier system as a URI "
            "for a FHIR destination",
        ),
        (
            "FHIR",
            lambda s: s["Media"].update(FileContents="x"),
            "Media.FileContents is filled in by chartdrop from the file; "
            "remove it from the sidecar",
        ),
        (
            "FHIR",
            lambda s: s["Patient"]["Identifiers"][0].update(IDType="MR"),
            "Patient.Identifiers[0].IDType must be the identifier system as a URI "
            "(e.g. urn:oid:...), or the admin sets [fhir].patient_identifier_system",
        ),
        (
            "FHIR",
            lambda s: s["Patient"]["Identifiers"][0].pop("ID"),
            "Patient.Identifiers[0].ID is required but missing",
        ),
    ],
)
def test_each_bad_sidecar_class_is_named_in_plain_words(
    model: str, mutate: Any, expected: str
) -> None:
    sidecar = sample_sidecar(first="CANARYFIRST", model=model)
    mutate(sidecar)
    assert expected in _problems(model, sidecar)


def test_a_delete_sidecar_alone_is_valid_and_a_new_one_alone_is_not() -> None:
    sidecar = sample_sidecar(model="Notes") | {"EventType": "Delete"}
    settings = _settings("Notes")
    check_sidecar(
        dest=settings.destination[0],
        settings=settings,
        sidecar=sidecar,
        file_name="x.pdf.json",
        redox_type=None,
    )
    sidecar["EventType"] = "New"
    assert "EventType New needs the document file next to the sidecar" in _problems(
        "Notes", sidecar, redox_type=None
    )


def test_every_problem_at_once() -> None:
    sidecar = sample_sidecar()
    del sidecar["Patient"]["Identifiers"]
    sidecar["Media"]["Typo"] = 1
    sidecar["Meta"] = {}
    settings = _settings("Media", defaults={})
    with pytest.raises(SidecarError) as info:
        check_sidecar(
            dest=settings.destination[0], settings=settings, sidecar=sidecar, file_name="x.pdf"
        )
    text = "\n".join(info.value.problems)
    for expected in ("Patient.Identifiers", "Media.Typo", "Meta is filled", "Media.Availability"):
        assert expected in text


# -- sidecar-less documents ------------------------------------------------------

PATTERN = {
    "filename_pattern": r"(?P<mrn>[0-9]+)_(?P<doctype>[a-z]+)_(?P<date>[0-9]{8})\.pdf",
    "from_filename": {
        "mrn": "Patient.Identifiers[0].ID",
        "doctype": "Media.DocumentType",
        "date": "Visit.VisitNumber",
    },
}


def test_filename_pattern_supplies_the_fields() -> None:
    dest = _dest("Media", **PATTERN)
    fields = sidecar_from_filename(dest, "0012345_consent_20261121.pdf")
    assert fields == {
        "Patient": {"Identifiers": [{"ID": "0012345"}]},
        "Media": {"DocumentType": "consent"},
        "Visit": {"VisitNumber": "20261121"},
    }
    assert sidecar_from_filename(dest, "scan 001.pdf") is None
    # A sidecar, when present, wins over the name's fields.
    merged = effective_sidecar(
        dest, {"Media": {"DocumentType": "Consent Form"}}, "1_x_20260101.pdf"
    )
    assert merged["Media"]["DocumentType"] == "Consent Form"
    assert merged["Patient"]["Identifiers"][0]["ID"] == "1"


def test_filename_not_matching_the_pattern_is_refused_with_the_reason() -> None:
    dest = _dest("Media", **PATTERN)
    with pytest.raises(SidecarError) as info:
        effective_sidecar(dest, None, "Smith John consent.pdf")
    assert info.value.problems == [
        "no sidecar (.json) came with the document, and its file name does not match the "
        "pattern this folder expects (ask IT for the naming rule)"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"filename_pattern": "([0-9]+"}, "not a valid regular expression"),
        ({"filename_pattern": "[0-9]+"}, "needs at least one named group"),
        (
            {"filename_pattern": "(?P<mrn>[0-9]+)", "from_filename": {"mrn": "Patient..ID"}},
            "is not a field path",
        ),
        (
            {"filename_pattern": "(?P<mrn>[0-9]+)", "from_filename": {"nrm": "Patient.X"}},
            "from_filename names groups the pattern does not have: nrm",
        ),
        ({"filename_pattern": "(?P<mrn>[0-9]+)"}, "groups not mapped in from_filename: mrn"),
    ],
)
def test_bad_patterns_are_config_errors(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _dest("Media", **extra)


# -- FHIR ----------------------------------------------------------------------------


def test_fhir_media_resource_validates_with_fhir_resources() -> None:
    data = b"%PDF-1.4 hello %%EOF"
    settings = FhirSettings(patient_identifier_system="urn:oid:1.2.3")
    sidecar = sample_sidecar(model="FHIR")
    sidecar["Patient"]["Identifiers"][0]["IDType"] = "MR"  # not a URI: the config's system
    parsed = fhir.parse_sidecar(sidecar, settings)
    resource = fhir.build_media(
        settings=settings,
        sidecar=parsed,
        document_id="1B4E28BA-2FA1-11D2-883F-0016D3CCA427",
        file_name="scan.pdf",
        mime="application/pdf",
        data_b64=base64.b64encode(data).decode(),
        size=len(data),
        sha1_b64=base64.b64encode(hashlib.sha1(data).digest()).decode(),
        created="2026-11-21T09:30:00.000Z",
    )
    media = FhirMedia.model_validate(resource)
    assert media.status == "completed"
    assert media.subject.identifier.system == "urn:oid:1.2.3"
    assert media.subject.identifier.value == "0000000001"
    assert media.identifier[0].system == "urn:ietf:rfc:3986"
    assert media.identifier[0].value == "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert media.content.contentType == "application/pdf" and media.content.size == len(data)
    assert media.content.hash == hashlib.sha1(data).digest()
    assert media.content.title == "Consent Form"
    assert fhir.if_none_exist(resource) == (
        "identifier=urn:ietf:rfc:3986%7Curn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    )
    resource["content"]["size"] = "many"
    with pytest.raises(SidecarError, match=r"content\.size"):
        fhir.validate_media(resource)


# -- the hot path: one validation per job, the file spliced into the JSON --------


def test_merge_result_shares_no_container_with_its_inputs() -> None:
    defaults = {"Media": {"Provider": {"ID": "1"}}, "Tags": [{"a": ["x"]}]}
    sidecar = {"Media": {"Availability": "Available"}, "Extra": [{"b": {"c": "d"}}]}
    out = merge(defaults, sidecar)
    out["Media"]["Provider"]["ID"] = "changed"
    out["Tags"][0]["a"].append("y")
    out["Extra"][0]["b"]["c"] = "changed"
    assert defaults == {"Media": {"Provider": {"ID": "1"}}, "Tags": [{"a": ["x"]}]}
    assert sidecar == {"Media": {"Availability": "Available"}, "Extra": [{"b": {"c": "d"}}]}
    assert list(out) == ["Media", "Tags", "Extra"]  # defaults' keys first, as before


def test_encode_body_is_httpx_json_with_the_file_spliced_in() -> None:
    import json

    from daemon.redox import Embedded, encode_body

    data = bytes(range(256)) * 40
    body = _body("Media", sample_sidecar(first="Zoë"))  # non-ASCII stays UTF-8
    expected = dict(body, Media=dict(body["Media"], FileContents=base64.b64encode(data).decode()))
    embedded = Embedded("chartdrop-file-1234", base64.b64encode(data))
    attach(body, "Media", embedded.marker)
    raw = encode_body(body, embedded)
    assert json.loads(raw) == expected
    assert raw == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    body["Media"]["Note"] = embedded.marker  # a second copy: refused, never guessed
    with pytest.raises(ValueError, match="exactly once"):
        encode_body(body, embedded)
    with pytest.raises(ValueError, match="exactly once"):
        encode_body(_body("Media", sample_sidecar()), embedded)


def test_a_body_is_validated_once_per_config_and_never_passes_a_new_config_unchecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import daemon.outgoing as outgoing

    calls: list[str] = []
    real = outgoing.validate_redox

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append("validate")
        real(*args, **kwargs)

    monkeypatch.setattr(outgoing, "validate_redox", counting)
    settings = _settings()
    sidecar = sample_sidecar(mrn="0000000777")
    for document_id in ("11111111-1111-4111-8111-111111111111", "doc-2"):
        outgoing.redox_body(
            dest=settings.destination[0], settings=settings, sidecar=sidecar,
            document_id=document_id, facts=FACTS,
        )  # fmt: skip
    assert calls == ["validate"]  # intake validated it; delivery does not again
    other = dict(sidecar, Visit={"VisitNumber": 1234})  # a number is not text
    with pytest.raises(SidecarError):
        outgoing.redox_body(
            dest=settings.destination[0], settings=settings, sidecar=other,
            document_id="doc-3", facts=FACTS,
        )  # fmt: skip
    # After a reload (new config objects) with defaults that make the body invalid,
    # the same sidecar is validated again and refused.
    reloaded = _settings(defaults={"Media": {"Availabilty": "Available"}})
    with pytest.raises(SidecarError, match="Availabilty"):
        outgoing.redox_body(
            dest=reloaded.destination[0], settings=reloaded, sidecar=sidecar,
            document_id="doc-4", facts=FACTS,
        )  # fmt: skip
    assert calls == ["validate"] * 3
