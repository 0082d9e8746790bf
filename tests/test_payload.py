"""Building and validating the Redox Media body; a second, independent check
against the JSON schemas in ../shared/redox-schemas/."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import load_schema

from daemon.config import Destination, RedoxSettings
from daemon.errors import SidecarError
from daemon.payload import FileFacts, build_media, check_sidecar, merge, validate_media
from daemon.samples import sample_sidecar


def _dest(**defaults: Any) -> Destination:
    return Destination(
        name="consents",
        inbox=Path("/in"),
        done=Path("/done"),
        failed=Path("/failed"),
        redox_destination_id="dest-1",
        defaults=defaults,
    )


FACTS = FileFacts("scan.pdf", "PDF", "eA==", datetime(2026, 11, 21, 9, 30, tzinfo=UTC))
REDOX = RedoxSettings(source_id="src-1", test=True)


def _body(sidecar: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return build_media(
        dest=_dest(**defaults), redox=REDOX, sidecar=sidecar, document_id="doc-1", facts=FACTS
    )


def test_merge_sidecar_wins_and_objects_merge() -> None:
    defaults = {"Media": {"Availability": "Available", "Provider": {"ID": "1", "IDType": "NPI"}}}
    sidecar = {"Media": {"Provider": {"ID": "2"}}, "Visit": {"VisitNumber": "9"}}
    assert merge(defaults, sidecar) == {
        "Media": {"Availability": "Available", "Provider": {"ID": "2", "IDType": "NPI"}},
        "Visit": {"VisitNumber": "9"},
    }
    assert defaults["Media"]["Provider"]["ID"] == "1"  # inputs untouched


def test_filled_fields() -> None:
    body = _body(sample_sidecar(), Media={"Availability": "Available"})
    validate_media(body, sample_sidecar())
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


def test_sidecar_document_id_and_file_name_are_kept() -> None:
    sidecar = sample_sidecar()
    sidecar["Media"].update(DocumentID="ext-42", FileName="Annual visit")
    body = _body(sidecar, Media={"Availability": "Available"})
    assert body["Media"]["DocumentID"] == "ext-42"
    assert body["Media"]["FileName"] == "Annual visit"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda s: s["Patient"].pop("Identifiers"),
            "Patient.Identifiers (the patient's ID numbers, e.g. the MRN) is required but missing",
        ),
        (
            lambda s: s["Patient"]["Identifiers"][0].update(ID=1),
            "Patient.Identifiers[0].ID (the patient's ID number, e.g. the MRN) must be text",
        ),
        (
            lambda s: s["Media"].update(Provider="x"),
            "Media.Provider (the responsible provider) must be an object",
        ),
        (lambda s: s.update(Visits={}), "Visits is not a field Redox knows"),
        (
            lambda s: s["Media"].update(FileContents="x"),
            "Media.FileContents is filled in by chartdrop",
        ),
        (lambda s: s.update(Meta={}), "Meta is filled in by chartdrop"),
    ],
)
def test_each_problem_is_named_in_plain_words(mutate: Any, expected: str) -> None:
    sidecar = sample_sidecar(first="CANARYFIRST")
    mutate(sidecar)
    with pytest.raises(SidecarError) as info:
        check_sidecar(
            dest=_dest(Media={"Availability": "Available"}),
            redox=REDOX,
            sidecar=sidecar,
            file_name="x.pdf",
        )
    assert any(expected in p for p in info.value.problems), info.value.problems
    assert "CANARYFIRST" not in str(info.value)


def test_every_problem_at_once() -> None:
    sidecar = sample_sidecar()
    del sidecar["Patient"]["Identifiers"]
    sidecar["Media"]["Typo"] = 1
    sidecar["Meta"] = {}
    with pytest.raises(SidecarError) as info:
        check_sidecar(dest=_dest(), redox=REDOX, sidecar=sidecar, file_name="x.pdf")
    text = "\n".join(info.value.problems)
    for expected in ("Patient.Identifiers", "Media.Typo", "Meta is filled", "Media.Availability"):
        assert expected in text


def test_built_body_validates_against_the_redox_json_schema() -> None:
    schema = load_schema("media/new.json")
    body = _body(sample_sidecar(), Media={"Availability": "Available"})
    jsonschema.Draft4Validator(schema).validate(body)
    body["Media"].pop("DocumentID")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(body)
