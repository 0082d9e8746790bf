"""Synthetic sample documents and sidecars for the demo and the tests.

Every patient here is invented (the example patient from Redox's docs).
"""

from __future__ import annotations

import os
from typing import Any


def sample_pdf(title: str, *, padding: int = 0) -> bytes:
    """A small valid one-page PDF; ``padding`` adds an embedded stream of random bytes."""
    text = f"BT /F1 24 Tf 72 700 Td ({title}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    if padding:
        blob = os.urandom(padding)
        objects.append(b"<< /Length %d >>\nstream\n" % len(blob) + blob + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def sample_sidecar(
    *,
    mrn: str = "0000000001",
    first: str = "Timothy",
    last: str = "Bixby",
    document_type: str = "Consent Form",
    model: str = "Media",
) -> dict[str, Any]:
    """A valid sidecar for a destination of ``model`` (Media, Notes, Results or FHIR)."""
    patient = {
        "Identifiers": [{"ID": mrn, "IDType": "MR"}],
        "Demographics": {"FirstName": first, "LastName": last, "DOB": "2008-01-06"},
    }
    provider = {"ID": "4356789876", "IDType": "NPI"}
    if model == "FHIR":  # the Redox Media sidecar, with the MRN's system as a URI
        patient["Identifiers"] = [{"ID": mrn, "IDType": "urn:oid:2.16.840.1.113883.3.0"}]
        media = {"DocumentType": document_type, "Provider": provider}
        return {"Patient": patient, "Visit": {"VisitNumber": "1234"}, "Media": media}
    if model == "Notes":
        section: dict[str, Any] = {"Note": {"DocumentType": document_type, "Provider": provider}}
    elif model == "Results":
        section = {
            "Orders": [
                {
                    "ID": "ORD-1",
                    "Status": "Resulted",
                    "Results": [{"Code": "11502-2", "Codeset": "LOINC", "Status": "Final"}],
                }
            ]
        }
    else:
        section = {"Media": {"DocumentType": document_type, "Provider": provider}}
    return {"Patient": patient, "Visit": {"VisitNumber": "1234"}} | section
