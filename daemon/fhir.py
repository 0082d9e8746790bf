"""FHIR R4 destinations: the sidecar mapped to a ``Media`` resource, and the client.

The sidecar has the same shape as for Redox Media, so one scanner profile
serves every destination. It is first checked as a Redox Media sidecar
(types, dates, and no key that Redox's Media model does not know: a typo is
an error naming it); then the fields below are mapped, and the rest (e.g.
``Patient.Demographics``) is checked but not sent, since a FHIR ``Media``
has no place for it:

    Patient.Identifiers[0].ID       subject.identifier.value
    Patient.Identifiers[0].IDType   subject.identifier.system, when it is a URI
                                    (else [fhir].patient_identifier_system)
    Visit.VisitNumber               encounter.identifier.value (system:
                                    [fhir].visit_identifier_system, if set)
    Media.Provider.ID               operator.identifier.value
    Media.Provider.IDType           operator.identifier.system: NPI (or absent)
                                    is http://hl7.org/fhir/sid/us-npi; a URI is
                                    itself; anything else is an error
    Media.DocumentID                identifier[0].value (else the job's own ID)
    Media.DocumentType              type.text and content.title
    Media.DocumentDescription       content.title, when DocumentType is absent
    Media.FileName                  content.title, the last resort
    Media.CreationDateTime          createdDateTime and content.creation
                                    (else the file's modification time)

``content`` carries the file as ``data`` (base64) with ``contentType`` (from
the content's magic bytes), ``size`` and ``hash`` (base64 SHA-1). The POST
carries ``If-None-Exist: identifier=<system>|<value>`` so a resend after an
unknown outcome finds the first resource instead of creating a second one,
on servers that support conditional create.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redox.media.new import New as MediaNew

from daemon.config import Destination, FhirSettings
from daemon.errors import AuthError, SidecarError
from daemon.http import (
    REMOTE_ID,
    BearerClient,
    SendResult,
    check_url,
    classify,
    expiry_from_seconds,
    json_object,
    not_the_api,
    read_secret,
)
from daemon.payload import filled_field_problems, sidecar_key_path

FHIR_JSON = "application/fhir+json"
_URI = re.compile(r"^(urn:[a-z0-9][a-z0-9-]*:|https?://)\S+$", re.IGNORECASE)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"

# The Redox Media sidecar fields that hold a date or a date and time.
_DATES = {("Patient", "Demographics", "DOB"), ("Patient", "Demographics", "DeathDateTime")}
_DATETIMES = {("Media", "CreationDateTime"), ("Media", "ServiceDateTime")}


class _Sidecar(BaseModel):
    # Unknown keys were already refused by the Redox Media check; what is left
    # over here is a Redox field FHIR has no place for, checked but not sent.
    model_config = ConfigDict(extra="ignore", strict=True)


class _Identifier(_Sidecar):
    ID: str = Field(min_length=1)
    IDType: str | None = None


class _Patient(_Sidecar):
    Identifiers: list[_Identifier] = Field(min_length=1)


class _Visit(_Sidecar):
    VisitNumber: str | None = Field(None, min_length=1)


class _Provider(_Sidecar):
    ID: str = Field(min_length=1)
    IDType: str | None = None


class _MediaFields(_Sidecar):
    DocumentID: str | None = Field(None, min_length=1)
    DocumentType: str | None = None
    DocumentDescription: str | None = None
    FileName: str | None = None
    CreationDateTime: str | None = None
    Provider: _Provider | None = None


class FhirSidecar(_Sidecar):
    """What a FHIR destination takes from a (Redox Media shaped) sidecar."""

    Patient: _Patient
    Visit: _Visit = Field(default_factory=_Visit)
    Media: _MediaFields = Field(default_factory=_MediaFields)


_PLAIN = {
    "missing": "is required but missing",
    "extra_forbidden": "is not a field Redox knows (check its spelling)",
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "list_type": "must be a list [ ... ]",
    "model_type": "must be an object { ... }",
    "model_attributes_type": "must be an object { ... }",
    "dict_type": "must be an object { ... }",
}


_FHIR_PLAIN = {"extra_forbidden": "is not an element of a FHIR R4 Media"}


def _problems(err: ValidationError, plain: dict[str, str], *, skip: str = "") -> list[str]:
    lines = []
    for e in err.errors(include_input=False, include_url=False):
        if e["type"] != skip:
            path = sidecar_key_path(tuple(e["loc"]))
            lines.append(f"{path} {plain.get(e['type'], e['msg'].lower())}")
    return sorted(set(lines))


def _redox_shape_problems(data: dict[str, Any]) -> list[str]:
    """The sidecar checked as a Redox Media sidecar: unknown keys and wrong types
    are problems; fields chartdrop fills (Meta, the file) and what Redox requires
    but FHIR does not (Availability, Provider, ...) are not checked here."""
    problems = filled_field_problems("Media", data)
    try:
        MediaNew.model_validate(data, strict=True)
    except ValidationError as exc:
        problems.extend(_problems(exc, _PLAIN, skip="missing"))
    problems.extend(_date_problems(data))
    return problems


def _date_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    for path in sorted(_DATES | _DATETIMES):
        node: Any = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, str):
            continue  # absent, or a wrong type the Redox check already named
        where = ".".join(path)
        if path in _DATES:
            if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", node) or not _parses(node):
                problems.append(f'{where} must be a date written "YYYY-MM-DD"')
        elif not _DATETIME.fullmatch(node) or not _parses(node[:10]):
            problems.append(
                f'{where} must be a date and time with its zone, e.g. "2026-11-21T14:30:00Z"'
            )
    return problems


_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _parses(day: str) -> bool:
    try:
        date.fromisoformat(day)
    except ValueError:
        return False
    return True


def parse_sidecar(sidecar: dict[str, Any], settings: FhirSettings) -> FhirSidecar:
    """The sidecar's FHIR fields, or SidecarError naming every problem."""
    problems: list[str] = []
    if "EventType" in sidecar and sidecar["EventType"] != "New":
        problems.append("EventType: FHIR destinations only create (New) documents")
    data = {k: v for k, v in sidecar.items() if k != "EventType"}
    problems.extend(_redox_shape_problems(data))
    parsed: FhirSidecar | None = None
    try:
        parsed = FhirSidecar.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems(exc, _PLAIN))
    if parsed is not None:
        first = parsed.Patient.Identifiers[0]
        if not (first.IDType and _URI.match(first.IDType)) and not (
            settings.patient_identifier_system
        ):
            problems.append(
                "Patient.Identifiers[0].IDType must be the identifier system as a URI "
                "(e.g. urn:oid:...), or the admin sets [fhir].patient_identifier_system"
            )
        provider = parsed.Media.Provider
        if provider is not None and _provider_system(provider) is None:
            problems.append(
                "Media.Provider.IDType must be NPI or the identifier system as a URI "
                "for a FHIR destination"
            )
    if problems:
        raise SidecarError(list(dict.fromkeys(problems)))
    assert parsed is not None
    return parsed


def _provider_system(provider: _Provider) -> str | None:
    """The provider ID's system: NPI when the IDType says so (or says nothing:
    Redox's Provider.ID is an NPI by convention), a URI IDType as is, else None."""
    if provider.IDType is None or provider.IDType.upper() == "NPI":
        return NPI_SYSTEM
    return provider.IDType if _URI.match(provider.IDType) else None


def document_identifier(settings: FhirSettings, document_id: str) -> tuple[str, str]:
    """(system, value) of the document's identifier; a UUID under the RFC 3986
    system is written as ``urn:uuid:...`` as FHIR expects."""
    system = settings.document_identifier_system
    if system != "urn:ietf:rfc:3986" or _URI.match(document_id):
        return system, document_id
    if _UUID.match(document_id):
        return system, f"urn:uuid:{document_id.lower()}"
    raise SidecarError(
        [
            "Media.DocumentID must be a UUID or a URI for this FHIR server (or the admin "
            "sets [fhir].document_identifier_system to the system these IDs belong to)"
        ]
    )


def build_media(
    *,
    settings: FhirSettings,
    sidecar: FhirSidecar,
    document_id: str,
    file_name: str,
    mime: str,
    data_b64: str,
    size: int,
    sha1_b64: str,
    created: str,
) -> dict[str, Any]:
    """The FHIR R4 Media resource for one document."""
    patient = sidecar.Patient.Identifiers[0]
    patient_system = (
        patient.IDType
        if patient.IDType and _URI.match(patient.IDType)
        else settings.patient_identifier_system
    )
    media = sidecar.Media
    system, value = document_identifier(settings, media.DocumentID or document_id)
    creation = media.CreationDateTime or created
    resource: dict[str, Any] = {
        "resourceType": "Media",
        "identifier": [{"system": system, "value": value}],
        "status": "completed",
        "subject": {"identifier": {"system": patient_system, "value": patient.ID}},
        "createdDateTime": creation,
        "content": {
            "contentType": mime,
            "data": data_b64,
            "size": size,
            "hash": sha1_b64,
            "title": media.DocumentType or media.DocumentDescription or media.FileName or file_name,
            "creation": creation,
        },
    }
    if media.DocumentType:
        resource["type"] = {"text": media.DocumentType}
    if sidecar.Visit.VisitNumber:
        encounter = {"value": sidecar.Visit.VisitNumber}
        if settings.visit_identifier_system:
            encounter = {"system": settings.visit_identifier_system} | encounter
        resource["encounter"] = {"identifier": encounter}
    if media.Provider is not None:
        resource["operator"] = {
            "identifier": {"system": _provider_system(media.Provider), "value": media.Provider.ID}
        }
    return resource


def if_none_exist(resource: dict[str, Any]) -> str:
    ident = resource["identifier"][0]
    return "identifier=" + quote(f"{ident['system']}|{ident['value']}", safe=":/")


def validate_media(resource: dict[str, Any]) -> None:
    """Check the resource against the FHIR R4B ``Media`` model (fhir.resources)."""
    from fhir.resources.R4B.media import Media  # a large import, only when used

    try:
        Media.model_validate(resource)
    except ValidationError as exc:
        raise SidecarError(_problems(exc, _PLAIN | _FHIR_PLAIN)) from None


class FhirClient(BearerClient):
    """OAuth 2.0 client credentials (form-encoded) and ``POST {base}/Media``."""

    service = "FHIR"

    def __init__(
        self,
        settings: FhirSettings,
        http: httpx.Client,
        dest_http: dict[str, httpx.Client] | None = None,
    ) -> None:
        """``http`` serves the token URL and every destination not in ``dest_http``
        (destination name -> client, for a destination with its own ca_bundle)."""
        if settings.token_url is not None:
            check_url(settings.token_url, "fhir.token_url")
        if settings.base_url is not None:
            check_url(settings.base_url, "fhir.base_url")
        super().__init__(http)
        self.settings = settings
        self.dest_http = dest_http or {}

    def _fetch_token(self) -> tuple[str, float]:
        if self.settings.token_url is None:
            raise AuthError("no [fhir].token_url is configured")
        form = {
            "grant_type": "client_credentials",
            "client_id": self.settings.client_id,
            "client_secret": read_secret(
                self.settings.client_secret_file, "FHIR client secret (client_secret_file)"
            ),
        }
        if self.settings.scope:
            form["scope"] = self.settings.scope
        data = self._token_request("FHIR token endpoint", self.settings.token_url, data=form)
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError("FHIR token endpoint answered without an access_token", status=200)
        return token, expiry_from_seconds(data.get("expires_in"))

    def base_url(self, dest: Destination) -> str:
        base = dest.base_url or self.settings.base_url
        if base is None:
            raise AuthError(f"no FHIR base_url for destination {dest.name!r}")
        check_url(base, f"destination {dest.name!r} base_url")
        return base

    def create_media(self, dest: Destination, resource: dict[str, Any]) -> SendResult:
        headers = {
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            "If-None-Exist": if_none_exist(resource),
        }
        if self.settings.log_cdata:
            headers["log-cdata"] = self.settings.log_cdata
        if self.settings.log_cdata_format:
            headers["log-cdata-format"] = self.settings.log_cdata_format
        url = f"{self.base_url(dest)}/Media"
        response = self._post(
            "FHIR server", url, json=resource, headers=headers, client=self.dest_http.get(dest.name)
        )
        classify(response, "FHIR server")
        return SendResult(status=response.status_code, log_id=created_media_id(response))


_ERROR_SEVERITIES = frozenset({"error", "fatal"})


def created_media_id(response: httpx.Response) -> str | None:
    """The id of the Media a 2xx answer created (or found), or None when there is none.

    A 2xx is success only when the body is the resource (``resourceType`` Media),
    or the answer is a 201 whose ``Location`` names the new Media and whose body,
    if any, is no ``OperationOutcome`` with an error. Anything else (an HTML page
    from a proxy, an error outcome) raises :func:`not_the_api`'s unknown outcome.
    """
    data = json_object(response)
    kind = data.get("resourceType")
    issues = data.get("issue") if kind == "OperationOutcome" else None
    if isinstance(issues, list) and any(
        isinstance(i, dict) and i.get("severity") in _ERROR_SEVERITIES for i in issues
    ):
        raise not_the_api("FHIR server", response)
    match = re.search(r"Media/([A-Za-z0-9\-.]{1,64})", response.headers.get("Location", ""))
    resource_id = data.get("id") if kind == "Media" else None
    if isinstance(resource_id, str) and REMOTE_ID.match(resource_id):
        return resource_id
    if response.status_code == 201 and match and (kind in (None, "OperationOutcome")):
        if kind is None and response.content.strip():  # a body, but not JSON: not FHIR
            raise not_the_api("FHIR server", response)
        return match.group(1)
    if kind == "Media":  # the resource, without a usable id
        return match.group(1) if match else None
    raise not_the_api("FHIR server", response)
